package tests

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ddarray "github.com/ddraid/ddraid/raid/array"
)

// agent is a `ddraid agent` hosting one disk file on its own address,
// standing in for a data node.
type agent struct {
	disk     string
	stateDir string
	ip, port string
	prefix   []string // runs the agent under this command (ip netns exec NS)
	extra    []string
	cmd      *exec.Cmd
	done     chan error

	logMu sync.Mutex
	log   bytes.Buffer
}

// member is the agent's disk as an array member: HOST:PORT:/PATH.
func (g *agent) member() string { return net.JoinHostPort(g.ip, g.port) + ":" + g.disk }

// uri is the agent's export as an NBD URI, for nbdinfo and qemu-io.
func (g *agent) uri() string { return "nbd://" + net.JoinHostPort(g.ip, g.port) + "/" + g.disk }

// control is the agent's control socket.
func (g *agent) control() string { return filepath.Join(g.stateDir, "agent", "agent.sock") }

func (g *agent) output() string {
	g.logMu.Lock()
	defer g.logMu.Unlock()
	return g.log.String()
}

// startAgents starts n agents on 127.0.0.11, 127.0.0.12, … each hosting a
// sparse disk file of size bytes; they are killed when the test ends.
func startAgents(t *testing.T, dir string, n int, size string, extra ...string) []*agent {
	t.Helper()
	var out []*agent
	for i := range n {
		g := &agent{disk: filepath.Join(dir, fmt.Sprintf("disk%d", i)), stateDir: filepath.Join(dir, fmt.Sprintf("agent%d", i)),
			ip: fmt.Sprintf("127.0.0.%d", 11+i), extra: extra}
		run(t, "truncate", "-s", size, g.disk)
		g.port = freePortOn(t, g.ip)
		g.start(t)
		t.Cleanup(func() {
			g.kill9(t)
			if t.Failed() {
				t.Logf("agent on %s:%s:\n%s", g.ip, g.port, g.output())
			}
		})
		out = append(out, g)
	}
	return out
}

// start runs the agent and waits until it serves.
func (g *agent) start(t *testing.T) {
	t.Helper()
	args := []string{ddraidBin, "agent", "--state-dir=" + g.stateDir, "--listen-member=" + net.JoinHostPort(g.ip, g.port)}
	if g.disk != "" { // none: a writer-only cluster node
		args = append(args, "--host-disk="+g.disk)
	}
	args = append(args, g.extra...)
	args = append(append([]string(nil), g.prefix...), args...)
	g.cmd = exec.Command(args[0], args[1:]...)
	stdout, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	g.cmd.Stderr = &lockedWriter{mu: &g.logMu, w: &g.log}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.done = make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			g.logMu.Lock()
			g.log.WriteString(sc.Text() + "\n")
			g.logMu.Unlock()
			if strings.HasPrefix(sc.Text(), "agent control socket") {
				once.Do(func() { close(ready) })
			}
		}
		g.done <- g.cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-g.done:
		g.done = nil
		t.Fatalf("ddraid agent exited before it was ready: %v\n%s", err, g.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("ddraid agent not ready after 30s\n%s", g.output())
	}
}

// kill9 kills the agent with SIGKILL, as a crashed machine would vanish.
func (g *agent) kill9(t *testing.T) {
	t.Helper()
	if g.done == nil {
		return
	}
	g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.done
	g.done = nil
}

// agentArray creates a raid35 array over the agents' disks.
func agentArray(t *testing.T, dir string, agents []*agent, extra ...string) *array {
	t.Helper()
	a := &array{name: "data", dir: dir, stateDir: filepath.Join(dir, "state")}
	for _, g := range agents {
		a.members = append(a.members, g.member())
	}
	args := append([]string{"create", a.name, "--level=raid35", "--assume-clean", "--region-size=1M"}, extra...)
	out := ddraid(t, a.stateDir, append(args, a.members...)...)
	if !strings.Contains(out, fmt.Sprintf("%d members", len(agents))) {
		t.Fatalf("create: %s", out)
	}
	return a
}

