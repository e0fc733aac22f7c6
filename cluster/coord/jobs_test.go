package coord

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/meta"
)

func TestJobsOf(t *testing.T) {
	sb := *testSuperblock()
	if got := jobsOf(sb); len(got) != 0 {
		t.Fatalf("clean array: jobs %+v", got)
	}
	sb.InitialSync, sb.SyncedTo = true, 128<<10
	sb.Members[1].State, sb.Members[1].Rebuilt, sb.Members[1].DirtyOnly = meta.StateRecovering, 64<<10, true
	sb.Members[2].State = meta.StateFailed
	want := []job{
		{Name: "sync", Role: -1, From: 128 << 10},
		{Name: "recover/1", Role: 1, Member: sb.Members[1].UUID, From: 64 << 10, DirtyOnly: true},
	}
	if got := jobsOf(sb); !slices.Equal(got, want) {
		t.Fatalf("jobs %+v, want %+v", got, want)
	}
	for _, j := range want {
		if w := (Window{Slot: j.slot()}); w.Job() != j.Name {
			t.Errorf("window of %s names job %q", j.Name, w.Job())
		}
	}
	if (Window{Slot: meta.MaxSlots - 1}).Job() != "" {
		t.Error("a writer slot's window names a job")
	}
}

func TestJobFinishAndCheckpointRefuseAnotherDevice(t *testing.T) {
	sb := *testSuperblock()
	sb.Members[2].State = meta.StateRecovering
	j := jobsOf(sb)[0]
	newer := sb
	newer.Members = slices.Clone(sb.Members)
	newer.Members[2].UUID = meta.UUID{9}
	if err := j.finish(&newer); err == nil {
		t.Fatal("a rebuild finished a newer device of its role")
	}
	if err := j.finish(&sb); err != nil || sb.Members[2].State != meta.StateActive || sb.Members[2].Rebuilt != 0 {
		t.Fatalf("finish: %v, member %+v", err, sb.Members[2])
	}
}

// scramble puts random bytes on every host: no block's parity holds (a
// create on disks that held data).
func (c *tcluster) scramble(seed uint64, hosts ...int) {
	r := rand.New(rand.NewPCG(seed, 1))
	for _, i := range hosts {
		h := c.hosts[i]
		h.mu.Lock()
		for k := range h.data {
			h.data[k] = byte(r.Uint32())
		}
		h.mu.Unlock()
	}
}

// initialSyncDue puts random bytes on every host (no block's parity holds)
// and marks the initial sync due on every node, as a create over disks
// that held data does.
func (c *tcluster) initialSyncDue(seed uint64) {
	c.scramble(seed, 0, 1, 2)
	for _, n := range c.nodes {
		n.local.sb.InitialSync = true
	}
}

// held returns a channel a test's hook waits on and the function that
// closes it; it is also closed at cleanup, before the cluster's (which
// waits for the goroutines the hook holds).
func held(t *testing.T) (ch chan struct{}, release func()) {
	ch = make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return ch, release
}

// writeAcked writes block b as node who (version v) and records it in
// acked; the write must succeed.
func (c *tcluster) writeAcked(ctx context.Context, acked map[int64][]byte, who lockd.NodeID, b int64, v int) {
	c.t.Helper()
	p := pattern(byte(who[1]), b, v)
	if err := c.nodes[who].write(ctx, p, b*tBlock); err != nil {
		c.t.Fatal(err)
	}
	acked[b] = p
}

// everyone reports whether cond holds for every node that is up.
func (c *tcluster) everyone(cond func(n *tnode) bool) bool {
	for _, n := range c.nodes {
		if !n.down && !cond(n) {
			return false
		}
	}
	return true
}

