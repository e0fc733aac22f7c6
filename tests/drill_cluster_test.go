package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	blockmember "github.com/ddraid/ddraid/blockdev/member"
	"github.com/ddraid/ddraid/cluster/serve"
	"github.com/ddraid/ddraid/internal/ctlsock"
	"github.com/ddraid/ddraid/raid/meta"
)

// Cluster drills: several agents serve one array at once (docs/drills.md).

// drillCluster is three cluster agents n0, n1, n2 on 127.0.0.11–13: n0
// hosts two member disks and n2 one (a raid35 of three created on n0); n1
// hosts none. n0 and n1 serve the array, each on its own unix socket.
type drillCluster struct {
	nodes   []*clusterNode
	members []string // HOST:PORT:/PATH in role order
	disks   []string // the member files, in role order
	hosts   []*clusterNode
	spares  []string // HOST:PORT:/PATH of the hosted disks not in the array
	sockets []string // NBD socket of each node ("" if it does not serve)
	pki     string
	certDir string   // nbdinfo's tls-certificates directory (client n0)
	via     []string // runs a client that reaches the members (ip netns exec NS)
}

// drillNet places the drill's agents: their addresses, ports, the
// command prefix each runs under, the member disks each hosts (nil: by
// default n0 hosts two and n2 one), which serve the array (default n0 and
// n1) and extra flags for the serving agents. spares are more disks each
// agent hosts, left out of the array; initialSync creates the array
// without --assume-clean (the members held data: a full sync is due).
type drillNet struct {
	ips         []string
	ports       func(ip string) (mem, gossip, rpc string)
	prefix      func(i int) []string
	disks       [][]string
	spares      [][]string
	serving     []bool
	writerFlags []string
	initialSync bool
	// fill, if set, fills each member file before the array is created.
	fill func(t *testing.T, path string)
}

// loopbackNet is n agents on 127.0.0.11… with free ports.
func loopbackNet(t *testing.T, n int) drillNet {
	var ips []string
	for i := range n {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", 11+i))
	}
	return drillNet{ips: ips, ports: func(ip string) (string, string, string) {
		return freePortOn(t, ip), freePortOn(t, ip), freePortOn(t, ip)
	}, prefix: func(int) []string { return nil }}
}

const (
	drillDisk   = "40M"
	drillRegion = 1 << 20
)

