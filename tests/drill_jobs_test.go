package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/cluster/coord"
	rarray "github.com/ddraid/ddraid/raid/array"
)

// Cluster drills of the jobs one writer runs for all (docs/drills.md):
// the initial sync and member rebuilds, with their runner killed.

// arrayStatus is `ddraid status data --json` on node n.
func arrayStatus(t *testing.T, n *clusterNode) rarray.Status {
	t.Helper()
	out := run(t, ddraidBin, "status", "data", "--json", "--state-dir="+n.stateDir)
	var sts []rarray.Status
	if err := json.Unmarshal([]byte(out), &sts); err != nil || len(sts) != 1 {
		t.Fatalf("status of %s: %v\n%s", n.name, err, out)
	}
	return sts[0]
}

// jobOf returns node n's view of the cluster job name, if it is due.
func jobOf(t *testing.T, n *clusterNode, name string) (coord.JobStatus, bool) {
	st, ok := served(t, n)
	if !ok || st.Coord == nil {
		return coord.JobStatus{}, false
	}
	for _, j := range st.Coord.Jobs {
		if j.Name == name {
			return j, true
		}
	}
	return coord.JobStatus{}, false
}

// waitRunner waits until one of the writers runs job name with some of it
// done, and checks that every other writer shows it REMOTE on the runner
// (in `ddraid status` too). It returns the runner and another writer.
func waitRunner(t *testing.T, writers []*clusterNode, name string) (runner, other *clusterNode, at coord.JobStatus) {
	t.Helper()
	waitFor(t, "a writer to run "+name, func() bool {
		for _, n := range writers {
			if j, ok := jobOf(t, n, name); ok && j.State == "running" && j.Done > 0 && j.Done < j.Total/2 {
				runner, at = n, j
				return true
			}
		}
		return false
	})
	for _, n := range writers {
		if n == runner {
			continue
		}
		other = n
		j, ok := jobOf(t, n, name)
		if !ok || j.State != "remote" || string(j.Runner) != runner.name {
			t.Fatalf("%s shows job %s as %+v, want REMOTE on %s", n.name, name, j, runner.name)
		}
		txt := run(t, ddraidBin, "status", "data", "--state-dir="+n.stateDir)
		if want := name + ": REMOTE on " + runner.name; !strings.Contains(txt, want) {
			t.Fatalf("ddraid status on %s lacks %q:\n%s", n.name, want, txt)
		}
	}
	return runner, other, at
}

// jobStartRE finds where a writer started (or took up) a cluster job.
var jobStartRE = regexp.MustCompile(`running a cluster job.* job=(\S+) from=(\d+) bytes=(\d+)`)

// jobStarts returns the (from, bytes) of every start of job name in n's log.
func jobStarts(n *clusterNode, name string) [][2]int64 {
	var out [][2]int64
	for _, m := range jobStartRE.FindAllStringSubmatch(n.agent.output(), -1) {
		if m[1] != name {
			continue
		}
		from, _ := strconv.ParseInt(m[2], 10, 64)
		n, _ := strconv.ParseInt(m[3], 10, 64)
		out = append(out, [2]int64{from, n})
	}
	return out
}

// checkServed runs `ddraid check` through n's served array.
func checkServed(t *testing.T, n *clusterNode, when string) {
	t.Helper()
	out, err := runErr(ddraidBin, "check", "data", "--state-dir="+n.stateDir)
	if err != nil || !strings.Contains(out, " 0 mismatched") {
		t.Fatalf("check %s: %v\n%s", when, err, out)
	}
}

// fiveNodes is the drills' layout: n0 and n1 write, n3 hosts d0 and d1,
// n4 hosts d2 (and spares), n2 only votes; a writer can die without
// taking a member with it.
func fiveNodes(t *testing.T, delay string) drillNet {
	dn := loopbackNet(t, 5)
	dn.disks = [][]string{nil, nil, nil, {"d0", "d1"}, {"d2"}}
	dn.serving = []bool{true, true, false, false, false}
	dn.writerFlags = []string{"--serve-member-delay=" + delay}
	return dn
}

