package coord

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/meta"
)

func TestMetadataUpdateAcknowledgedByAll(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		sb, err := c.nodes["n2"].co.FailMember(context.Background(), 1, meta.UUID{2}, "IO error seen by n2")
		if err != nil {
			t.Fatal(err)
		}
		if sb.Events != 8 || sb.Members[1].State != meta.StateFailed {
			t.Fatalf("update returned events %d, member 1 %s", sb.Events, sb.Members[1].State)
		}
		for _, id := range c.ids {
			got := c.nodes[id].local.Superblock()
			if got.Events != 8 || got.Members[1].State != meta.StateFailed {
				t.Errorf("%s holds events %d, member 1 %s; want 8, failed", id, got.Events, got.Members[1].State)
			}
		}
		// Failing it again changes nothing (the superblock is confirmed
		// with every node again).
		sb, err = c.nodes["n1"].co.FailMember(context.Background(), 1, meta.UUID{2}, "again")
		if err != nil || sb.Events != 8 {
			t.Errorf("second fail: events %d, %v", sb.Events, err)
		}
		if _, err := c.nodes["n1"].co.FailMember(context.Background(), 7, meta.UUID{}, "x"); err == nil || !strings.Contains(err.Error(), "no member 7") {
			t.Errorf("fail of a member that does not exist: %v", err)
		}
	})
}

func TestMetadataUpdateRefusedByOneNode(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		c.nodes["n3"].local.refuse = errors.New("pebble: disk full")
		_, err := c.nodes["n1"].co.FailMember(context.Background(), 0, meta.UUID{1}, "operator")
		if err == nil {
			t.Fatal("update succeeded although n3 refused it")
		}
		for _, want := range []string{"n3", "pebble: disk full", "not acknowledged", "event 8"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		if sb := c.nodes["n3"].local.Superblock(); sb.Events != 7 {
			t.Errorf("n3 (refused) holds event %d", sb.Events)
		}
		// A stale superblock (lower event counter) is refused too.
		old := testSuperblock()
		old.Events = 3
		body, _ := EncodeSuperblock(old)
		_, err = c.nodes["n1"].msg.Call(context.Background(), "n2", cluster.Message{Type: TypeMetadataUpdated, Array: c.nodes["n2"].co.UUID(), Body: body})
		if err == nil || !strings.Contains(err.Error(), "stale superblock") {
			t.Errorf("stale superblock: %v", err)
		}
	})
}

func TestUnknownMessageTypeAnsweredWithError(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		ctx := context.Background()
		uuid := c.nodes["n1"].co.UUID()
		// Through the messenger: nobody registered the type.
		if _, err := c.nodes["n1"].msg.Call(ctx, "n2", cluster.Message{Type: "bitmap-resize", Array: uuid}); !errors.Is(err, cluster.ErrUnknownType) && !strings.Contains(err.Error(), "unknown message type") {
			t.Errorf("unknown type: %v", err)
		}
		// The router itself, for served and unserved arrays.
		for _, array := range []string{uuid, "not-served"} {
			if _, err := c.nodes["n2"].router.handle(ctx, "n1", cluster.Message{Type: "bitmap-resize", Array: array}); !errors.Is(err, cluster.ErrUnknownType) {
				t.Errorf("router, array %s: %v, want ErrUnknownType", array, err)
			}
		}
		// Bad bodies are errors, for served and unserved arrays.
		for _, array := range []string{uuid, "not-served"} {
			for _, typ := range []string{TypeMetadataUpdated, TypeResyncing, TypeNewDisk} {
				if _, err := c.nodes["n2"].router.handle(ctx, "n1", cluster.Message{Type: typ, Array: array, Body: []byte{1}}); !errors.Is(err, ErrBadBody) {
					t.Errorf("%s with a bad body, array %s: %v, want ErrBadBody", typ, array, err)
				}
			}
		}
	})
}

