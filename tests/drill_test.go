package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	ddarray "github.com/ddraid/ddraid/raid/array"
)

// status returns the array's status as `ddraid status --json` prints it.
func status(t *testing.T, a *ddarray.Status, stateDir, name string) {
	t.Helper()
	var out []ddarray.Status
	js := ddraid(t, stateDir, "status", name, "--json")
	if err := json.Unmarshal([]byte(js), &out); err != nil || len(out) != 1 {
		t.Fatalf("status --json: %v\n%s", err, js)
	}
	*a = out[0]
}

// waitStatus polls status until cond holds (60 s at most); on timeout it
// shows the status and the server's log.
func waitStatus(t *testing.T, s *server, stateDir, name, what string, cond func(ddarray.Status) bool) ddarray.Status {
	t.Helper()
	var st ddarray.Status
	deadline := time.Now().Add(60 * time.Second)
	for {
		status(t, &st, stateDir, name)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("timed out waiting for %s; status:\n%s\nserver log:\n%s", what, b, s.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// idle reports that no background job runs or waits.
func idle(st ddarray.Status) bool { return st.Job == nil && st.Queued == 0 }

// kill9 kills a server with SIGKILL and waits for it.
func (s *server) kill9(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-s.done:
		s.done = nil
	case <-time.After(30 * time.Second):
		t.Fatal("server did not die after SIGKILL")
	}
}

// fioWrite runs fio's write phase with a verify pattern and saves the
// verify state (what completed) in dir. It may fail (the server is killed
// under it); the state file is what counts.
func fioArgs(uri, dir string, seed int, extra ...string) []string {
	return append([]string{"--name=drill", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
		"--size=48M", "--iodepth=" + fmt.Sprint(fioDepth), "--verify=crc32c", "--randseed=" + fmt.Sprint(seed),
		"--directory=" + dir, "--verify_state_save=1", "--fsync=16"}, extra...)
}

// fioDepth is the drills' fio queue depth: at most this many writes are in
// flight when the server is killed.
const fioDepth = 16

var (
	failedWriteRE = regexp.MustCompile(`io_u error on file .*: write offset=(\d+)`)
	badBlockRE    = regexp.MustCompile(`(?:verify: bad|verify failed at file) .*? offset (\d+), length`)
)

// fioVerify checks every write that fio recorded as completed. fio counts a
// write that failed (its connection died with the server) as completed too,
// and does not always print every failed write; such writes were in flight
// at the crash, never acknowledged, and their blocks may hold anything. So
// the blocks that fail verification, together with the writes fio saw fail,
// must fit in the in-flight window (iodepth); any more means an
// acknowledged write was lost.
func fioVerify(t *testing.T, uri, dir string, seed int, failedWrites map[string]bool) {
	t.Helper()
	args := fioArgs(uri, dir, seed, "--do_verify=1", "--verify_only", "--verify_state_load=1")
	cmd := exec.Command("fio", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	bad := badBlockRE.FindAllStringSubmatch(string(out), -1)
	suspects := maps.Clone(failedWrites)
	for _, m := range bad {
		suspects[m[1]] = true
	}
	if len(suspects) > fioDepth {
		t.Fatalf("%d blocks fail verification or failed to write, more than the %d writes in flight at the crash:\n%s", len(suspects), fioDepth, out)
	}
	if len(bad) == 0 && (err != nil || !strings.Contains(string(out), "err= 0")) {
		t.Fatalf("fio verify failed: %v\n%s", err, out)
	}
}

// crashDuringWrites starts fio writes and SIGKILLs the server after delay.
// It returns the offsets of the writes fio saw fail.
func crashDuringWrites(t *testing.T, s *server, dir string, seed int, delay time.Duration) map[string]bool {
	t.Helper()
	cmd := exec.Command("fio", fioArgs(s.uri, dir, seed, "--do_verify=0", "--rate=40m")...)
	cmd.Dir = dir
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	connected := make(chan struct{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "connected to NBD server") {
				close(connected)
			}
		}
	}()
	select {
	case <-connected:
	case <-time.After(30 * time.Second):
		t.Fatal("fio did not connect")
	}
	time.Sleep(delay) // the crash lands at a random point of the writes
	s.kill9(t)
	cmd.Wait() // fio fails when its server dies; the saved state is what matters
	pw.Close()
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

// TestDrillSIGKILLDuringWrites kills the server at random moments under fio
// writes; after each restart and resync, every completed write verifies
// and a full check finds no mismatch.
func TestDrillSIGKILLDuringWrites(t *testing.T) {
	needTools(t, "fio")
	a := newArray(t, "raid35", 5, "24MiB")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	const iterations = 20
	for i := range iterations {
		dir := t.TempDir()
		s := a.serve(t)
		delay := time.Duration(50+rng.IntN(900)) * time.Millisecond
		failed := crashDuringWrites(t, s, dir, i+1, delay)
		s = a.serve(t)
		st := waitStatus(t, s, a.stateDir, a.name, "resync after crash", idle)
		if st.LastJob != nil && st.LastJob.Error != "" {
			t.Fatalf("iteration %d: resync failed: %s", i, st.LastJob.Error)
		}
		fioVerify(t, s.uri, dir, i+1, failed)
		out, err := runErr(ddraidBin, "check", a.name, "--state-dir="+a.stateDir)
		if err != nil || !strings.Contains(out, " 0 mismatched") {
			t.Fatalf("iteration %d (kill after %v): check: %v\n%s", i, delay, err, out)
		}
		s.stop(t)
	}
}

// TestDrillResyncOnlyDirtyRegions writes N regions of a large sparse array,
// kills the server before the marks clear, and counts what the resync reads.
func TestDrillResyncOnlyDirtyRegions(t *testing.T) {
	needTools(t, "qemu-io")
	a := newArray(t, "raid35", 5, "2GiB") // 8 GiB array, 2048 regions of 4 MiB
	s := a.serve(t, "--clear-delay=10m")
	const region = 4 << 20
	offsets := []int64{0, 7 * region, 7*region + region - 4096, 100 * region, 1500*region + 12345}
	var cmds []string
	for _, off := range offsets {
		cmds = append(cmds, "-c", fmt.Sprintf("write -P 0x5a %d 8k", off))
	}
	run(t, "qemu-io", append(append([]string{"-f", "raw"}, cmds...), s.uri)...)
	// Regions 0, 7, 7 and 8 (the third write crosses a boundary), 100
	// and 1500: five regions.
	const dirty = 5
	var st ddarray.Status
	status(t, &st, a.stateDir, a.name)
	if st.DirtyRegions != dirty {
		t.Fatalf("%d dirty regions before the crash, want %d", st.DirtyRegions, dirty)
	}
	s.kill9(t)
	s = a.serve(t)
	st = waitStatus(t, s, a.stateDir, a.name, "resync", func(st ddarray.Status) bool { return idle(st) && st.LastJob != nil })
	if st.LastJob.Kind != "resync" || st.LastJob.Error != "" || st.LastJob.Done != dirty*region {
		t.Fatalf("resync job: %+v", *st.LastJob)
	}
	var read int64
	for _, io := range st.MemberIO {
		read += io.ReadBytes
	}
	if limit := int64(dirty+1) * region; read > limit {
		t.Fatalf("resync read %d bytes from members, more than %d regions' worth (%d)", read, dirty+1, limit)
	}
	if read == 0 {
		t.Fatal("resync read nothing")
	}
	if st.DirtyRegions != 0 {
		t.Fatalf("%d regions still dirty after resync", st.DirtyRegions)
	}
	out := run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("read -P 0x5a %d 8k", offsets[2]), s.uri)
	if strings.Contains(out, "failed") {
		t.Fatal(out)
	}
}

// TestDrillDegradedCrash fails a member, kills the server during writes,
// and checks every completed write after the restart, then rebuilds.
func TestDrillDegradedCrash(t *testing.T) {
	needTools(t, "fio")
	a := newArray(t, "raid35", 5, "24MiB")
	s := a.serve(t)
	ddraid(t, a.stateDir, "fail-device", a.name, "2")
	dir := t.TempDir()
	failed := crashDuringWrites(t, s, dir, 42, 600*time.Millisecond)
	s = a.serve(t)
	fioVerify(t, s.uri, dir, 42, failed)
	spare := filepath.Join(a.dir, "new2")
	run(t, "truncate", "-s", "24M", spare)
	ddraid(t, a.stateDir, "remove-device", a.name, "2")
	ddraid(t, a.stateDir, "add-device", a.name, spare)
	waitStatus(t, s, a.stateDir, a.name, "recovery", func(st ddarray.Status) bool { return idle(st) && st.State == "clean" })
	fioVerify(t, s.uri, dir, 42, failed)
	if out, err := runErr(ddraidBin, "check", a.name, "--state-dir="+a.stateDir); err != nil {
		t.Fatalf("check after rebuild: %v\n%s", err, out)
	}
}