// TestDrillClusterInitialSync: the array is created on n0 on disks that
// held data (random bytes: parity holds nowhere) and assembled on n0 and
// n1. The initial sync runs on one writer; the other shows it REMOTE on
// the runner and writes meanwhile. The runner is killed with SIGKILL mid
// sync; the survivor takes the sync over from its last checkpoint (not
// from the start) and finishes it. Then the array checks clean and every
// acknowledged write of the survivor verifies.
func TestDrillClusterInitialSync(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	dn := fiveNodes(t, "20ms")
	dn.initialSync, dn.fill = true, scramble // the disks held data
	dc := startDrillCluster(t, dir, dn)
	writers := []*clusterNode{dc.nodes[0], dc.nodes[1]}
	runner, other, at := waitRunner(t, writers, "sync")
	oi := slices.Index(dc.nodes, other)
	d := filepath.Join(dir, "fio")
	const half = int64(32 << 20)
	wait := startWrites(t, dc.uri(oi), d, 51, half)
	time.Sleep(6 * time.Second) // past a checkpoint (every 5 s)
	runner.kill9(t)
	killed := time.Now()
	failed := wait()
	waitFor(t, other.name+" to finish the sync", func() bool {
		st := arrayStatus(t, other)
		_, due := jobOf(t, other, "sync")
		return !st.InitialSync && !due
	})
	took := time.Since(killed)
	starts := jobStarts(other, "sync")
	if len(starts) == 0 || starts[len(starts)-1][0] == 0 {
		t.Fatalf("%s did not take the sync over from a checkpoint: starts %v", other.name, starts)
	}
	checkServed(t, other, "after the switched sync")
	verifyHalf(t, dc.uri(oi), d, 51, half, failed)
	fmt.Printf("drill initial-sync: ok, %s ran the sync (%s showed it REMOTE; %d of %d bytes done when seen), was killed; %s went on from %d and finished in %v\n",
		runner.name, other.name, at.Done, at.Total, other.name, starts[len(starts)-1][0], took.Round(10*time.Millisecond))
}