// dirtyBytes asks the agent, with nbdinfo --map (a real client), how many
// bytes of its disk are marked dirty for slot 0.
func dirtyBytes(t *testing.T, g *agent) int64 {
	t.Helper()
	out := run(t, "nbdinfo", "--map=ddraid:dirty/0", g.uri())
	var total int64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var off, n, flags int64
		if _, err := fmt.Sscan(line, &off, &n, &flags); err != nil {
			t.Fatalf("nbdinfo --map line %q: %v\n%s", line, err, out)
		}
		if flags&1 != 0 {
			total += n
		}
	}
	return total
}

// waitMarksCleared polls every agent until none holds a mark (60 s at most).
func waitMarksCleared(t *testing.T, agents []*agent) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, g := range agents {
		for dirtyBytes(t, g) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("agent %s still holds marks:\n%s", g.ip, run(t, "nbdinfo", "--map=ddraid:dirty/0", g.uri()))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// TestAgentMembersKilledMidWrite: a raid35 array of five agents on five
// loopback addresses. While fio writes, the member hosts hold marks for
// the writer's slot. One agent is killed with SIGKILL mid-write; IO
// continues degraded after --member-timeout and every block verifies. The
// agent restarts, add-device re-adds its disk and rebuilds only the
// regions written meanwhile, and once the array is whole every member
// host's marks are cleared.
func TestAgentMembersKilledMidWrite(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	agents := startAgents(t, dir, 5, "64M")
	a := agentArray(t, dir, agents)
	s := a.serve(t, "--member-timeout=2s", "--clear-delay=1s")

	victim := agents[2]
	var markedWhileWriting int64
	fioMidWrite(t, s, a, func() {
		markedWhileWriting = dirtyBytes(t, agents[0])
		victim.kill9(t)
	})
	if markedWhileWriting == 0 {
		t.Fatalf("agent 0 held no marks while fio wrote")
	}
	st := waitStatus(t, s, a.stateDir, a.name, "member 2 failed", func(st ddarray.Status) bool {
		return st.Members[2].State == "failed"
	})
	if st.State != "degraded" {
		t.Fatalf("array is %s with member 2 failed", st.State)
	}
	for i, m := range st.Members {
		if i != 2 && m.State != "active" {
			t.Fatalf("member %d is %s", i, m.State)
		}
	}
	verifyAll(t, s)
	// Degraded: nothing is cleared, at the writer or the member hosts.
	if dirtyBytes(t, agents[0]) == 0 {
		t.Fatalf("agent 0 lost its marks while the array is degraded")
	}

	// The regions written while the member was away, as the writer's
	// bitmap counts them: the re-add rebuilds those and nothing else.
	status(t, &st, a.stateDir, a.name)
	dirty := int64(st.DirtyRegions) * st.RegionSize
	victim.start(t)
	out := ddraid(t, a.stateDir, "add-device", a.name, victim.member())
	if !strings.Contains(out, "re-added") {
		t.Fatalf("add-device: %s", out)
	}
	st = waitStatus(t, s, a.stateDir, a.name, "re-add", healthy)
	if st.LastJob == nil || st.LastJob.Kind != "recover" || st.LastJob.Done <= 0 || st.LastJob.Done >= st.Size || st.LastJob.Done != dirty {
		t.Fatalf("re-add job %+v on a %d-byte array; want a recovery of the %d dirty bytes only", st.LastJob, st.Size, dirty)
	}
	t.Logf("re-add rebuilt %d regions, %d of %d bytes", dirty/st.RegionSize, st.LastJob.Done, st.Size)
	verifyAll(t, s)
	checkClean(t, a)
	waitMarksCleared(t, agents)
}

// diskSums hashes every agent's disk file, as the member host sees it.
func diskSums(t *testing.T, agents []*agent) []string {
	t.Helper()
	var out []string
	for _, g := range agents {
		f, err := os.Open(g.disk)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out = append(out, fmt.Sprintf("%x", h.Sum(nil)))
	}
	return out
}

// TestAgentFence: every member host is told that slot 0 of the array needs
// epoch 1 while the writer runs with epoch 0. The writer's next write is
// refused as fenced: the front end gets EIO, status says "fenced", no
// member is failed, and nothing lands on any disk after the fence
// (invariant 4, checked at the member hosts). Restarted with --epoch=1,
// the writer works again.
func TestAgentFence(t *testing.T) {
	needTools(t, "qemu-io", "truncate")
	dir := t.TempDir()
	agents := startAgents(t, dir, 3, "32M")
	a := agentArray(t, dir, agents)
	s := a.serve(t)
	qemuIO(t, s.uri, "write -P 0x11 0 1M", "flush")

	var st ddarray.Status
	status(t, &st, a.stateDir, a.name)
	for _, g := range agents {
		out := ddraid(t, a.stateDir, "fence", "--agent="+g.control(), "--array="+st.UUID, "--slot=0", "--epoch=1")
		if !strings.Contains(out, "fenced") {
			t.Fatalf("fence: %s", out)
		}
	}
	before := diskSums(t, agents)
	out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x22 0 1M", "-c", "write -P 0x33 4M 64k", s.uri)
	if err == nil && !strings.Contains(out, "failed") {
		t.Fatalf("a fenced writer's write succeeded:\n%s", out)
	}
	if !strings.Contains(out, "Input/output error") {
		t.Fatalf("the front end should answer EIO once fenced:\n%s", out)
	}
	st = waitStatus(t, s, a.stateDir, a.name, "fenced", func(st ddarray.Status) bool { return st.State == "fenced" })
	if !st.Fenced {
		t.Fatalf("status does not say fenced: %+v", st)
	}
	for i, m := range st.Members {
		if m.State != "active" {
			t.Fatalf("member %d is %s after a fence; fenced is not a member failure", i, m.State)
		}
	}
	if !strings.Contains(s.output(), "fenced this writer") {
		t.Fatalf("server log does not report the fence:\n%s", s.output())
	}
	if after := diskSums(t, agents); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a disk changed after the fence: %v -> %v", before, after)
	}
	for _, g := range agents {
		if !strings.Contains(g.output(), "fenced writer refused") && !strings.Contains(g.output(), "slot fenced") {
			t.Fatalf("agent %s log says nothing about the fence:\n%s", g.ip, g.output())
		}
	}
	// A fenced writer cannot flush: it stops with an error that says why.
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done = nil
		if err == nil || !strings.Contains(s.output(), "fenced") {
			t.Fatalf("fenced serve stopped with %v; want an error naming the fence\n%s", err, s.output())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("fenced serve did not stop")
	}

	// A new epoch: the writer rejoins.
	s = a.serve(t, "--epoch=1")
	qemuIO(t, s.uri, "read -P 0x11 0 1M", "write -P 0x44 0 1M", "read -P 0x44 0 1M")
	status(t, &st, a.stateDir, a.name)
	if st.State != "clean" {
		t.Fatalf("array is %s after rejoining with epoch 1", st.State)
	}
}