func TestAddMemberNeedsEveryNode(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		spec := "h9:10810:/dev/sdz"
		addSpare := func(sb *meta.Array) error {
			sb.Spares = append(sb.Spares, meta.Member{Role: -1, UUID: meta.UUID{9}, Path: spec, State: meta.StateSpare})
			return nil
		}
		c.nodes["n2"].local.cannotOpen[spec] = errors.New("connection refused")
		_, err := c.nodes["n1"].co.AddMember(ctx, spec, addSpare)
		if err == nil {
			t.Fatal("add succeeded although n2 cannot open the member")
		}
		for _, want := range []string{"n2", "connection refused", spec} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		for _, id := range c.ids {
			if sb := c.nodes[id].local.Superblock(); sb.Events != 7 || len(sb.Spares) != 0 {
				t.Errorf("%s: events %d, spares %v after a refused add", id, sb.Events, sb.Spares)
			}
		}
		// The initiator's own refusal names it.
		c.nodes["n1"].local.cannotOpen[spec] = errors.New("no such file")
		if _, err := c.nodes["n1"].co.AddMember(ctx, spec, addSpare); err == nil || !strings.Contains(err.Error(), "n1 cannot open") {
			t.Errorf("add refused by the initiator: %v", err)
		}
		delete(c.nodes["n1"].local.cannotOpen, spec)
		delete(c.nodes["n2"].local.cannotOpen, spec)
		if _, err := c.nodes["n1"].co.AddMember(ctx, spec, addSpare); err != nil {
			t.Fatal(err)
		}
		for _, id := range c.ids {
			if sb := c.nodes[id].local.Superblock(); sb.Events != 8 || len(sb.Spares) != 1 {
				t.Errorf("%s: events %d, spares %v after the add", id, sb.Events, sb.Spares)
			}
		}
	})
}

func TestResyncWindowBlocksOverlappingWrite(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		n1, n2 := c.nodes["n1"], c.nodes["n2"]
		if err := n1.co.announce(ctx, Window{Owner: "n1", Slot: 5, Lo: 2 * tRegion, Hi: 3 * tRegion}); err != nil {
			t.Fatal(err)
		}
		var inside, outside atomic.Bool
		go func() {
			if err := n2.write(ctx, pattern(2, 0, 1), 2*tRegion+tBlock); err != nil {
				t.Error(err)
			}
			inside.Store(true)
		}()
		go func() {
			if err := n2.write(ctx, pattern(2, 0, 1), 5*tRegion); err != nil {
				t.Error(err)
			}
			outside.Store(true)
		}()
		synctest.Wait()
		if !outside.Load() {
			t.Error("a write outside the window waited")
		}
		if inside.Load() {
			t.Error("a write inside another node's resync window went through")
		}
		if st := n2.co.Status(); len(st.Windows) != 1 || st.Windows[0].Owner != "n1" {
			t.Errorf("n2 status windows %+v", st.Windows)
		}
		// A node joining later learns the window from its owner.
		c2 := c.nodes["n3"]
		c2.gate.DropOwner("n1")
		if err := c2.co.fetchWindows(ctx); err != nil {
			t.Fatal(err)
		}
		if ws := c2.gate.Windows(); len(ws) != 1 || ws[0].Lo != 2*tRegion {
			t.Errorf("fetched windows %+v", ws)
		}
		n1.co.endWindow(5)
		synctest.Wait()
		if !inside.Load() {
			t.Error("the write inside the window still waits after it ended")
		}
	})
}

