package tests

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDrillClusterKillNode: a whole machine dies. n1 both serves the array
// and hosts one of its members; n0 serves it too; n3 hosts the other two
// members. While both writers write their halves, n1 is killed with
// SIGKILL: its writer and its disk vanish at once. n0's IO waits for
// --serve-member-timeout, fails n1's member and goes on degraded; n0
// takes n1's slot over once the unreachable host is out of the array
// (degraded takeover: n1's marks kept for the rebuild); every write
// either writer acknowledged verifies through n0, the lost member's part
// rebuilt from parity. n1 comes back; add-device re-adds its disk, which
// is rebuilt from the marks only (n1's old slot's and the degraded
// writes'), and the array checks clean through both writers.
func TestDrillClusterKillNode(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "nbdcopy", "cmp", "truncate")
	dir := t.TempDir()
	k := killNode(t, dir, nil)
	dc, n0, n1, role, d0, d1, failed1, killed := k.dc, k.n0, k.n1, k.role, k.d0, k.d1, k.failed1, k.killed
	waitFor(t, "n0 to take n1's slot over", func() bool {
		st, _ := served(t, n0)
		return st.Coord != nil && len(st.Coord.Takeovers) == 0 &&
			strings.Contains(n0.output(), "array degraded: a slot's dirty regions wait for the rebuild")
	})
	took := time.Since(killed)
	if arrayStatus(t, n0).State != "degraded" {
		t.Fatalf("n0's array is %s with member %d failed", arrayStatus(t, n0).State, role)
	}
	// Every acknowledged write is there, read with n1's disk rebuilt from
	// parity on the fly.
	verifyAcked(t, dc.uri(0), d0, 51, 0)
	verifyHalf(t, dc.uri(0), d1, 52, killHalf, failed1)
	degraded := filepath.Join(dir, "degraded.img")
	run(t, "nbdcopy", dc.uri(0), degraded)
	t.Logf("n1's half through degraded n0: %d suspect blocks", len(failed1))

	// The machine comes back: n1 rejoins with a new slot, its disk is
	// re-added and rebuilt from the marks only.
	n1.start(t)
	waitFor(t, "n1 to serve the array again", func() bool {
		st, ok := served(t, n1)
		return ok && st.Coord != nil && st.Coord.Slot >= 0 && arrayStatus(t, n1).Members[role].State == "failed"
	})
	out := run(t, ddraidBin, "add-device", "data", dc.members[role], "--state-dir="+n0.stateDir)
	if !strings.Contains(out, "re-added") {
		t.Fatalf("re-add: %s", out)
	}
	name := fmt.Sprintf("recover/%d", role)
	waitFor(t, "member "+fmt.Sprint(role)+" active on both writers", func() bool {
		return arrayStatus(t, n0).Members[role].State == "active" && arrayStatus(t, n1).Members[role].State == "active"
	})
	var rebuilt int64 = -1
	for _, n := range []*clusterNode{n0, n1} {
		for _, s := range jobStarts(n, name) {
			rebuilt = s[1]
		}
	}
	size := arrayStatus(t, n0).Size
	// Both halves: 24 MiB each from a region boundary, at most 48 regions
	// of 1 MiB.
	if rebuilt <= 0 || rebuilt > 48<<20 {
		t.Fatalf("re-add rebuilt %d bytes of the %d-byte array, want only the regions marked (≤ 48 MiB)", rebuilt, size)
	}
	checkServed(t, n0, "after the re-add")
	// The rebuilt member holds exactly what was read degraded: every
	// block, those n1 had in flight included, reads the same through
	// either writer.
	for i := range 2 {
		rebuiltImg := filepath.Join(dir, fmt.Sprintf("rebuilt%d.img", i))
		run(t, "nbdcopy", dc.uri(i), rebuiltImg)
		if out, err := runErr("cmp", degraded, rebuiltImg); err != nil {
			t.Fatalf("the array through n%d after the rebuild differs from what n0 read degraded: %v\n%s", i, err, out)
		}
	}
	verifyAcked(t, dc.uri(1), d0, 51, 0)
	// fio's verify of a run cut short stops at a point that varies from
	// run to run, so n1's half is not verified again: the comparison above
	// shows its blocks unchanged.
	fmt.Printf("drill kill-node: ok, n0 failed n1's member and took its slot over %v after the kill; the re-add rebuilt %d of %d bytes\n",
		took.Round(10*time.Millisecond), rebuilt, size)
}

// verifyAcked is verifyHalf for a run whose writes all succeeded: not one
// block may fail.
func verifyAcked(t *testing.T, uri, dir string, seed int, off int64) {
	t.Helper()
	bad := map[string]bool{}
	verifyHalf(t, uri, dir, seed, off, bad)
	if len(bad) > 0 {
		t.Fatalf("%d acknowledged blocks fail verification through %s: %v", len(bad), uri, bad)
	}
}

