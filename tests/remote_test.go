package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ddarray "github.com/ddraid/ddraid/raid/array"
)

// kit is an nbdkit serving one member file on its own loopback address,
// standing in for a disk on another machine.
type kit struct {
	file string
	ip   string
	port string
	uri  string
	args []string // nbdkit arguments after the file name: filter parameters
	cmd  *exec.Cmd
	done chan error

	logMu sync.Mutex
	log   bytes.Buffer
}

// freePortOn returns a TCP port that is free on ip right now.
func freePortOn(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// startKits starts n nbdkit file servers on 127.0.0.2, 127.0.0.3, … over
// sparse files of size bytes; they are killed when the test ends. args, if
// any, are given to each nbdkit (filters with their parameters).
func startKits(t *testing.T, dir string, n int, size string, args ...string) []*kit {
	t.Helper()
	var kits []*kit
	for i := range n {
		k := &kit{file: filepath.Join(dir, fmt.Sprintf("disk%d", i)), ip: fmt.Sprintf("127.0.0.%d", i+2), args: args}
		run(t, "truncate", "-s", size, k.file)
		k.port = freePortOn(t, k.ip)
		k.uri = fmt.Sprintf("nbd://%s:%s/d%d", k.ip, k.port, i)
		k.start(t)
		t.Cleanup(func() {
			k.kill9(t)
			if t.Failed() {
				t.Logf("nbdkit on %s:%s:\n%s", k.ip, k.port, k.log.String())
			}
		})
		kits = append(kits, k)
	}
	return kits
}

// start runs nbdkit and waits until it accepts connections.
func (k *kit) start(t *testing.T) {
	t.Helper()
	var filters, params []string
	for _, a := range k.args {
		if strings.HasPrefix(a, "--filter=") {
			filters = append(filters, a)
		} else {
			params = append(params, a)
		}
	}
	args := append(append([]string{"-f", "-i", k.ip, "-p", k.port}, filters...), "file", k.file)
	k.cmd = exec.Command("nbdkit", append(args, params...)...)
	// The readiness probe below makes nbdkit log a reset connection; its
	// log is shown only when the test fails.
	k.cmd.Stderr = &lockedWriter{mu: &k.logMu, w: &k.log}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k.done = make(chan error, 1)
	go func() { k.done <- k.cmd.Wait() }()
	addr := net.JoinHostPort(k.ip, k.port)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-k.done:
			t.Fatalf("nbdkit on %s exited: %v", addr, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdkit on %s does not accept connections", addr)
		}
	}
}

// kill9 kills nbdkit with SIGKILL, as a crashed machine would vanish.
// Killing a dead kit does nothing.
func (k *kit) kill9(t *testing.T) {
	t.Helper()
	if k.done == nil {
		return
	}
	k.cmd.Process.Signal(syscall.SIGKILL)
	<-k.done
	k.done = nil
}

// remoteFio runs fio through the front end with a crc32c verify pattern.
func remoteFio(uri string, extra ...string) *exec.Cmd {
	args := append([]string{"--name=remote", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=64k",
		"--size=40M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
		"--randseed=11"}, extra...)
	return exec.Command("fio", args...)
}

// fioMidWrite starts a rate-limited fio write-then-verify job, calls
// during once fio has written a few MiB through the array, and returns
// fio's output after it finished. It fails the test if fio reports an
// error.
func fioMidWrite(t *testing.T, s *server, a *array, during func()) string {
	t.Helper()
	cmd := remoteFio(s.uri, "--rate=16m", "--do_verify=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			text.WriteString(sc.Text() + "\n")
		}
	}()
	waitStatus(t, s, a.stateDir, a.name, "fio writing", func(st ddarray.Status) bool {
		var written int64
		for _, m := range st.MemberIO {
			written += m.WriteBytes
		}
		return written > 6<<20
	})
	during()
	<-read
	if err := cmd.Wait(); err != nil || !strings.Contains(text.String(), "err= 0") {
		t.Fatalf("fio through the array failed: %v\n%s\nserver log:\n%s", err, text.String(), s.output())
	}
	return text.String()
}