// writtenUnion returns the union of slot's marks over the hosts.
func (c *tcluster) writtenUnion(slot uint32) []uint64 {
	var all []uint64
	for _, h := range c.hosts {
		all = append(all, h.marked(slot)...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// slotClean reports whether no host holds marks of slot and every host
// fences it above epoch.
func (c *tcluster) slotTakenOver(slot uint32, epoch uint64) bool {
	for _, h := range c.hosts {
		h.mu.Lock()
		ok := len(h.marks[slot]) == 0 && h.minEpoch[slot] > epoch
		h.mu.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

// checkBlocks reads every block in want through n's engine.
func (c *tcluster) checkBlocks(n *tnode, want map[int64][]byte) {
	c.t.Helper()
	buf := make([]byte, tBlock)
	for b, p := range want {
		if _, err := n.eng.ReadAt(buf, b*tBlock); err != nil {
			c.t.Fatalf("read block %d: %v", b, err)
		}
		if string(buf) != string(p) {
			c.t.Errorf("block %d: acknowledged data lost", b)
		}
	}
}

func TestTakeoverAfterWriterCrash(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		n3 := c.nodes["n3"]
		acked := map[int64][]byte{}
		for _, b := range []int64{1 * 16, 5*16 + 3, 6 * 16, 6*16 + 15} { // regions 1, 5, 6
			p := pattern(3, b, 1)
			if err := n3.write(ctx, p, b*tBlock); err != nil {
				t.Fatal(err)
			}
			acked[b] = p
		}
		// A write torn by the crash: one fragment of a block of region 9
		// reached host 0 only.
		torn := n3.local.hosts[0].conn(n3.w, nil)
		if _, err := torn.WriteAt(bytes.Repeat([]byte{0xff}, tFrag), (9*16+2)*tFrag); err != nil {
			t.Fatal(err)
		}
		if bad := parityMismatches(c.hosts); len(bad) != 1 {
			t.Fatalf("the torn write left %d inconsistent blocks, want 1", len(bad))
		}
		dirty := c.writtenUnion(n3.w.Slot)
		if !slices.Equal(dirty, []uint64{1, 5, 6, 9}) {
			t.Fatalf("n3's marks %v", dirty)
		}

		c.crash("n3")
		c.waitFor("n3's slot taken over", func() bool { return c.slotTakenOver(n3.w.Slot, n3.w.Epoch) })
		c.waitFor("takeovers finished", func() bool {
			return len(c.nodes["n1"].co.Status().Takeovers) == 0 && len(c.nodes["n2"].co.Status().Takeovers) == 0
		})

		resynced := append(c.nodes["n1"].local.resyncedRegions(), c.nodes["n2"].local.resyncedRegions()...)
		slices.Sort(resynced)
		resynced = slices.Compact(resynced)
		if !slices.Equal(resynced, dirty) {
			t.Errorf("resynced regions %v, want exactly n3's dirty union %v", resynced, dirty)
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent after the takeover", bad)
		}
		c.checkBlocks(c.nodes["n1"], acked)
		// n3's old epoch is refused everywhere.
		for _, h := range c.hosts {
			if _, err := h.conn(n3.w, nil).WriteAt(make([]byte, tFrag), 0); !errors.Is(err, remote.ErrFenced) {
				t.Errorf("%s accepted a write of the fenced slot: %v", h.name, err)
			}
		}
		for _, id := range []lockd.NodeID{"n1", "n2"} {
			if ws := c.nodes[id].gate.Windows(); len(ws) != 0 {
				t.Errorf("%s still holds windows %+v", id, ws)
			}
		}
	})
}

// The node resyncing a dead writer's slot dies mid-way; another finishes.
func TestResyncerCrashMidTakeover(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3", "n4", "n5")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		n3 := c.nodes["n3"]
		acked := map[int64][]byte{}
		for _, b := range []int64{0, 2 * 16, 7*16 + 1, 13 * 16} { // regions 0, 2, 7, 13
			p := pattern(3, b, 1)
			if err := n3.write(ctx, p, b*tBlock); err != nil {
				t.Fatal(err)
			}
			acked[b] = p
		}
		dirty := c.writtenUnion(n3.w.Slot)

		// The first survivor to resync anything gets stuck in its second
		// region (the first one done, not yet cleared).
		var mu sync.Mutex
		var stuck lockd.NodeID
		calls := 0
		release := make(chan struct{})
		for _, id := range []lockd.NodeID{"n1", "n2"} {
			c.nodes[id].local.resyncHook = func(off int64) error {
				mu.Lock()
				if stuck == "" {
					calls++
					if calls == 2 {
						stuck = id
					}
				}
				me := stuck == id
				mu.Unlock()
				if me {
					<-release
					return errors.New("the node crashed")
				}
				return nil
			}
		}
		c.crash("n3")
		c.waitFor("a resyncer stuck", func() bool { mu.Lock(); defer mu.Unlock(); return stuck != "" })
		mu.Lock()
		dead := stuck
		mu.Unlock()
		other := lockd.NodeID("n1")
		if dead == "n1" {
			other = "n2"
		}
		if m := c.writtenUnion(n3.w.Slot); len(m) == 0 {
			t.Fatal("marks cleared before the resync finished")
		}
		c.crash(dead)
		c.waitFor("the other survivor finished", func() bool {
			return c.slotTakenOver(n3.w.Slot, n3.w.Epoch) && c.slotTakenOver(c.nodes[dead].w.Slot, c.nodes[dead].w.Epoch)
		})
		close(release)
		got := c.nodes[other].local.resyncedRegions()
		for _, r := range dirty {
			if !slices.Contains(got, r) {
				t.Errorf("region %d of the dead writer was not resynced by %s (%v)", r, other, got)
			}
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent", bad)
		}
		c.checkBlocks(c.nodes[other], acked)
	})
}

// partition cuts minor off from every other node (locks and messages).
func (c *tcluster) partition(minor lockd.NodeID) {
	var major []lockd.NodeID
	for _, x := range c.ids {
		if x != minor && !c.nodes[x].down {
			major = append(major, x)
		}
	}
	c.lnet.Partition([]lockd.NodeID{minor}, major)
	c.mnet.Partition([]lockd.NodeID{minor}, major)
	c.nodes[minor].lk.SetMembers([]lockd.NodeID{minor})
	for _, x := range major {
		c.nodes[x].lk.SetMembers(major)
	}
}

// attempt is one write of a block: its version and whether it was
// acknowledged.
type attempt struct {
	version int
	acked   bool
}

func seeds(t *testing.T) int {
	if s := os.Getenv("COORD_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("COORD_SEEDS=%q: %v", s, err)
		}
		return n
	}
	return 6
}