// startDrillCluster starts the agents (n0 and n1 with --serve) and creates
// the array on n0; it returns once both writers serve it.
func startDrillCluster(t *testing.T, dir string, dn drillNet) *drillCluster {
	t.Helper()
	ips := dn.ips
	var names []string
	for i := range ips {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	pkiDir, keyFile := clusterPKI(t, dir, names, ips)
	dc := &drillCluster{pki: pkiDir, sockets: make([]string, len(ips))}
	hostDisks, serving := dn.disks, dn.serving
	if hostDisks == nil {
		hostDisks, serving = [][]string{{"d0", "d1"}, nil, {"d2"}}, []bool{true, true, false}
	}
	for i, ip := range ips {
		memPort, gossipPort, rpcPort := dn.ports(ip)
		n := &clusterNode{name: names[i], gossip: net.JoinHostPort(ip, gossipPort)}
		extra := []string{"--nodes=" + strings.Join(names, ","), "--node-name=" + n.name, "--bind=" + n.gossip,
			"--rpc=" + net.JoinHostPort(ip, rpcPort), "--encrypt-key-file=" + keyFile, "--gossip-tuning=fast-local",
			"--tls-cert=" + filepath.Join(pkiDir, n.name+".crt"), "--tls-key=" + filepath.Join(pkiDir, n.name+".key"),
			"--tls-ca=" + filepath.Join(pkiDir, "ca.crt")}
		if i > 0 {
			extra = append(extra, "--join="+dc.nodes[0].gossip)
		}
		if serving[i] {
			dc.sockets[i] = filepath.Join(dir, n.name+".nbd")
			extra = append(append(extra, "--serve=data=unix:"+dc.sockets[i]), dn.writerFlags...)
		}
		g := &agent{stateDir: filepath.Join(dir, n.name), ip: ip, port: memPort, prefix: dn.prefix(i)}
		for j, d := range hostDisks[i] {
			path := filepath.Join(dir, d)
			run(t, "truncate", "-s", drillDisk, path)
			if dn.fill != nil {
				dn.fill(t, path)
			}
			if j == 0 {
				g.disk = path
			} else {
				extra = append(extra, "--host-disk="+path)
			}
			dc.members = append(dc.members, net.JoinHostPort(ip, g.port)+":"+path)
			dc.disks = append(dc.disks, path)
			dc.hosts = append(dc.hosts, n)
		}
		if i < len(dn.spares) {
			for _, d := range dn.spares[i] {
				path := filepath.Join(dir, d)
				run(t, "truncate", "-s", drillDisk, path)
				if g.disk == "" {
					g.disk = path
				} else {
					extra = append(extra, "--host-disk="+path)
				}
				dc.spares = append(dc.spares, net.JoinHostPort(ip, g.port)+":"+path)
			}
		}
		g.extra = extra
		g.start(t)
		t.Cleanup(func() {
			g.kill9(t)
			if t.Failed() {
				t.Logf("agent %s:\n%s", n.name, g.output())
			}
		})
		n.agent = g
		dc.nodes = append(dc.nodes, n)
	}
	waitFormed(t, dc.nodes)
	n0 := dc.nodes[0]
	dc.via = dn.prefix(0)
	clean := "--assume-clean"
	if dn.initialSync {
		clean = "--nodes=4" // the default, and no --assume-clean
	}
	args := append(append(append([]string(nil), dc.via...), ddraidBin, "create", "data", "--state-dir="+n0.stateDir, "--level=raid35",
		clean, "--region-size=1M", "--member-tls-cert="+filepath.Join(pkiDir, "n0.crt"),
		"--member-tls-key="+filepath.Join(pkiDir, "n0.key"), "--member-tls-ca="+filepath.Join(pkiDir, "ca.crt")), dc.members...)
	out := run(t, args[0], args[1:]...)
	if !strings.Contains(out, "3 members") {
		t.Fatalf("create: %s", out)
	}
	dc.certDir = filepath.Join(dir, "nbdinfo-certs")
	if err := os.MkdirAll(dc.certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", filepath.Join(pkiDir, "ca.crt"), filepath.Join(dc.certDir, "ca-cert.pem"))
	run(t, "cp", filepath.Join(pkiDir, "n0.crt"), filepath.Join(dc.certDir, "client-cert.pem"))
	run(t, "cp", filepath.Join(pkiDir, "n0.key"), filepath.Join(dc.certDir, "client-key.pem"))
	for i, n := range dc.nodes {
		if !serving[i] {
			continue
		}
		waitFor(t, n.name+" serves the array", func() bool {
			st, ok := served(t, n)
			return ok && st.State == serve.StateServing
		})
	}
	return dc
}

// served returns the node's status of the array "data".
func served(t *testing.T, n *clusterNode) (serve.ArrayStatus, bool) {
	t.Helper()
	out := run(t, ddraidBin, "cluster", "arrays", "--json", "--control="+n.control())
	var arrays []serve.ArrayStatus
	if err := json.Unmarshal([]byte(out), &arrays); err != nil {
		t.Fatalf("cluster arrays of %s: %v\n%s", n.name, err, out)
	}
	for _, a := range arrays {
		if a.Name == "data" {
			return a, true
		}
	}
	return serve.ArrayStatus{}, false
}

// uri is the NBD URI of node i's front end.
func (dc *drillCluster) uri(i int) string {
	return fmt.Sprintf("nbd+unix:///data?socket=%s", dc.sockets[i])
}

// dirtyRegions returns the array regions marked for slot at every member
// host (the union), read with nbdinfo --map over TLS.
func (dc *drillCluster) dirtyRegions(t *testing.T, slot int) map[int64]bool {
	t.Helper()
	// raid35 of 3 members: each member holds half of every array region.
	memberRegion := int64(drillRegion / 2)
	regions := map[int64]bool{}
	for _, m := range dc.members {
		hostPort, path, _ := strings.Cut(m, ":/") // the export is named by the absolute path
		uri := fmt.Sprintf("nbds://%s//%s?tls-certificates=%s", hostPort, path, dc.certDir)
		args := append(append([]string(nil), dc.via...), "nbdinfo", fmt.Sprintf("--map=ddraid:dirty/%d", slot), uri)
		out := run(t, args[0], args[1:]...)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var off, n, flags int64
			if _, err := fmt.Sscan(line, &off, &n, &flags); err != nil {
				t.Fatalf("nbdinfo --map line %q: %v\n%s", line, err, out)
			}
			if flags&1 == 0 {
				continue
			}
			for o := max(off, meta.DataOffset); o < off+n; o += memberRegion {
				regions[(o-meta.DataOffset)/memberRegion] = true
			}
		}
	}
	return regions
}

// halfArgs are fio's arguments for a random write with a verify pattern
// over [off, off+size) of the array at uri, saving its verify state in dir.
func halfArgs(uri, dir string, seed int, off, size string, extra ...string) []string {
	return append([]string{"--name=drill", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
		"--offset=" + off, "--size=" + size, "--iodepth=" + fmt.Sprint(fioDepth), "--verify=crc32c",
		"--randseed=" + fmt.Sprint(seed), "--directory=" + dir, "--verify_state_save=1", "--fsync=16"}, extra...)
}

// TestDrillClusterKillWriter: two writers (n0, n1) serve one raid35 array
// through their own NBD front ends, each holding its own writer slot; fio
// writes and verifies disjoint halves through both at once. Then n1's
// agent is killed with SIGKILL during writes on both: n0's writes go on
// and verify; n0 takes n1's slot over (its epoch fenced at the member
// hosts, its marks cleared, only regions of n1's half resynced); the
// array checks clean; every write n1 acknowledged verifies through n0.
// Last, SIGTERM: n0 stops serving and releases its slot.
func TestDrillClusterKillWriter(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	dc := startDrillCluster(t, dir, loopbackNet(t, 3))
	n0, n1 := dc.nodes[0], dc.nodes[1]
	s0, _ := served(t, n0)
	s1, _ := served(t, n1)
	if s0.Coord == nil || s1.Coord == nil || s0.Coord.Slot < 0 || s1.Coord.Slot < 0 || s0.Coord.Slot == s1.Coord.Slot {
		t.Fatalf("writers need distinct slots: n0 %+v, n1 %+v", s0.Coord, s1.Coord)
	}
	if s0.UUID != s1.UUID {
		t.Fatalf("n1 fetched another array: %s vs %s", s1.UUID, s0.UUID)
	}
	const half = int64(32 << 20) // n0 writes [0, 32M), n1 [32M, 64M) of the 79M array
	txt := run(t, ddraidBin, "cluster", "status", "--control="+n1.control())
	if want := fmt.Sprintf("writer slot %d of 4, epoch %d, quorum", s1.Coord.Slot, s1.Coord.Epoch); !strings.Contains(txt, "array data: serving at "+dc.uri(1)) || !strings.Contains(txt, want) {
		t.Errorf("cluster status on n1 does not show the array it serves (want %q):\n%s", want, txt)
	}
	// ddraid status shows the array with its cluster part (slot, epoch, quorum).
	txt = run(t, ddraidBin, "status", "data", "--state-dir="+n1.stateDir)
	if want := fmt.Sprintf("writer slot %d of 4, epoch %d, quorum", s1.Coord.Slot, s1.Coord.Epoch); !strings.Contains(txt, "  cluster:\n") || !strings.Contains(txt, want) {
		t.Errorf("ddraid status on n1 lacks the cluster part (want %q):\n%s", want, txt)
	}
	// and the cluster's nodes, from n1's agent.
	for _, n := range dc.nodes {
		if !regexp.MustCompile(`(?m)^` + n.name + `\s+alive\s+yes`).MatchString(txt) {
			t.Errorf("ddraid status on n1 lacks node %s alive in its node table:\n%s", n.name, txt)
		}
	}

	// Both front ends at once, disjoint halves, verified inline.
	errs := make(chan string, 2)
	for i := range 2 {
		d := filepath.Join(dir, fmt.Sprintf("fio%d-a", i))
		os.MkdirAll(d, 0o700)
		args := halfArgs(dc.uri(i), d, 10+i, fmt.Sprint(int64(i)*half), "16M", "--do_verify=1")
		go func() {
			cmd := exec.Command("fio", args...)
			cmd.Dir = d
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "err= 0") {
				errs <- fmt.Sprintf("fio through n%d: %v\n%s", i, err, out)
				return
			}
			errs <- ""
		}()
	}
	for range 2 {
		if e := <-errs; e != "" {
			t.Fatal(e)
		}
	}

	// Writes on both; n1 is killed under them.
	d0, d1 := filepath.Join(dir, "fio0-b"), filepath.Join(dir, "fio1-b")
	os.MkdirAll(d0, 0o700)
	os.MkdirAll(d1, 0o700)
	w0 := exec.Command("fio", halfArgs(dc.uri(0), d0, 20, "0", "24M", "--do_verify=1", "--rate=4m")...)
	w0.Dir = d0
	var w0mu sync.Mutex
	var w0buf bytes.Buffer
	w0out := &lockedWriter{mu: &w0mu, w: &w0buf}
	w0.Stdout, w0.Stderr = w0out, w0out
	if err := w0.Start(); err != nil {
		t.Fatal(err)
	}
	w0done := make(chan error, 1)
	go func() { w0done <- w0.Wait() }()
	w1 := exec.Command("fio", halfArgs(dc.uri(1), d1, 21, fmt.Sprint(half), "24M", "--do_verify=0", "--rate=8m")...)
	w1.Dir = d1
	pr, pw := io.Pipe()
	w1.Stdout, w1.Stderr = pw, pw
	if err := w1.Start(); err != nil {
		t.Fatal(err)
	}
	var w1out strings.Builder
	connected, copied := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			w1out.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "connected to NBD server") {
				once = true
				close(connected)
			}
		}
	}()
	select {
	case <-connected:
	case <-time.After(30 * time.Second):
		t.Fatal("fio through n1 did not connect")
	}
	time.Sleep(1500 * time.Millisecond) // the kill lands in the middle of n1's writes
	before := dc.dirtyRegions(t, s1.Coord.Slot)
	if len(before) == 0 {
		t.Fatal("n1 writes but the member hosts hold no marks for its slot")
	}
	killed := time.Now()
	n1.kill9(t)
	w1.Wait() // fio fails with its server; the saved state is what counts
	pw.Close()
	<-copied
	failed := map[string]bool{}
	for _, m := range failedWriteRE.FindAllStringSubmatch(w1out.String(), -1) {
		failed[m[1]] = true
	}

	// n0 takes n1's slot over: its marks are resynced and cleared, its
	// epoch fenced at every member host.
	var took serve.ArrayStatus
	waitFor(t, "n0 to take n1's slot over", func() bool {
		st, _ := served(t, n0)
		took = st
		return st.ResyncedRegions > 0 && st.Coord != nil && len(st.Coord.Takeovers) == 0 && len(dc.dirtyRegions(t, s1.Coord.Slot)) == 0
	})
	took0 := time.Since(killed)
	for _, h := range dc.hosts {
		fences := agentFences(t, h)
		if e := fences[strings.ReplaceAll(s1.UUID, "-", "")+"/"+fmt.Sprint(s1.Coord.Slot)]; e <= s1.Coord.Epoch {
			t.Errorf("member host %s: slot %d fenced at epoch %d, want above n1's %d (fences %v)", h.name, s1.Coord.Slot, e, s1.Coord.Epoch, fences)
		}
	}
	for _, r := range took.Resynced {
		if r.Off < half || r.Off+r.Length > half+24<<20 {
			t.Errorf("takeover resynced [%d, +%d), outside n1's half [%d, %d)", r.Off, r.Length, half, half+24<<20)
		}
	}
	resynced := map[int64]bool{}
	for _, r := range took.Resynced {
		resynced[r.Off/drillRegion] = true
	}
	for r := range before {
		if !resynced[r] {
			t.Errorf("region %d was marked for n1's slot before the kill but not resynced (resynced %v)", r, took.Resynced)
		}
	}
	if took.ResyncedRegions != int64(len(took.Resynced)) {
		t.Errorf("status counts %d resynced regions but lists %d", took.ResyncedRegions, len(took.Resynced))
	}

	// n0's writes went on through the kill and verify.
	select {
	case err := <-w0done:
		if err != nil || !strings.Contains(w0buf.String(), "err= 0") {
			t.Fatalf("fio through n0 across n1's death: %v\n%s", err, w0buf.String())
		}
	case <-time.After(clusterWait):
		t.Fatalf("fio through n0 did not finish within %v", clusterWait)
	}

	// Parity is consistent and every write n1 acknowledged is there.
	out, err := runErr(ddraidBin, "check", "data", "--state-dir="+n0.stateDir)
	if err != nil || !strings.Contains(out, " 0 mismatched") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	vargs := halfArgs(dc.uri(0), d1, 21, fmt.Sprint(half), "24M", "--do_verify=1", "--verify_only", "--verify_state_load=1")
	cmd := exec.Command("fio", vargs...)
	cmd.Dir = d1
	vout, err := cmd.CombinedOutput()
	bad := badBlockRE.FindAllStringSubmatch(string(vout), -1)
	for _, m := range bad {
		failed[m[1]] = true
	}
	if len(failed) > fioDepth {
		t.Fatalf("%d of n1's blocks fail verification or failed to write, more than the %d writes in flight at the kill:\n%s", len(failed), fioDepth, vout)
	}
	if len(bad) == 0 && (err != nil || !strings.Contains(string(vout), "err= 0")) {
		t.Fatalf("fio verify of n1's half through n0: %v\n%s", err, vout)
	}

	// SIGTERM: n0 stops serving, closes the array and releases its slot,
	// then exits 0.
	n0.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n0.done:
		n0.done = nil
		if err != nil {
			t.Fatalf("agent n0 after SIGTERM: %v\n%s", err, n0.output())
		}
	case <-time.After(clusterWait):
		t.Fatalf("agent n0 still running %v after SIGTERM", clusterWait)
	}
	if !strings.Contains(n0.output(), `msg="stopped serving array; writer slot released" array=data`) {
		t.Fatalf("n0 did not stop serving and release its slot:\n%s", n0.output())
	}
	fmt.Printf("drill kill-writer: ok, takeover resynced %d regions in %v\n", took.ResyncedRegions, took0.Round(10*time.Millisecond))
}