// TestAgentRefusals: bad input around member hosts.
func TestAgentRefusals(t *testing.T) {
	needTools(t, "qemu-io", "nbdinfo", "truncate")
	dir := t.TempDir()
	agents := startAgents(t, dir, 3, "16M")

	// A member host that is unreachable at create is named.
	dead := "127.0.0.19:" + freePortOn(t, "127.0.0.19") + ":/dev/gone"
	out, err := runErr(ddraidBin, "create", "x", "--state-dir="+filepath.Join(dir, "sx"), agents[0].member(), agents[1].member(), dead)
	if err == nil || !strings.Contains(out, dead) || !strings.Contains(out, "unreachable") {
		t.Fatalf("create with an unreachable member host: %v\n%s", err, out)
	}

	// A member that answers with another array's header is refused.
	a := agentArray(t, dir, agents)
	out, err = runErr(ddraidBin, "create", "b", "--state-dir="+filepath.Join(dir, "sb"), agents[2].member(),
		filepath.Join(dir, "b1"), filepath.Join(dir, "b2"), "--size=16MiB")
	if err == nil || !strings.Contains(out, `already belongs to array "data"`) {
		t.Fatalf("create over another array's member: %v\n%s", err, out)
	}

	// A second agent on the same state directory is refused, readably.
	out, err = runErr(ddraidBin, "agent", "--state-dir="+agents[0].stateDir, "--listen-member=127.0.0.11:"+freePortOn(t, "127.0.0.11"),
		"--host-disk="+agents[0].disk)
	if err == nil || !strings.Contains(out, "is in use by another ddraid process") {
		t.Fatalf("second agent on one state dir: %v\n%s", err, out)
	}

	// Bad agent and fence arguments.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--state-dir=" + filepath.Join(dir, "sy")}, "--host-disk"},
		{[]string{"agent", "--state-dir=" + filepath.Join(dir, "sy"), "--host-disk=" + agents[0].disk, "--tls-cert=x"}, "go together"},
		{[]string{"agent", "--state-dir=" + filepath.Join(dir, "sy"), "--host-disk=" + filepath.Join(dir, "nodisk"),
			"--listen-member=127.0.0.11:" + freePortOn(t, "127.0.0.11")}, "nodisk"},
		{[]string{"fence", "--agent=" + agents[0].control(), "--array=nope", "--epoch=1"}, "UUID"},
		{[]string{"fence", "--agent=" + filepath.Join(dir, "no.sock"), "--array=aa010000-0000-0000-0000-000000000000", "--epoch=1"}, "control socket"},
		{[]string{"create", "y", "--state-dir=" + filepath.Join(dir, "sy"), "--member-tls-cert=x", agents[0].member(), agents[1].member()}, "go together"},
	} {
		out, err := runErr(ddraidBin, c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("ddraid %v: %v, want an error with %q\n%s", c.args, err, c.want, out)
		}
	}

	// A plain NBD client may read a member export but not write it: its
	// writes would bypass the marks and the fence.
	if out := run(t, "nbdinfo", "--size", agents[0].uri()); strings.TrimSpace(out) != fmt.Sprint(16<<20) {
		t.Fatalf("nbdinfo --size: %s", out)
	}
	out, err = runErr("qemu-io", "-f", "raw", "-c", "write -P 0x55 2M 4k", agents[0].uri())
	if !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("a write without writer identity was not refused with EPERM (%v):\n%s", err, out)
	}

	// The array still serves: the refusals changed nothing.
	s := a.serve(t)
	qemuIO(t, s.uri, "write -P 0x66 0 64k", "read -P 0x66 0 64k")
}