// A writer cut off from the others by a partition (it still reaches the
// member hosts, the worst case): once the majority took its slot over,
// the hosts refuse its writes, its gate halts them, and no acknowledged
// write of any node is lost; every stripe is parity-consistent.
func TestPartitionedMinorityWriterFenced(t *testing.T) {
	for seed := range seeds(t) {
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			defer goleak.VerifyNone(t)
			synctest.Test(t, func(t *testing.T) { partitionRun(t, uint64(seed)) })
		})
	}
}

func partitionRun(t *testing.T, seed uint64) {
	c := newTCluster(t, "n1", "n2", "n3")
	c.join("n1", "n2", "n3")
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	const blocks = tArraySize / tBlock
	hist := make([]map[int64][]attempt, 3)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var refused atomic.Int64 // n3's writes that failed
	for i, id := range c.ids {
		hist[i] = map[int64][]attempt{}
		n := c.nodes[id]
		// Each node writes its own blocks (as a cluster file system would):
		// block b belongs to node b % 3.
		order := make([]int64, 200)
		pauses := make([]time.Duration, len(order))
		for k := range order {
			order[k] = int64(rng.IntN(blocks/3))*3 + int64(i)
			pauses[k] = time.Duration(1+rng.IntN(8)) * time.Millisecond
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k, b := range order {
				select {
				case <-stop:
					return
				default:
				}
				err := n.write(context.Background(), pattern(byte(i+1), b, k), b*tBlock)
				hist[i][b] = append(hist[i][b], attempt{version: k, acked: err == nil})
				if err != nil {
					if id != "n3" {
						t.Errorf("%s: write of block %d failed: %v", id, b, err)
					}
					refused.Add(1)
				}
				time.Sleep(pauses[k])
			}
		}()
	}
	time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
	n3 := c.nodes["n3"]
	c.partition("n3")
	c.waitFor("n3's slot taken over by the majority", func() bool { return c.slotTakenOver(n3.w.Slot, n3.w.Epoch) })
	// n3 is cut off: its writes fail from now on.
	if err := n3.write(context.Background(), pattern(9, 2, 0), 2*tBlock); err == nil {
		t.Error("the cut-off writer's write was acknowledged after its slot was taken over")
	}
	for _, h := range c.hosts {
		if _, err := h.conn(n3.w, nil).WriteAt(make([]byte, tFrag), 0); !errors.Is(err, remote.ErrFenced) {
			t.Errorf("%s accepted a write of the cut-off writer: %v", h.name, err)
		}
	}
	if st := n3.co.Status(); st.Halted == "" && !n3.fenced.Load() {
		t.Errorf("the cut-off writer is neither halted nor fenced: %+v", st)
	}
	time.Sleep(50 * time.Millisecond) // the majority goes on writing
	close(stop)
	wg.Wait()
	hist[2][2] = append(hist[2][2], attempt{version: -1}) // the refused write above
	c.waitFor("no takeover running", func() bool {
		return len(c.nodes["n1"].co.Status().Takeovers) == 0 && len(c.nodes["n2"].co.Status().Takeovers) == 0
	})

	if bad := parityMismatches(c.hosts); len(bad) != 0 {
		t.Errorf("blocks %v are parity-inconsistent", bad)
	}
	want := map[int64][]byte{}
	checked := 0
	for i := range hist {
		for b, as := range hist[i] {
			last := as[len(as)-1]
			if !last.acked {
				continue // a write that was not acknowledged may leave old, new or torn data
			}
			want[b] = pattern(byte(i+1), b, last.version)
			checked++
		}
	}
	for b := int64(0); b < blocks; b++ {
		if _, ok := want[b]; !ok && len(hist[b%3][b]) == 0 {
			want[b] = make([]byte, tBlock) // never written
		}
	}
	c.checkBlocks(c.nodes["n1"], want)

	// Without quorum, coordinated operations fail and say why.
	if _, err := n3.co.FailMember(context.Background(), 0, meta.UUID{1}, "seen by the cut-off node"); !errors.Is(err, lockd.ErrNoQuorum) {
		t.Errorf("metadata update without quorum: %v, want ErrNoQuorum", err)
	}
	// Healed, n3 learns that its slot was taken: its array stops for good.
	c.lnet.Heal()
	c.mnet.Heal()
	for _, id := range c.ids {
		c.nodes[id].lk.SetMembers(c.ids)
	}
	c.waitFor("n3 learns its slot is lost", func() bool { return n3.slotLost.Load() })
	if st := n3.co.Status(); !strings.Contains(st.Lost, "slot lost") || st.Halted == "" {
		t.Errorf("status of the node whose slot was taken: %+v", st)
	}
	if _, ok := n3.co.Writer(); ok {
		t.Error("Writer still reports a valid slot after it was lost")
	}
	if checked < 50 {
		t.Errorf("only %d blocks with acknowledged writes checked", checked)
	}
	t.Logf("seed %d: %d blocks checked, %d writes of the cut-off node refused", seed, checked, refused.Load())
}