// verifyAll reads the whole fio data set back and checks it.
func verifyAll(t *testing.T, s *server) {
	t.Helper()
	out, err := remoteFio(s.uri, "--do_verify=1", "--verify_only").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "err= 0") {
		t.Fatalf("fio verify: %v\n%s\nserver log:\n%s", err, out, s.output())
	}
}

// TestRemoteMemberKilledMidWrite: a raid35 array of five nbdkit servers on
// five loopback addresses. One is killed with SIGKILL while fio writes; IO
// stalls for --member-timeout, then the member is failed and IO continues
// degraded, and every block verifies. The member's server comes back and
// add-device re-adds it, rebuilding only the regions written meanwhile.
func TestRemoteMemberKilledMidWrite(t *testing.T) {
	needTools(t, "nbdkit", "fio", "truncate")
	dir := t.TempDir()
	kits := startKits(t, dir, 5, "64M")
	a := &array{name: "data", dir: dir, stateDir: filepath.Join(dir, "state")}
	for _, k := range kits {
		a.members = append(a.members, k.uri)
	}
	out := ddraid(t, a.stateDir, append([]string{"create", a.name, "--level=raid35", "--assume-clean", "--region-size=1M"}, a.members...)...)
	if !strings.Contains(out, "5 members") {
		t.Fatalf("create: %s", out)
	}
	s := a.serve(t, "--member-timeout=2s", "--clear-delay=1s")

	victim := kits[2]
	var killed time.Time
	fioMidWrite(t, s, a, func() {
		victim.kill9(t)
		killed = time.Now()
	})
	st := waitStatus(t, s, a.stateDir, a.name, "member 2 failed", func(st ddarray.Status) bool {
		return st.Members[2].State == "failed"
	})
	if st.State != "degraded" {
		t.Fatalf("array is %s with member 2 failed", st.State)
	}
	if d := time.Since(killed); d < 2*time.Second {
		t.Fatalf("member failed %v after the kill, before --member-timeout=2s", d)
	}
	if !strings.Contains(s.output(), "export unreachable") {
		t.Fatalf("the server log does not say why member 2 failed:\n%s", s.output())
	}
	for i, m := range st.Members {
		if i != 2 && m.State != "active" {
			t.Fatalf("member %d is %s", i, m.State)
		}
	}
	verifyAll(t, s)

	// The machine is back: re-add the member; only dirty regions rebuild.
	victim.start(t)
	out = ddraid(t, a.stateDir, "add-device", a.name, victim.uri)
	if !strings.Contains(out, "re-added") {
		t.Fatalf("add-device: %s", out)
	}
	st = waitStatus(t, s, a.stateDir, a.name, "re-add", healthy)
	if st.LastJob == nil || st.LastJob.Kind != "recover" || st.LastJob.Done <= 0 || st.LastJob.Done >= st.Size {
		t.Fatalf("re-add job %+v on a %d-byte array; want a partial recovery", st.LastJob, st.Size)
	}
	verifyAll(t, s)
	checkClean(t, a)
}