// agentFences returns the member host's fences ("ARRAYHEX/SLOT" → minimum
// epoch) from its control API.
func agentFences(t *testing.T, n *clusterNode) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st blockmember.Status
	if err := ctlsock.Dial(n.control()).Do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		t.Fatalf("agent status of %s: %v", n.name, err)
	}
	return st.Fences
}

// startWrites starts fio writes (no verify) over [off, off+24M) of the
// front end at uri, rate-limited, saving the verify state in dir; it
// returns once fio is connected. wait ends fio's run and returns the
// offsets of the writes fio saw fail.
func startWrites(t *testing.T, uri, dir string, seed int, off int64) (wait func() map[string]bool) {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	cmd := exec.Command("fio", halfArgs(uri, dir, seed, fmt.Sprint(off), "24M", "--do_verify=0", "--rate=8m")...)
	cmd.Dir = dir
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	connected, copied := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "connected to NBD server") {
				once = true
				close(connected)
			}
		}
	}()
	select {
	case <-connected:
	case <-time.After(30 * time.Second):
		t.Fatalf("fio through %s did not connect", uri)
	}
	return func() map[string]bool {
		done := make(chan struct{})
		go func() { cmd.Wait(); pw.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(clusterWait):
			cmd.Process.Kill()
			t.Fatalf("fio through %s still running after %v", uri, clusterWait)
		}
		<-copied
		if _, err := os.Stat(filepath.Join(dir, "local-drill-0-verify.state")); err != nil {
			t.Fatalf("fio saved no verify state: %v\n%s", err, out.String())
		}
		failed := map[string]bool{}
		for _, m := range failedWriteRE.FindAllStringSubmatch(out.String(), -1) {
			failed[m[1]] = true
		}
		return failed
	}
}