// A writer that takes a slot its last holder left with marks resyncs them
// before it writes; a slot left clean costs nothing.
func TestJoinResyncsLeftoverMarks(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1")
		ctx := context.Background()
		n1 := c.nodes["n1"]
		if err := n1.write(ctx, pattern(1, 40, 1), 40*tBlock); err != nil { // region 2
			t.Fatal(err)
		}
		torn := n1.local.hosts[1].conn(n1.w, nil)
		if _, err := torn.WriteAt([]byte{0xff}, 11*16*tFrag); err != nil { // region 11, host 1 only
			t.Fatal(err)
		}
		if err := n1.co.Leave(ctx, false); err != nil { // an unclean stop: the marks stay
			t.Fatal(err)
		}
		c.join("n2") // takes the first free slot: n1's
		n2 := c.nodes["n2"]
		if n2.w.Slot != n1.w.Slot {
			t.Fatalf("n2 took slot %d, want the free slot %d", n2.w.Slot, n1.w.Slot)
		}
		if got := n2.local.resyncedRegions(); !slices.Equal(got, []uint64{2, 11}) {
			t.Errorf("n2 resynced regions %v at start, want [2 11]", got)
		}
		if m := c.writtenUnion(n1.w.Slot); len(m) != 0 {
			t.Errorf("marks %v left after the start", m)
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent", bad)
		}
		c.checkBlocks(n2, map[int64][]byte{40: pattern(1, 40, 1)})

		// n2 leaves clean; n3 takes the slot without fencing or resyncing.
		fenceBefore := c.hosts[0].fenceOf(n2.w.Slot)
		if err := n2.co.Leave(ctx, true); err != nil {
			t.Fatal(err)
		}
		c.join("n3")
		n3 := c.nodes["n3"]
		if n3.w.Slot != n2.w.Slot || len(n3.local.resyncedRegions()) != 0 || c.hosts[0].fenceOf(n2.w.Slot) != fenceBefore {
			t.Errorf("n3 on a clean slot: slot %d, resynced %v, fence %d (was %d)", n3.w.Slot, n3.local.resyncedRegions(), c.hosts[0].fenceOf(n2.w.Slot), fenceBefore)
		}
	})
}