// TestRemoteMemberRestartedWithinTimeout: four nbdkit members and one
// local file. One nbdkit is killed mid-write and restarted on the same
// address a second later; the member reconnects, no member fails, and
// every block verifies.
func TestRemoteMemberRestartedWithinTimeout(t *testing.T) {
	needTools(t, "nbdkit", "fio", "truncate")
	dir := t.TempDir()
	kits := startKits(t, dir, 4, "64M")
	a := &array{name: "data", dir: dir, stateDir: filepath.Join(dir, "state")}
	for _, k := range kits {
		a.members = append(a.members, k.uri)
	}
	a.members = append(a.members, filepath.Join(dir, "local-m4"))
	ddraid(t, a.stateDir, append([]string{"create", a.name, "--level=raid35", "--assume-clean", "--size=64MiB"}, a.members...)...)
	s := a.serve(t)

	victim := kits[1]
	fioMidWrite(t, s, a, func() {
		victim.kill9(t)
		time.Sleep(time.Second)
		victim.start(t)
	})
	var st ddarray.Status
	status(t, &st, a.stateDir, a.name)
	if st.State != "clean" {
		t.Fatalf("array is %s after a member restarted within the timeout\n%s", st.State, s.output())
	}
	for _, m := range st.MemberIO {
		if m.Errors != 0 {
			t.Fatalf("member IO errors %+v", st.MemberIO)
		}
	}
	if !strings.Contains(s.output(), "remote: reconnected") {
		t.Fatalf("the server log shows no reconnect:\n%s", s.output())
	}
	verifyAll(t, s)
	checkClean(t, a)
}

// TestRemoteMemberRefusals: create names an unreachable member, and serve
// refuses an export that carries another array's header.
func TestRemoteMemberRefusals(t *testing.T) {
	needTools(t, "nbdkit", "truncate")
	dir := t.TempDir()
	kits := startKits(t, dir, 3, "16M")
	stateDir := filepath.Join(dir, "state")
	dead := "nbd://127.0.0.1:" + freePort(t) + "/gone"
	out, err := runErr(ddraidBin, "create", "x", "--state-dir="+stateDir, kits[0].uri, kits[1].uri, dead)
	if err == nil || !strings.Contains(out, dead) || !strings.Contains(out, "unreachable") {
		t.Fatalf("create with an unreachable member: %v\n%s", err, out)
	}
	ddraid(t, stateDir, "create", "a", "--assume-clean", kits[0].uri, kits[1].uri, kits[2].uri)
	out, err = runErr(ddraidBin, "create", "b", "--state-dir="+filepath.Join(dir, "state-b"), kits[2].uri,
		filepath.Join(dir, "b1"), filepath.Join(dir, "b2"), "--size=16MiB")
	if err == nil || !strings.Contains(out, `already belongs to array "a"`) {
		t.Fatalf("create over another array's member: %v\n%s", err, out)
	}
}

// TestRemoteMemberMinBlockSize: members behind nbdkit's blocksize-policy
// filter refuse requests smaller than 4 KiB. A raid35 of five such members
// with 4 KiB blocks (1 KiB fragments) would fail all five on its first
// small write, so create refuses it and names the block size that works;
// with that block size fio writes and verifies 4 KiB blocks through it.
func TestRemoteMemberMinBlockSize(t *testing.T) {
	needTools(t, "nbdkit", "fio", "truncate")
	dir := t.TempDir()
	kits := startKits(t, dir, 5, "64M", "--filter=blocksize-policy",
		"blocksize-minimum=4096", "blocksize-error-policy=error")
	a := &array{name: "data", dir: dir, stateDir: filepath.Join(dir, "state")}
	for _, k := range kits {
		a.members = append(a.members, k.uri)
	}
	create := append([]string{"create", a.name, "--level=raid35", "--assume-clean"}, a.members...)
	out, err := runErr(ddraidBin, append(create, "--state-dir="+a.stateDir)...)
	if err == nil || !strings.Contains(out, "multiples of 4096 bytes") || !strings.Contains(out, "block size of 16384 or more") {
		t.Fatalf("create with 1 KiB fragments over 4 KiB-minimum exports: %v\n%s", err, out)
	}
	out = ddraid(t, a.stateDir, append(create, "--block-size=16384")...)
	if !strings.Contains(out, "block size 16384") {
		t.Fatalf("create: %s", out)
	}
	s := a.serve(t)
	fio := remoteFio(s.uri, "--bs=4k", "--size=8M", "--do_verify=1")
	if out, err := fio.CombinedOutput(); err != nil || !strings.Contains(string(out), "err= 0") {
		t.Fatalf("fio 4k writes: %v\n%s\nserver log:\n%s", err, out, s.output())
	}
	checkClean(t, a)
}