// killHalf is where n1's half starts: n0 writes [0, 24M), n1 [32M, 56M).
const killHalf = int64(32 << 20)

// killedNode is the state kill-node drills start from.
type killedNode struct {
	dc      *drillCluster
	n0, n1  *clusterNode
	role    int    // the member n1 hosted
	d0, d1  string // fio's verify state of n0's and n1's writes
	failed1 map[string]bool
	killed  time.Time
}

// killNode starts five agents, n1 serving the array and hosting member
// 0, n0 serving it, n3 hosting members 1 and 2 and, with spare, n4 hosting
// a spare added to the array; kills n1 under writes on both writers;
// checks that none of n0's writes failed; and returns once n0 has failed
// n1's member.
func killNode(t *testing.T, dir string, spare []string) *killedNode {
	t.Helper()
	dn := loopbackNet(t, 5)
	dn.disks = [][]string{nil, {"d2"}, nil, {"d0", "d1"}, nil}
	dn.serving = []bool{true, true, false, false, false}
	dn.writerFlags = []string{"--serve-member-timeout=3s"}
	dn.spares = [][]string{nil, nil, nil, nil, spare}
	k := &killedNode{dc: startDrillCluster(t, dir, dn)}
	dc := k.dc
	k.n0, k.n1 = dc.nodes[0], dc.nodes[1]
	k.role = slices.Index(dc.hosts, k.n1)
	for _, sp := range dc.spares {
		if out := run(t, ddraidBin, "add-device", "data", sp, "--state-dir="+k.n0.stateDir); !strings.Contains(out, "as a spare") {
			t.Fatalf("add spare: %s", out)
		}
	}
	s1, _ := served(t, k.n1)
	k.d0, k.d1 = filepath.Join(dir, "fio0"), filepath.Join(dir, "fio1")
	wait0 := startWrites(t, dc.uri(0), k.d0, 51, 0)
	wait1 := startWrites(t, dc.uri(1), k.d1, 52, killHalf)
	time.Sleep(1500 * time.Millisecond) // the kill lands in the middle of both writers' writes
	if len(dc.dirtyRegions(t, s1.Coord.Slot)) == 0 {
		t.Fatal("n1 writes but the member hosts hold no marks for its slot")
	}
	k.n1.kill9(t)
	k.killed = time.Now()
	k.failed1 = wait1()
	// n0's writes stall for the member timeout, then complete degraded:
	// none of them fails.
	if failed0 := wait0(); len(failed0) != 0 {
		t.Fatalf("n0's writes failed across n1's death: %v\n%s", failed0, k.n0.output())
	}
	waitFor(t, "n0 to fail member "+fmt.Sprint(k.role), func() bool {
		m := arrayStatus(t, k.n0).Members[k.role]
		return m.Path != dc.members[k.role] || m.State == "failed"
	})
	return k
}

// TestDrillClusterKillNodeSpare: kill-node with a spare disk on n4. When
// n0 fails n1's member after its IO timeout, the spare takes its role and
// n0 rebuilds it, with no operator: the array is clean again with n1
// still dead, parity checks, and every acknowledged write verifies.
func TestDrillClusterKillNodeSpare(t *testing.T) {
	needTools(t, "fio", "nbdinfo", "truncate")
	dir := t.TempDir()
	k := killNode(t, dir, []string{"s0"})
	n0, role := k.n0, k.role
	name := fmt.Sprintf("recover/%d", role)
	waitFor(t, "the spare to take member "+fmt.Sprint(role)+"'s role and be rebuilt", func() bool {
		m := arrayStatus(t, n0).Members[role]
		st, _ := served(t, n0)
		return m.Path == k.dc.spares[0] && m.State == "active" && st.Coord != nil && len(st.Coord.Takeovers) == 0
	})
	took := time.Since(k.killed)
	starts := jobStarts(n0, name)
	if len(starts) == 0 {
		t.Fatalf("n0 shows the spare active but never ran %s:\n%s", name, n0.output())
	}
	if st := arrayStatus(t, n0); st.State != "clean" {
		t.Fatalf("n0's array is %s after the spare's rebuild", st.State)
	}
	checkServed(t, n0, "after the spare's rebuild")
	verifyAcked(t, k.dc.uri(0), k.d0, 51, 0)
	verifyHalf(t, k.dc.uri(0), k.d1, 52, killHalf, k.failed1)
	fmt.Printf("drill kill-node-spare: ok, the spare took member %d's role and was rebuilt (%d bytes) %v after the kill\n",
		role, starts[len(starts)-1][1], took.Round(10*time.Millisecond))
}