// Two writers die; two survivors take their slots over at the same time
// when their dirty regions lie in different resync groups (unlike
// md-cluster's single resyncer), one after the other when they share a
// group (resync/K).
func TestParallelTakeovers(t *testing.T) {
	for _, tc := range []struct {
		groupRegions int
		parallel     bool
	}{{4, true}, {64, false}} {
		t.Run(fmt.Sprintf("group%d", tc.groupRegions), func(t *testing.T) { parallelRun(t, tc.groupRegions, tc.parallel) })
	}
}

func parallelRun(t *testing.T, groupRegions int, parallel bool) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTClusterWith(t, func(cfg *Config) { cfg.GroupRegions = groupRegions }, "n1", "n2", "n3", "n4", "n5")
		c.join("n1", "n2", "n4", "n5")
		ctx := context.Background()
		acked := map[int64][]byte{}
		for id, blocks := range map[lockd.NodeID][]int64{"n4": {0, 16 + 1}, "n5": {8 * 16, 9*16 + 4}} { // groups 0 and 2
			for _, b := range blocks {
				p := pattern(byte(id[1]), b, 1)
				if err := c.nodes[id].write(ctx, p, b*tBlock); err != nil {
					t.Fatal(err)
				}
				acked[b] = p
			}
		}
		var mu sync.Mutex
		inside := map[lockd.NodeID]bool{} // resyncing right now
		both := make(chan struct{})
		for _, id := range []lockd.NodeID{"n1", "n2"} {
			c.nodes[id].local.resyncHook = func(int64) error {
				mu.Lock()
				inside[id] = true
				if len(inside) == 2 {
					select {
					case <-both:
					default:
						close(both)
					}
				}
				mu.Unlock()
				select {
				case <-both:
				case <-time.After(2 * time.Second): // no second resyncer came
				}
				mu.Lock()
				delete(inside, id)
				mu.Unlock()
				return nil
			}
		}
		n4, n5 := c.nodes["n4"], c.nodes["n5"]
		c.crash("n4")
		c.crash("n5")
		c.waitFor("both slots taken over", func() bool {
			return c.slotTakenOver(n4.w.Slot, n4.w.Epoch) && c.slotTakenOver(n5.w.Slot, n5.w.Epoch)
		})
		ran := false
		select {
		case <-both:
			ran = true
		default:
		}
		if ran != parallel {
			t.Errorf("two takeovers resynced at the same time: %v, want %v", ran, parallel)
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent", bad)
		}
		c.checkBlocks(c.nodes["n1"], acked)
	})
}