// The initial sync is one job for all writers: exactly one runs it, the
// others show it REMOTE and keep writing (their writes wait only inside
// its window), and at the end parity holds everywhere and every node's
// superblock says it is done.
func TestInitialSyncRunsOnOneWriter(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.initialSyncDue(1)
		var mu sync.Mutex
		var runner lockd.NodeID
		gate, open := held(t)
		for _, id := range c.ids {
			c.nodes[id].local.resyncHook = func(off int64) error {
				mu.Lock()
				if runner == "" {
					runner = id
				}
				mu.Unlock()
				if off == 5*tRegion {
					<-gate // hold the job in region 5 while the others look
				}
				return nil
			}
		}
		c.join("n1", "n2", "n3")
		c.waitFor("the job in region 5", func() bool {
			for _, n := range c.nodes {
				if st := n.co.Status(); len(st.Jobs) == 1 && st.Jobs[0].State == "running" && st.Jobs[0].Done == 5*tRegion {
					return true
				}
			}
			return false
		})
		mu.Lock()
		r := runner
		mu.Unlock()
		for _, id := range c.ids {
			st := c.nodes[id].co.Status()
			if len(st.Jobs) != 1 {
				t.Fatalf("%s: jobs %+v", id, st.Jobs)
			}
			want := "remote"
			if id == r {
				want = "running"
			}
			if j := st.Jobs[0]; j.Name != "sync" || j.State != want || j.Runner != r {
				t.Errorf("%s: job %+v, want sync %s by %s", id, j, want, r)
			}
		}
		// Writes of the other writers, outside and inside the window.
		ctx := context.Background()
		acked := map[int64][]byte{}
		for _, id := range c.ids {
			if id == r {
				continue
			}
			for _, b := range []int64{1, 9 * 16} { // regions 0 and 9
				p := pattern(byte(id[1]), b, 1)
				if err := c.nodes[id].write(ctx, p, b*tBlock); err != nil {
					t.Fatal(err)
				}
				acked[b] = p
			}
			inside := make(chan error, 1)
			b := int64(5*16 + 3 + len(acked)) // its own block in region 5
			p := pattern(byte(id[1]), b, 2)
			go func() { inside <- c.nodes[id].write(ctx, p, b*tBlock) }()
			synctest.Wait()
			select {
			case err := <-inside:
				t.Fatalf("%s wrote into the sync's window: %v", id, err)
			default:
			}
			acked[b] = p
			defer func() {
				if err := <-inside; err != nil {
					t.Errorf("%s: write after the window moved: %v", id, err)
				}
			}()
		}
		open()
		c.waitFor("sync done everywhere", func() bool {
			return c.everyone(func(n *tnode) bool { return !n.local.Superblock().InitialSync && len(n.co.Status().Jobs) == 0 })
		})
		synctest.Wait()
		for _, id := range c.ids {
			if got := c.nodes[id].local.resyncedRegions(); id != r && len(got) != 0 {
				t.Errorf("%s also resynced regions %v", id, got)
			}
		}
		if got := c.nodes[r].local.resyncedRegions(); len(got) != tRegions {
			t.Errorf("runner resynced %d regions, want %d", len(got), tRegions)
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent after the sync", bad)
		}
		c.checkBlocks(c.nodes[r], acked)
	})
}

// The runner of a job dies: another writer takes the job over from the
// last checkpoint (md's switch-recovery), not from the start.
func TestJobTakenOverFromCheckpoint(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTClusterWith(t, func(cfg *Config) { cfg.CheckpointEvery = time.Nanosecond }, "n1", "n2", "n3")
		c.initialSyncDue(2)
		var mu sync.Mutex
		var first lockd.NodeID
		release, free := held(t)
		for _, id := range c.ids {
			c.nodes[id].local.resyncHook = func(off int64) error {
				mu.Lock()
				if first == "" {
					first = id
				}
				me := first == id
				mu.Unlock()
				time.Sleep(time.Millisecond) // fake time passes: every region checkpoints
				if me && off == 9*tRegion {
					<-release
					return errors.New("the node crashed")
				}
				return nil
			}
		}
		c.join("n1", "n2", "n3")
		c.waitFor("a checkpoint past region 8", func() bool {
			return c.everyone(func(n *tnode) bool { return n.local.Superblock().SyncedTo == 9*tRegion })
		})
		mu.Lock()
		dead := first
		mu.Unlock()
		// The lazy clear of the runner would have cleared the marks of
		// the regions it finished; then its slot's takeover resyncs
		// nothing and what the survivors resync is the job's.
		for _, h := range c.hosts {
			w := c.nodes[dead].w
			h.Clear(context.Background(), w.Slot, w.Epoch, h.marked(w.Slot))
		}
		c.crash(dead)
		c.waitFor("sync done on the survivors", func() bool {
			return c.everyone(func(n *tnode) bool { return !n.local.Superblock().InitialSync })
		})
		free()
		var second []uint64
		for _, id := range c.ids {
			if id != dead {
				second = append(second, c.nodes[id].local.resyncedRegions()...)
			}
		}
		slices.Sort(second)
		for r := range uint64(tRegions) {
			if want := r >= 9; slices.Contains(second, r) != want {
				t.Errorf("region %d resynced by a survivor: %v (want %v; survivors did %v)", r, !want, want, second)
			}
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent after the sync", bad)
		}
	})
}