// TestAgentTLS: agents with --tls-cert/--tls-key/--tls-ca from `ddraid tls`
// refuse clients without a valid certificate (our client and nbdinfo); a
// writer with --member-tls-* creates and serves the array over TLS.
func TestAgentTLS(t *testing.T) {
	needTools(t, "nbdinfo", "qemu-io", "truncate")
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	other := filepath.Join(dir, "other")
	for _, d := range []string{pki, other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		run(t, ddraidBin, "tls", "init-ca", "--dir="+d)
		run(t, ddraidBin, "tls", "issue", "--dir="+d, "--name=writer")
	}
	if out, err := runErr(ddraidBin, "tls", "init-ca", "--dir="+pki); err == nil || !strings.Contains(out, "never overwritten") {
		t.Fatalf("a second init-ca in one directory: %v\n%s", err, out)
	}
	var agents []*agent
	for i := range 3 {
		ip := fmt.Sprintf("127.0.0.%d", 11+i)
		name := fmt.Sprintf("node%d", i)
		if i == 2 {
			name = ip // a node named by its address gets an IP SAN
			run(t, ddraidBin, "tls", "issue", "--dir="+pki, "--name="+name)
		} else {
			run(t, ddraidBin, "tls", "issue", "--dir="+pki, "--name="+name, "--ip="+ip)
		}
		ag := &agent{disk: filepath.Join(dir, fmt.Sprintf("disk%d", i)), stateDir: filepath.Join(dir, fmt.Sprintf("agent%d", i)), ip: ip,
			extra: []string{"--tls-cert=" + filepath.Join(pki, name+".crt"), "--tls-key=" + filepath.Join(pki, name+".key"),
				"--tls-ca=" + filepath.Join(pki, "ca.crt")}}
		run(t, "truncate", "-s", "16M", ag.disk)
		ag.port = freePortOn(t, ip)
		ag.start(t)
		t.Cleanup(func() {
			ag.kill9(t)
			if t.Failed() {
				t.Logf("agent on %s:\n%s", ip, ag.output())
			}
		})
		agents = append(agents, ag)
	}
	members := []string{}
	for _, g := range agents {
		members = append(members, g.member())
	}
	state := filepath.Join(dir, "state")
	tlsFlags := func(d string) []string {
		return []string{"--member-tls-cert=" + filepath.Join(d, "writer.crt"), "--member-tls-key=" + filepath.Join(d, "writer.key"),
			"--member-tls-ca=" + filepath.Join(pki, "ca.crt")}
	}

	// Our client: without TLS, and with a certificate from another CA.
	out, err := runErr(ddraidBin, append([]string{"create", "data", "--state-dir=" + state, "--assume-clean"}, members...)...)
	if err == nil || !strings.Contains(out, "TLS") {
		t.Fatalf("create without TLS against TLS agents: %v\n%s", err, out)
	}
	out, err = runErr(ddraidBin, append(append([]string{"create", "data", "--state-dir=" + state, "--assume-clean"}, tlsFlags(other)...), members...)...)
	if err == nil || !strings.Contains(out, agents[0].member()) {
		t.Fatalf("create with a certificate of another CA: %v\n%s", err, out)
	}
	// nbdinfo: plaintext, and TLS without a client certificate.
	if out, err := runErr("nbdinfo", agents[0].uri()); err == nil {
		t.Fatalf("nbdinfo without TLS was served:\n%s", out)
	} else if !strings.Contains(out, "opt_go") {
		t.Fatalf("nbdinfo without TLS should be refused at NBD_OPT_GO (TLS required):\n%s", out)
	}
	noCert := filepath.Join(dir, "nocert")
	os.MkdirAll(noCert, 0o700)
	run(t, "cp", filepath.Join(pki, "ca.crt"), filepath.Join(noCert, "ca-cert.pem"))
	tlsURI := strings.Replace(agents[0].uri(), "nbd://", "nbds://", 1)
	if out, err := runErr("nbdinfo", tlsURI+"?tls-certificates="+noCert); err == nil {
		t.Fatalf("nbdinfo over TLS without a client certificate was served:\n%s", out)
	} else if !strings.Contains(out, "TLS") {
		t.Fatalf("nbdinfo without a client certificate should fail in the TLS handshake:\n%s", out)
	}
	// nbdinfo with a valid client certificate is served.
	withCert := filepath.Join(dir, "withcert")
	os.MkdirAll(withCert, 0o700)
	run(t, "cp", filepath.Join(pki, "ca.crt"), filepath.Join(withCert, "ca-cert.pem"))
	run(t, "cp", filepath.Join(pki, "writer.crt"), filepath.Join(withCert, "client-cert.pem"))
	run(t, "cp", filepath.Join(pki, "writer.key"), filepath.Join(withCert, "client-key.pem"))
	if out := run(t, "nbdinfo", "--size", tlsURI+"?tls-certificates="+withCert); strings.TrimSpace(out) != fmt.Sprint(16<<20) {
		t.Fatalf("nbdinfo --size over TLS: %s", out)
	}

	// The writer with its certificate.
	ddraid(t, state, append(append([]string{"create", "data", "--assume-clean"}, tlsFlags(pki)...), members...)...)
	a := &array{name: "data", dir: dir, stateDir: state, members: members}
	s := a.serve(t, tlsFlags(pki)...)
	qemuIO(t, s.uri, "write -P 0x77 0 1M", "read -P 0x77 0 1M")
}