func TestJoinWithoutFreeSlotTimesOut(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTClusterWith(t, func(cfg *Config) { cfg.Slots = 2 }, "n1", "n2", "n3")
		c.join("n1", "n2")
		start := time.Now()
		_, err := c.nodes["n3"].co.Join(context.Background())
		if !errors.Is(err, ErrNoSlot) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("join with every slot held: %v, want ErrNoSlot after the timeout", err)
		}
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("join gave up after %v, want the 5 s timeout", d)
		}
		if st := c.nodes["n3"].co.Status(); st.Slot != -1 {
			t.Errorf("status after a failed join: slot %d", st.Slot)
		}
	})
}

func TestRouterUnservedArray(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		net := cluster.NewMemNet(quiet)
		defer net.Close()
		r := NewRouter(net.Messenger("n1"))
		var got []byte
		r.Unserved = func(b []byte) error { got = b; return nil }
		ctx := context.Background()
		sbBody, _ := EncodeSuperblock(testSuperblock())
		for _, m := range []cluster.Message{
			{Type: TypeMetadataUpdated, Array: "x", Body: sbBody},
			{Type: TypeResyncing, Array: "x", Body: EncodeWindow(Window{Lo: 1, Hi: 2})},
			{Type: TypeNewDisk, Array: "x", Body: []byte("h:1:/d")},
			{Type: TypeWindows, Array: "x"},
		} {
			if _, err := r.handle(ctx, "n2", m); err != nil {
				t.Errorf("%s for an array not served here: %v", m.Type, err)
			}
		}
		if !bytes.Equal(got, sbBody) {
			t.Error("the superblock of an unserved array did not reach Unserved")
		}
	})
}

// A member failure seen by one writer halts its writes, and holds the
// acknowledgement of those in flight, until every live writer has recorded
// it; a refusal keeps them halted and the loop retries. A held write is
// acknowledged once the failure is recorded, and fails if that takes
// longer than the gate's timeout.
func TestMemberFailedHaltsUntilRecorded(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		n1 := c.nodes["n1"]
		c.nodes["n3"].local.mu.Lock()
		c.nodes["n3"].local.refuse = errors.New("pebble: disk full")
		c.nodes["n3"].local.mu.Unlock()

		// Two writes admitted before the failure.
		var inFlight [2]uint32
		for i := range inFlight {
			tk, err := n1.gate.Enter(ctx, int64(i)*tBlock, tBlock)
			if err != nil {
				t.Fatal(err)
			}
			inFlight[i] = tk
		}
		if err := n1.co.MemberFailed(ctx, 1, errors.New("EIO")); err == nil || !strings.Contains(err.Error(), "n3") {
			t.Fatalf("member failure refused by n3: %v", err)
		}
		// The first leaves now: held, then failed when the refusal
		// outlasts the gate's timeout, as a new write is.
		left := make(chan error, 1)
		go func() { left <- n1.gate.Leave(inFlight[0]) }()
		if err := n1.write(ctx, pattern(1, 3, 1), 3*tBlock); !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), "member 1 failed") {
			t.Errorf("write while the failure is unrecorded: %v", err)
		}
		if err := <-left; !errors.Is(err, ErrHalted) {
			t.Errorf("a write in flight while the failure stayed unrecorded past the timeout left with %v, want ErrHalted", err)
		}
		// The second leaves: held until the failure is recorded, then
		// acknowledged.
		go func() { left <- n1.gate.Leave(inFlight[1]) }()
		synctest.Wait()
		select {
		case err := <-left:
			t.Fatalf("a write in flight during an unrecorded member failure left at once with %v, want it held", err)
		default:
		}
		c.nodes["n3"].local.mu.Lock()
		c.nodes["n3"].local.refuse = nil
		c.nodes["n3"].local.mu.Unlock()
		c.waitFor("the failure recorded everywhere", func() bool {
			for _, id := range c.ids {
				if c.nodes[id].local.Superblock().Members[1].State != meta.StateFailed {
					return false
				}
			}
			return n1.gate.Halted() == nil
		})
		if err := <-left; err != nil {
			t.Errorf("a write held during the member failure left with %v after it was recorded, want nil", err)
		}
		if err := n1.write(ctx, pattern(1, 3, 2), 3*tBlock); err != nil {
			t.Errorf("write after the failure was recorded: %v", err)
		}
		// Recorded at once: no halt remains.
		if err := n1.co.MemberFailed(ctx, 2, errors.New("EIO")); err != nil {
			t.Fatal(err)
		}
		if h := n1.gate.Halted(); h != nil {
			t.Errorf("halted after a recorded failure: %v", h)
		}
	})
}