// scramble overwrites a member file from 1 MiB on (its data area) with
// random bytes.
func scramble(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	buf := make([]byte, 1<<20)
	for off := int64(1 << 20); off < st.Size(); off += int64(len(buf)) {
		fillRandom(buf, off)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

// fillRandom fills p with bytes that depend on seed (not a pattern parity
// can miss).
func fillRandom(p []byte, seed int64) {
	x := uint64(seed)*0x9e3779b97f4a7c15 + 1
	for i := range p {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
}

// TestDrillClusterMembers: device changes in a cluster of two writers.
//   - grow: `ddraid grow --nodes 6` on n1; both writers see 6 slots.
//   - scrub: `check --repair` on n0 while n1 writes where it scans finds
//     nothing and n1's writes verify.
//   - fail, remove, re-add: member 2 failed on n1, n0 writes degraded,
//     removed on n0, the same disk added back on n1: one writer rebuilds
//     only the regions written while it was away (counted), both writers
//     see it active.
//   - spare and switch-recovery: a spare added on n0; member 0 failed on
//     n1 and the spare takes its role; the writer rebuilding it is killed
//     with SIGKILL mid-rebuild; the other finishes from the checkpoint.
//
// After each step the array checks clean; the writes verify at the end.
func TestDrillClusterMembers(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	dn := fiveNodes(t, "20ms")
	dn.writerFlags = append(dn.writerFlags, "--serve-speed-max=4M") // a rebuild of ~20 s: the kill lands in it
	dn.spares = [][]string{nil, nil, nil, nil, {"s0"}}
	dc := startDrillCluster(t, dir, dn)
	n0, n1 := dc.nodes[0], dc.nodes[1]

	// grow; not on a node that does not serve the array (its writers
	// would never record it)
	if out, err := runErr(ddraidBin, "grow", "data", "--nodes=6", "--state-dir="+dc.nodes[2].stateDir); err == nil || !strings.Contains(out, "does not serve the array here") {
		t.Fatalf("grow on n2, which does not serve the array: %v\n%s", err, out)
	}
	if out := run(t, ddraidBin, "grow", "data", "--nodes=6", "--state-dir="+n1.stateDir); !strings.Contains(out, "6 writer slots (was 4)") {
		t.Fatalf("grow: %s", out)
	}
	for _, n := range []*clusterNode{n0, n1} {
		if st, _ := served(t, n); st.Coord == nil || st.Coord.Slots != 6 {
			t.Fatalf("%s after grow: %+v", n.name, st.Coord)
		}
	}

	// scrub with repair on n0 while n1 writes where it scans: it runs to
	// the end through its windows, finds nothing and breaks none of n1's
	// writes. (A torn read needs a write to land between two member reads
	// of one block, microseconds here, so this cannot show the windows
	// work; coord's TestScrubWindow shows they hold every writer's writes.)
	d1 := filepath.Join(dir, "fio1")
	wait1 := startWrites(t, dc.uri(1), d1, 62, 0)
	out, err := runErr(ddraidBin, "check", "data", "--repair", "--state-dir="+n0.stateDir)
	failed1 := wait1()
	if err != nil || !strings.Contains(out, " 0 mismatched") {
		t.Fatalf("check --repair during n1's writes: %v\n%s", err, out)
	}
	verifyHalf(t, dc.uri(0), d1, 62, 0, failed1)

	// fail, write degraded, remove, re-add
	run(t, ddraidBin, "fail-device", "data", "2", "--state-dir="+n1.stateDir)
	for _, n := range []*clusterNode{n0, n1} {
		if m := arrayStatus(t, n).Members[2]; m.State != "failed" {
			t.Fatalf("%s: member 2 is %s after fail-device on n1", n.name, m.State)
		}
	}
	d0 := filepath.Join(dir, "fio0")
	failed := startWrites(t, dc.uri(0), d0, 61, 0)()
	run(t, ddraidBin, "remove-device", "data", "2", "--state-dir="+n0.stateDir)
	out = run(t, ddraidBin, "add-device", "data", dc.members[2], "--state-dir="+n1.stateDir)
	if !strings.Contains(out, "re-added") {
		t.Fatalf("re-add: %s", out)
	}
	waitFor(t, "member 2 active on both writers", func() bool {
		return arrayStatus(t, n0).Members[2].State == "active" && arrayStatus(t, n1).Members[2].State == "active"
	})
	var rebuilt int64 = -1
	for _, n := range []*clusterNode{n0, n1} {
		for _, s := range jobStarts(n, "recover/2") {
			rebuilt = s[1]
		}
	}
	size := arrayStatus(t, n0).Size
	// fio wrote 24 MiB from offset 0: at most 25 regions of 1 MiB.
	if rebuilt <= 0 || rebuilt > 25<<20 {
		t.Fatalf("re-add rebuilt %d bytes of the %d-byte array, want only the regions written while it was away (≤ 25 MiB)", rebuilt, size)
	}
	checkServed(t, n0, "after the re-add")

	// spare, fail, kill the rebuilder
	if out := run(t, ddraidBin, "add-device", "data", dc.spares[0], "--state-dir="+n0.stateDir); !strings.Contains(out, "as a spare") {
		t.Fatalf("add spare: %s", out)
	}
	run(t, ddraidBin, "fail-device", "data", "0", "--state-dir="+n1.stateDir)
	runner, other, at := waitRunner(t, []*clusterNode{n0, n1}, "recover/0")
	if m := arrayStatus(t, other).Members[0]; m.Path != dc.spares[0] || m.State != "recovering" {
		t.Fatalf("%s: role 0 is %+v, want the spare recovering", other.name, m)
	}
	time.Sleep(6 * time.Second) // past a checkpoint (every 5 s)
	runner.kill9(t)
	killed := time.Now()
	waitFor(t, other.name+" to finish the rebuild", func() bool {
		return arrayStatus(t, other).Members[0].State == "active"
	})
	took := time.Since(killed)
	starts := jobStarts(other, "recover/0")
	if len(starts) == 0 || starts[len(starts)-1][0] == 0 {
		t.Fatalf("%s did not take the rebuild over from a checkpoint: starts %v", other.name, starts)
	}
	checkServed(t, other, "after the switched rebuild")
	verifyHalf(t, dc.uri(slices.Index(dc.nodes, other)), d0, 61, 0, failed)
	fmt.Printf("drill members: ok, grow to 6 slots; re-add rebuilt %d of %d bytes; %s rebuilt the spare (%d bytes done when seen), was killed; %s went on from %d and finished in %v\n",
		rebuilt, size, runner.name, at.Done, other.name, starts[len(starts)-1][0], took.Round(10*time.Millisecond))
}