// failAndAdd fails member role cluster-wide, then puts a device into it
// (a new one: a new UUID; the old one back: dirtyOnly, same UUID), as
// add-device does, from node n.
func (c *tcluster) failAndAdd(n *tnode, role int, dirtyOnly bool, between func()) {
	c.t.Helper()
	ctx := context.Background()
	if _, err := n.co.FailMember(ctx, role, n.local.Superblock().Members[role].UUID, "test"); err != nil {
		c.t.Fatal(err)
	}
	if between != nil {
		between()
	}
	if _, err := n.co.AddMember(ctx, "h2:10810:/new", func(sb *meta.Array) error {
		m := &sb.Members[role]
		m.State, m.DirtyOnly = meta.StateRecovering, dirtyOnly
		if !dirtyOnly {
			m.UUID = meta.UUID{byte(role), 0xad, 0xd}
		}
		return nil
	}); err != nil {
		c.t.Fatal(err)
	}
}

// A new device in a role is written by every writer from the add on and
// rebuilt by one of them; afterwards the array is whole again.
func TestRebuildJobAfterAdd(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		acked := map[int64][]byte{}
		write := func(who lockd.NodeID, b int64, v int) { c.writeAcked(ctx, acked, who, b, v) }
		for b := int64(0); b < tArraySize/tBlock; b += 7 {
			write("n1", b, 1)
		}
		c.failAndAdd(c.nodes["n2"], 2, false, func() { c.scramble(3, 2) })
		for b := int64(3); b < tArraySize/tBlock; b += 11 {
			write("n3", b, 2) // during the rebuild: they must reach the new device too
		}
		c.waitFor("member 2 active everywhere", func() bool {
			return c.everyone(func(n *tnode) bool { return n.local.Superblock().Members[2].State == meta.StateActive })
		})
		synctest.Wait()
		total := 0
		for _, n := range c.nodes {
			total += len(n.local.recoveredRegions())
		}
		if total != tRegions {
			t.Errorf("%d regions rebuilt over all nodes, want %d (each once)", total, tRegions)
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent after the rebuild", bad)
		}
		// Member 2 holds its part: read every block with member 0 failed.
		n1 := c.nodes["n1"]
		n1.eng.Fail(0, errors.New("test"))
		c.checkBlocks(n1, acked)
	})
}