// A member failure recorded late (the coordinator loop's retry that
// copied the pending failures before the IO path recorded them) does not
// fail the device that took the role since, and lifts its halt.
func TestLateFailureLeavesNewDevice(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		n1 := c.nodes["n1"]
		if err := n1.co.MemberFailed(ctx, 0, errors.New("EIO")); err != nil {
			t.Fatal(err)
		}
		if _, err := n1.co.AddMember(ctx, "h2:10810:/spare", func(sb *meta.Array) error {
			m := &sb.Members[0]
			m.State, m.UUID = meta.StateRecovering, meta.UUID{9}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// The retry runs now, with its copy of the failure of the device
		// that was in role 0.
		n1.co.MemberFailing(0, errors.New("EIO"))
		n1.co.mu.Lock()
		n1.co.pendingFail[0] = pendingFailure{member: meta.UUID{1}, reason: "EIO"}
		n1.co.mu.Unlock()
		if err := n1.co.recordFailures(ctx); err != nil {
			t.Fatal(err)
		}
		for _, id := range c.ids {
			if m := c.nodes[id].local.Superblock().Members[0]; m.UUID != (meta.UUID{9}) || m.State == meta.StateFailed {
				t.Errorf("%s: role 0 holds %v %s after a late recording of the old device's failure; want the new device, not failed", id, m.UUID, m.State)
			}
		}
		if h := n1.gate.Halted(); h != nil {
			t.Errorf("halted after the late recording: %v", h)
		}
		c.waitFor("the new device rebuilt everywhere", func() bool {
			return c.everyone(func(n *tnode) bool { return n.local.Superblock().Members[0].State == meta.StateActive })
		})
	})
}

// The windows of a resyncer that dies are dropped when the membership
// drops it: the writes they held go on.
func TestDeadResyncerWindowsDropped(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		if err := c.nodes["n3"].co.announce(ctx, Window{Owner: "n3", Slot: 7, Lo: 0, Hi: tRegion}); err != nil {
			t.Fatal(err)
		}
		var done atomic.Bool
		go func() {
			if err := c.nodes["n1"].write(ctx, pattern(1, 0, 1), 0); err != nil {
				t.Error(err)
			}
			done.Store(true)
		}()
		synctest.Wait()
		if done.Load() {
			t.Fatal("a write went through another node's window")
		}
		c.crash("n3")
		c.waitFor("the held write to go on", done.Load)
		if ws := c.nodes["n1"].gate.Windows(); len(ws) != 0 {
			t.Errorf("windows left: %+v; status %+v; live %v", ws, c.nodes["n1"].co.Status(), c.nodes["n1"].msg.Live())
		}
	})
}