// netnsAgents starts n agents, each in its own network namespace joined
// to the root namespace by a veth pair (root side 10.231.X.4i+1/30, agent
// side .4i+2), listening on the default member port. The namespaces are
// deleted when the test ends, whatever its outcome.
func netnsAgents(t *testing.T, dir string, n int, size string) []*agent {
	t.Helper()
	pid := os.Getpid()
	x := pid % 250
	var out []*agent
	for i := range n {
		ns := fmt.Sprintf("ddr%d-%d", pid%100000, i)
		host := fmt.Sprintf("dv%d-%d", pid%100000, i)
		peer := fmt.Sprintf("dp%d-%d", pid%100000, i)
		rootIP := fmt.Sprintf("10.231.%d.%d", x, 4*i+1)
		nsIP := fmt.Sprintf("10.231.%d.%d", x, 4*i+2)
		runErr("ip", "netns", "del", ns) // a leftover of an earlier run
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := runErr("ip", "netns", "del", ns); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
		run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
		run(t, "ip", "link", "set", peer, "netns", ns)
		run(t, "ip", "addr", "add", rootIP+"/30", "dev", host)
		run(t, "ip", "link", "set", host, "up")
		run(t, "ip", "-n", ns, "addr", "add", nsIP+"/30", "dev", peer)
		run(t, "ip", "-n", ns, "link", "set", peer, "up")
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		g := &agent{disk: filepath.Join(dir, fmt.Sprintf("disk%d", i)), stateDir: filepath.Join(dir, fmt.Sprintf("agent%d", i)),
			ip: nsIP, port: "10810", prefix: []string{"ip", "netns", "exec", ns}}
		run(t, "truncate", "-s", size, g.disk)
		g.start(t)
		t.Cleanup(func() {
			g.kill9(t)
			if t.Failed() {
				t.Logf("agent in %s:\n%s", ns, g.output())
			}
		})
		out = append(out, g)
	}
	return out
}