// verifyHalf checks, through the front end at uri, every write of the fio
// run saved in dir: only the writes in flight when its writer was cut off
// (suspects, at most the queue depth) may fail.
func verifyHalf(t *testing.T, uri, dir string, seed int, off int64, suspects map[string]bool) {
	t.Helper()
	cmd := exec.Command("fio", halfArgs(uri, dir, seed, fmt.Sprint(off), "24M", "--do_verify=1", "--verify_only", "--verify_state_load=1", "--verify_state_save=0")...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	bad := badBlockRE.FindAllStringSubmatch(string(out), -1)
	for _, m := range bad {
		suspects[m[1]] = true
	}
	if len(suspects) > fioDepth {
		t.Fatalf("%d blocks fail verification or failed to write, more than the %d writes in flight at the cut:\n%s", len(suspects), fioDepth, out)
	}
	if len(bad) == 0 && (err != nil || !strings.Contains(string(out), "err= 0")) {
		t.Fatalf("fio verify through %s: %v\n%s", uri, err, out)
	}
}

// TestDrillClusterPartition: the three agents in network namespaces on
// one bridge; n0 and n1 write their halves; n1's link goes down. n1 loses
// quorum (its writes halt); the majority (n0, n2) takes n1's slot over and
// fences it at the member hosts while n0's writes go on. After the link
// comes back n1 finds its slot gone: the writes it had in flight fail, and
// it assembles the array again with a new slot and epoch (the old one stays
// refused at the hosts) and writes again. No divergence: the array checks
// clean through n0 and every write either writer acknowledged verifies
// through n0.
func TestDrillClusterPartition(t *testing.T) {
	needTools(t, "ip", "fio", "nbdinfo", "qemu-io", "truncate")
	dir := t.TempDir()
	h := newHubNet(t, 3)
	dc := startDrillCluster(t, dir, drillNet{ips: h.ips,
		ports:  func(string) (string, string, string) { return "10810", "7946", "7947" },
		prefix: func(i int) []string { return []string{"ip", "netns", "exec", h.nodes[i]} }})
	n0, n1 := dc.nodes[0], dc.nodes[1]
	s1, _ := served(t, n1)
	const half = int64(32 << 20)
	d0, d1 := filepath.Join(dir, "fio0"), filepath.Join(dir, "fio1")
	wait0 := startWrites(t, dc.uri(0), d0, 30, 0)
	wait1 := startWrites(t, dc.uri(1), d1, 31, half)
	time.Sleep(1500 * time.Millisecond) // the cut lands in the middle of both writers' runs
	cut := time.Now()
	h.setLink(t, 1, "down")

	var took serve.ArrayStatus
	waitFor(t, "n0 to take the cut-off n1's slot over", func() bool {
		st, _ := served(t, n0)
		took = st
		return st.ResyncedRegions > 0 && st.Coord != nil && len(st.Coord.Takeovers) == 0 && len(dc.dirtyRegions(t, s1.Coord.Slot)) == 0
	})
	tookAfter := time.Since(cut)
	if st := n1.status(t); st.Quorum {
		t.Fatalf("n0 took n1's slot over while the cut-off n1 claims quorum: %+v", st)
	}
	for _, hn := range dc.hosts {
		if e := agentFences(t, hn)[strings.ReplaceAll(s1.UUID, "-", "")+"/"+fmt.Sprint(s1.Coord.Slot)]; e <= s1.Coord.Epoch {
			t.Errorf("member host %s: n1's slot %d fenced at epoch %d, want above %d", hn.name, s1.Coord.Slot, e, s1.Coord.Epoch)
		}
	}
	for _, r := range took.Resynced {
		if r.Off < half || r.Off+r.Length > half+24<<20 {
			t.Errorf("takeover resynced [%d, +%d), outside n1's half", r.Off, r.Length)
		}
	}
	failed0 := wait0()
	if len(failed0) != 0 {
		t.Fatalf("writes through n0 failed while n1 was cut off: %v", failed0)
	}

	h.setLink(t, 1, "up")
	waitFormed(t, dc.nodes)
	var back serve.ArrayStatus
	waitFor(t, "n1 to find its slot lost and assemble the array again with a new epoch", func() bool {
		back, _ = served(t, n1)
		return back.State == serve.StateServing && back.Rejoins > 0 && back.Coord != nil && back.Coord.Epoch > s1.Coord.Epoch
	})
	failed1 := wait1()
	if len(failed1) == 0 {
		t.Fatal("no write through n1 failed, though it lost its slot in the middle of fio's run")
	}
	for _, hn := range dc.hosts {
		if e := agentFences(t, hn)[strings.ReplaceAll(s1.UUID, "-", "")+"/"+fmt.Sprint(s1.Coord.Slot)]; e <= s1.Coord.Epoch {
			t.Errorf("member host %s: n1's old epoch %d is no longer fenced (minimum %d)", hn.name, s1.Coord.Epoch, e)
		}
	}
	// Rejoined, n1 writes again (past both halves), and n0 reads it.
	qemuIO(t, dc.uri(1), "write -P 0x5a 70M 64k")
	qemuIO(t, dc.uri(0), "read -P 0x5a 70M 64k")

	out, err := runErr(ddraidBin, "check", "data", "--state-dir="+n0.stateDir)
	if err != nil || !strings.Contains(out, " 0 mismatched") {
		t.Fatalf("check after heal: %v\n%s", err, out)
	}
	verifyHalf(t, dc.uri(0), d0, 30, 0, map[string]bool{})
	verifyHalf(t, dc.uri(0), d1, 31, half, failed1)
	fmt.Printf("drill partition: ok, majority took the cut-off writer's slot over (%d regions resynced) in %v; after heal it rejoined at epoch %d (was %d)\n",
		took.ResyncedRegions, tookAfter.Round(10*time.Millisecond), back.Coord.Epoch, s1.Coord.Epoch)
}

// TestClusterServeRefusals: --serve needs cluster mode and a valid spec;
// only a cluster-mode agent may host no disk; `ddraid cluster arrays`
// says when the agent is not in cluster mode.
func TestClusterServeRefusals(t *testing.T) {
	needTools(t, "truncate")
	dir := t.TempDir()
	pkiDir, keyFile := clusterPKI(t, dir, []string{"a"}, []string{"127.0.0.11"})
	disk := filepath.Join(dir, "disk")
	run(t, "truncate", "-s", "16M", disk)
	base := []string{"agent", "--state-dir=" + filepath.Join(dir, "s"),
		"--listen-member=127.0.0.11:" + freePortOn(t, "127.0.0.11"), "--bind=127.0.0.11:" + freePortOn(t, "127.0.0.11"),
		"--rpc=127.0.0.11:" + freePortOn(t, "127.0.0.11")}
	clusterFlags := []string{"--nodes=a", "--node-name=a", "--encrypt-key-file=" + keyFile, "--gossip-tuning=fast-local",
		"--tls-cert=" + filepath.Join(pkiDir, "a.crt"), "--tls-key=" + filepath.Join(pkiDir, "a.key"), "--tls-ca=" + filepath.Join(pkiDir, "ca.crt")}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--host-disk=" + disk, "--serve=data=unix:" + filepath.Join(dir, "d.nbd")}, "need --nodes"},
		{nil, "--host-disk is required"},
		{append([]string{"--serve=data="}, clusterFlags...), "empty listen address"},
		{append([]string{"--serve=a/b=unix:/x"}, clusterFlags...), "--serve \"a/b=unix:/x\""},
		{append([]string{"--serve=data=unix:/x", "--serve=data=unix:/y"}, clusterFlags...), "named twice"},
	} {
		out, err := runErr(ddraidBin, append(base, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("ddraid agent %v: %v, want an error with %q\n%s", c.args, err, c.want, out)
		}
	}
	plain := startAgents(t, dir, 1, "16M")[0]
	if out, err := runErr(ddraidBin, "cluster", "arrays", "--control="+plain.control()); err == nil || !strings.Contains(out, "does not run in cluster mode") {
		t.Errorf("cluster arrays against an agent not in cluster mode: %v\n%s", err, out)
	}
}

// TestDrillClusterSwitchResync: five agents; n3 and n4 host the members,
// n0, n1 and n2 serve the array (their member IO slowed by 50 ms, so a
// takeover resync lasts seconds). n1 is killed under fio writes; the
// survivor that starts taking its slot over is killed in the middle of the
// resync (marks of n1's slot still held). The last writer finishes it: it
// takes over both dead slots, every mark is cleared, the array checks
// clean and every write n1 acknowledged verifies through it.
func TestDrillClusterSwitchResync(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	dn := loopbackNet(t, 5)
	dn.disks = [][]string{nil, nil, nil, {"d0", "d1"}, {"d2"}}
	dn.serving = []bool{true, true, true, false, false}
	dn.writerFlags = []string{"--serve-member-delay=50ms"}
	dc := startDrillCluster(t, dir, dn)
	n1 := dc.nodes[1]
	s1, _ := served(t, n1)
	slot1 := s1.Coord.Slot
	const half = int64(32 << 20)
	d1 := filepath.Join(dir, "fio1")
	wait1 := startWrites(t, dc.uri(1), d1, 41, half)
	time.Sleep(1500 * time.Millisecond) // the kill lands in the middle of n1's writes
	if len(dc.dirtyRegions(t, slot1)) == 0 {
		t.Fatal("n1 writes but the member hosts hold no marks for its slot")
	}
	n1.kill9(t)
	failed := wait1()

	// Catch the survivor that takes n1's slot over, and kill it mid-resync.
	var taker, last *clusterNode
	var takerSlot int
	waitFor(t, "a survivor to start taking n1's slot over", func() bool {
		for _, i := range []int{0, 2} {
			st, _ := served(t, dc.nodes[i])
			if st.Coord != nil && slices.Contains(st.Coord.Takeovers, uint32(slot1)) {
				taker, last, takerSlot = dc.nodes[i], dc.nodes[2-i], st.Coord.Slot
				return true
			}
		}
		return false
	})
	taker.kill9(t)
	killed := time.Now()
	left := len(dc.dirtyRegions(t, slot1))
	if left == 0 {
		t.Fatalf("%s finished the takeover before it was killed: the drill needs a slower resync", taker.name)
	}

	var st serve.ArrayStatus
	waitFor(t, last.name+" to finish the takeover of "+n1.name+"'s and "+taker.name+"'s slots", func() bool {
		st, _ = served(t, last)
		return st.Coord != nil && len(st.Coord.Takeovers) == 0 && st.ResyncedRegions > 0 &&
			len(dc.dirtyRegions(t, slot1)) == 0 && len(dc.dirtyRegions(t, takerSlot)) == 0
	})
	finished := time.Since(killed)
	for _, h := range dc.hosts {
		fences := agentFences(t, h)
		if e := fences[strings.ReplaceAll(s1.UUID, "-", "")+"/"+fmt.Sprint(slot1)]; e <= s1.Coord.Epoch {
			t.Errorf("member host %s: n1's slot %d fenced at epoch %d, want above %d", h.name, slot1, e, s1.Coord.Epoch)
		}
	}
	out, err := runErr(ddraidBin, "check", "data", "--state-dir="+last.stateDir)
	if err != nil || !strings.Contains(out, " 0 mismatched") {
		t.Fatalf("check after the switched resync: %v\n%s", err, out)
	}
	li := slices.Index(dc.nodes, last)
	verifyHalf(t, dc.uri(li), d1, 41, half, failed)
	fmt.Printf("drill switch-resync: ok, %s died resyncing %s's slot (%d dirty regions left); %s finished (%d regions resynced) in %v\n",
		taker.name, n1.name, left, last.name, st.ResyncedRegions, finished.Round(10*time.Millisecond))
}