// A re-add of a role's previous device rebuilds only the regions some
// writer marked while it was away, and those marks survive a takeover
// that happens meanwhile (a degraded array keeps its marks).
func TestReAddRebuildsOnlyDirtyRegions(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3", "n4")
		c.join("n1", "n2", "n3")
		ctx := context.Background()
		acked := map[int64][]byte{}
		write := func(who lockd.NodeID, b int64, v int) { c.writeAcked(ctx, acked, who, b, v) }
		write("n1", 0, 1)
		// Clear what the writes before the failure marked, as the lazy
		// clear would have.
		for _, h := range c.hosts {
			for _, n := range c.nodes {
				h.Clear(ctx, n.w.Slot, n.w.Epoch, h.marked(n.w.Slot))
			}
		}
		ids := []lockd.NodeID{"n1", "n3"}
		c.failAndAdd(c.nodes["n2"], 2, true, func() {
			write("n1", 3*16+1, 2)  // region 3
			write("n3", 11*16+5, 2) // region 11
			c.crash("n3")           // its slot is taken over while degraded
			n3 := c.nodes["n3"].w
			c.waitFor("n3's slot taken over", func() bool {
				if c.hosts[0].fenceOf(n3.Slot) <= n3.Epoch {
					return false
				}
				st1, st2 := c.nodes["n1"].co.Status(), c.nodes["n2"].co.Status()
				return len(st1.Takeovers)+len(st2.Takeovers) == 0 && st1.LastError == "" && st2.LastError == ""
			})
			time.Sleep(3 * time.Second) // several scans: the takeover stays done
			for _, id := range []lockd.NodeID{"n1", "n2"} {
				if st := c.nodes[id].co.Status(); st.LastError != "" || len(st.Takeovers) != 0 {
					t.Errorf("%s: the takeover of a degraded array did not complete: %+v", id, st)
				}
			}
			if m := c.writtenUnion(n3.Slot); !slices.Contains(m, 11) {
				t.Errorf("the takeover of n3's slot dropped its marks while degraded: %v", m)
			}
			ids = []lockd.NodeID{"n1"}
		})
		c.waitFor("member 2 active", func() bool {
			return c.everyone(func(n *tnode) bool { return n.local.Superblock().Members[2].State == meta.StateActive })
		})
		var got []uint64
		for _, n := range c.nodes {
			got = append(got, n.local.recoveredRegions()...)
		}
		// The array is whole again: the marks the degraded takeover kept
		// under n3's free slot are swept.
		c.waitFor("n3's slot swept", func() bool { return len(c.writtenUnion(c.nodes["n3"].w.Slot)) == 0 })
		slices.Sort(got)
		if want := []uint64{3, 11}; !slices.Equal(got, want) {
			t.Errorf("re-add rebuilt regions %v, want %v", got, want)
		}
		if bad := parityMismatches(c.hosts); len(bad) != 0 {
			t.Errorf("blocks %v inconsistent after the re-add", bad)
		}
		n1 := c.nodes[ids[0]]
		n1.eng.Fail(0, errors.New("test"))
		c.checkBlocks(n1, acked)
	})
}

// A scrub window holds every writer's writes into it (the scrubbing node's
// own included) until it moves or ends, and names itself "check".
func TestScrubWindow(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := newTCluster(t, "n1", "n2", "n3")
		c.join("n1", "n2")
		ctx := context.Background()
		n1, n2 := c.nodes["n1"], c.nodes["n2"]
		if err := n1.co.ScrubWindow(ctx, 0, tRegion); err != nil {
			t.Fatal(err)
		}
		done := make(chan lockd.NodeID, 2)
		for _, n := range []*tnode{n1, n2} {
			go func() {
				if err := n.write(ctx, pattern(1, 3, 1), 3*tBlock); err != nil {
					t.Error(err)
				}
				done <- n.id
			}()
		}
		synctest.Wait()
		if len(done) != 0 {
			t.Fatal("a write went into a scrub window")
		}
		if ws := n2.co.Status().Windows; len(ws) != 1 || ws[0].Job() != "check" || ws[0].Owner != "n1" {
			t.Fatalf("n2 sees windows %+v", ws)
		}
		if err := n1.co.ScrubWindow(ctx, tRegion, 2*tRegion); err != nil { // moves on
			t.Fatal(err)
		}
		synctest.Wait()
		if len(done) != 2 {
			t.Fatalf("%d writes done after the window moved, want 2", len(done))
		}
		n1.co.EndScrubWindow()
		synctest.Wait()
		if ws := n2.co.Status().Windows; len(ws) != 0 {
			t.Fatalf("windows left after the scrub: %+v", ws)
		}
	})
}