// TestAgentNetns: five agents in five network namespaces, reached over
// veth links; a raid35 array over them takes fio with verify through the
// front end, the member hosts hold marks while it writes, and the array
// checks clean.
func TestAgentNetns(t *testing.T) {
	needTools(t, "ip", "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	agents := netnsAgents(t, dir, 5, "64M")
	a := agentArray(t, dir, agents)
	s := a.serve(t, "--clear-delay=1s")
	var marked int64
	fioMidWrite(t, s, a, func() { marked = dirtyBytes(t, agents[4]) })
	if marked == 0 {
		t.Fatalf("agent 4 held no marks while fio wrote")
	}
	verifyAll(t, s)
	checkClean(t, a)
	waitMarksCleared(t, agents)
}

// TestAgentRestartedWithinTimeout: an agent killed mid-write and started
// again a second later on the same address and state dir is reconnected
// (writer identity again, unflushed writes replayed): no member fails,
// every block verifies, and its marks survived the crash.
func TestAgentRestartedWithinTimeout(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	agents := startAgents(t, dir, 5, "64M")
	a := agentArray(t, dir, agents)
	s := a.serve(t, "--clear-delay=1h")
	victim := agents[1]
	fioMidWrite(t, s, a, func() {
		victim.kill9(t)
		time.Sleep(time.Second)
		victim.start(t)
	})
	var st ddarray.Status
	status(t, &st, a.stateDir, a.name)
	if st.State != "clean" {
		t.Fatalf("array is %s after an agent restarted within the timeout\n%s", st.State, s.output())
	}
	for i, m := range st.MemberIO {
		if m.Errors != 0 {
			t.Fatalf("member %d had IO errors: %+v", i, st.MemberIO)
		}
	}
	if !strings.Contains(s.output(), "remote: reconnected") {
		t.Fatalf("the server log shows no reconnect:\n%s", s.output())
	}
	verifyAll(t, s)
	// Nothing was cleared (--clear-delay=1h): the restarted host holds
	// marks for what it was written before and after its crash.
	if dirtyBytes(t, victim) == 0 {
		t.Fatalf("the restarted agent holds no marks")
	}
	checkClean(t, a)
}
