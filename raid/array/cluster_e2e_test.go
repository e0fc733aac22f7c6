package array

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/coord"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/memnet"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// clusterWriter is one node serving the array: lockd, a Courier, the
// coordinator and the array itself.
type clusterWriter struct {
	id    lockd.NodeID
	lk    *lockd.Node
	co    *coord.Coordinator
	local *coord.ArrayLocal
	gate  *coord.WriteGate
	a     *Array
	w     raid.Writer
}

// TestClusterTakeoverOverAgents: two writers serve a raid35 array whose
// members live on an agent; one is killed mid-life, leaving marks and a
// stripe with stale parity in its regions. The survivor fences the dead
// writer's slot at the agent, reads its marks over the member export,
// resyncs exactly those regions through its own array, and clears them:
// the array checks clean and every acknowledged write reads back.
func TestClusterTakeoverOverAgents(t *testing.T) {
	dir := t.TempDir()
	ah := startAgentHost(t, dir, 3, memberSize)
	quiet := slog.New(slog.DiscardHandler)
	stateDirs := []string{filepath.Join(dir, "w1"), filepath.Join(dir, "w2")}
	var sb *meta.Array
	err := meta.View(stateDirs[0], func(s *meta.Store) error {
		var err error
		sb, err = raid.Create(s, raid.CreateOptions{Name: "a", Level: raid.LevelRaid35, Members: ah.Members(), RegionSize: 128 << 10, AssumeClean: true})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := meta.View(stateDirs[1], func(s *meta.Store) error { return s.Put(sb) }); err != nil {
		t.Fatal(err)
	}

	ids := []lockd.NodeID{"w1", "w2", "w3"} // w3 only votes: the survivor keeps a majority
	lnet := memnet.New(1)
	mnet := cluster.NewMemNet(quiet)
	defer mnet.Close()
	defer lnet.Stop()
	lks := map[lockd.NodeID]*lockd.Node{}
	routers := map[lockd.NodeID]*coord.Router{}
	for i, id := range ids {
		lk, err := lockd.StartNode(lockd.NodeConfig{Config: lockd.Config{ID: id, Incarnation: uint64(i + 1), Voters: ids},
			Transport: lnet.Endpoint(id), TickInterval: 5 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer lk.Close()
		lks[id] = lk
		routers[id] = coord.NewRouter(mnet.Messenger(id)) // w3 answers as a node that does not serve the array
	}
	lnet.Start(time.Millisecond)
	for _, lk := range lks {
		lk.SetMembers(ids)
	}
	waitFor(t, "lockd quorum", func() bool { return lks["w1"].HasQuorum() && lks["w2"].HasQuorum() && lks["w3"].HasQuorum() })

	ctx := context.Background()
	writers := map[lockd.NodeID]*clusterWriter{}
	for i, id := range ids[:2] {
		cw := &clusterWriter{id: id, lk: lks[id], gate: coord.NewWriteGate(5 * time.Second)}
		cw.local = coord.NewArrayLocal(stateDirs[i], *sb, remote.Config{Logger: quiet})
		cw.co, err = coord.New(coord.Config{Node: id, Lockd: cw.lk, Router: routers[id], Local: cw.local,
			Gate: cw.gate, Timeout: 10 * time.Second, Poll: 20 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer cw.co.Close()
		if cw.w, err = cw.co.Join(ctx); err != nil {
			t.Fatal(err)
		}
		cw.a, err = Open(Options{StateDir: stateDirs[i], Name: "a", Throttle: unthrottled, ClearDelay: time.Hour,
			Logger: quiet, Writer: cw.w, Remote: remote.Config{Logger: quiet}})
		if err != nil {
			t.Fatal(err)
		}
		if err := cw.local.Attach(cw.a); err != nil {
			t.Fatal(err)
		}
		if err := cw.co.Start(ctx); err != nil {
			t.Fatal(err)
		}
		waitIdle(t, cw.a)
		if cw.a.sync.(*raid.Raid35).RedundancyTrusted() {
			t.Fatalf("writer %s (slot %d, epoch %d) trusts parity while another writes the members", id, cw.w.Slot, cw.w.Epoch)
		}
		writers[id] = cw
	}
	w1, w2 := writers["w1"], writers["w2"]
	defer w1.a.Close()
	if w1.w.Slot == w2.w.Slot {
		t.Fatalf("both writers on slot %d", w1.w.Slot)
	}

	// w2 writes regions 2 and 5; w1 writes region 9.
	acked := map[int64][]byte{}
	for _, x := range []struct {
		cw  *clusterWriter
		off int64
		b   byte
	}{{w2, 2 * 128 << 10, 0x21}, {w2, 5*128<<10 + 8192, 0x25}, {w1, 9 * 128 << 10, 0x19}} {
		p := bytes.Repeat([]byte{x.b}, 64<<10)
		if _, err := x.cw.a.Device().WriteAt(p, x.off); err != nil {
			t.Fatal(err)
		}
		acked[x.off] = p
	}
	// w2 is killed; a stripe of region 5 is left with stale parity (as if
	// the kill tore a write).
	w2.a.crash()
	w2.co.Close()
	lnet.Crash("w2")
	mnet.Down("w2")
	w2.lk.Close()
	for _, id := range []lockd.NodeID{"w1", "w3"} {
		lks[id].SetMembers([]lockd.NodeID{"w1", "w3"})
	}
	stripe := int64(5*128<<10+8192) / 4096
	pm, poff := redundancyOf(t, *sb, stripe)
	corruptFile(t, ah.Disks[pm].Path(), meta.DataOffset+poff, 64)

	dirtyOfW2 := func() int64 {
		var n int64
		for i := range ah.Disks {
			n += ah.markedSlot(t, i, w2.w.Slot)
		}
		return n
	}
	if dirtyOfW2() == 0 {
		t.Fatal("the killed writer left no marks at the agent")
	}
	waitFor(t, "w1 to take w2's slot over", func() bool {
		return dirtyOfW2() == 0 && ah.Host.MinEpoch(sb.UUID, w2.w.Slot) > w2.w.Epoch
	})
	if n := check(t, w1.a, false); n != 0 {
		t.Errorf("%d mismatches after the takeover", n)
	}
	buf := make([]byte, 64<<10)
	for off, p := range acked {
		if _, err := w1.a.Device().ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, p) {
			t.Errorf("acknowledged write at %d lost", off)
		}
	}
}

// markedSlot returns how many bytes of disk i are marked for slot.
func (ah *agentHost) markedSlot(t *testing.T, i int, slot uint32) int64 {
	t.Helper()
	d := ah.Disks[i]
	ext, err := d.Dirty(slot, 0, d.Device().Size(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ext {
		if e.Flags&nbd.StateDirty != 0 {
			n += e.Length
		}
	}
	return n
}

// corruptFile flips n bytes of a file at off.
func corruptFile(t *testing.T, path string, off int64, n int) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	b := make([]byte, n)
	if _, err := fh.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0x5a
	}
	if _, err := fh.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
