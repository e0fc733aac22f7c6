package serve

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/blockdev/member"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/coord"
	"github.com/ddraid/ddraid/internal/nbdtest"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/memnet"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

var quiet = slog.New(slog.DiscardHandler)

func TestMain(m *testing.M) {
	// pebble leaves a disk-health ticker behind when an Open retries on a
	// store another Open of this process holds (see raid/array's TestMain).
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/cockroachdb/pebble/v2/vfs.(*diskHealthCheckingFS).startTickerLocked.func1"))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testCluster is three lockd voters over memnet and cluster.MemNet; n1
// and n2 serve one raid35 array over an in-process agent's disks.
type testCluster struct {
	host   *member.Host
	sb     *meta.Array
	lnet   *memnet.Network
	mnet   *cluster.MemNet
	lks    map[lockd.NodeID]*lockd.Node
	ids    []lockd.NodeID
	served []*Running
}

func newTestCluster(t *testing.T, timeout time.Duration) *testCluster {
	t.Helper()
	dir := t.TempDir()
	c := &testCluster{ids: []lockd.NodeID{"n1", "n2", "n3"}, lks: map[lockd.NodeID]*lockd.Node{}}
	var members []string
	ag := nbdtest.StartAgent(t, dir, 3, 8<<20)
	c.host, members = ag.Host, ag.Members()
	stateDirs := []string{filepath.Join(dir, "n1"), filepath.Join(dir, "n2")}
	if err := meta.View(stateDirs[0], func(s *meta.Store) error {
		var err error
		c.sb, err = raid.Create(s, raid.CreateOptions{Name: "a", Level: raid.LevelRaid35, Members: members, RegionSize: 128 << 10, AssumeClean: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := meta.View(stateDirs[1], func(s *meta.Store) error { return s.Put(c.sb) }); err != nil {
		t.Fatal(err)
	}
	c.lnet = memnet.New(1)
	c.mnet = cluster.NewMemNet(quiet)
	routers := map[lockd.NodeID]*coord.Router{}
	for i, id := range c.ids {
		lk, err := lockd.StartNode(lockd.NodeConfig{Config: lockd.Config{ID: id, Incarnation: uint64(i + 1), Voters: c.ids},
			Transport: c.lnet.Endpoint(id), TickInterval: 5 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		c.lks[id] = lk
		routers[id] = coord.NewRouter(c.mnet.Messenger(id))
	}
	t.Cleanup(func() {
		for _, s := range c.served {
			s.Close(context.Background())
		}
		for _, lk := range c.lks {
			lk.Close()
		}
		c.lnet.Stop()
		c.mnet.Close()
	})
	c.lnet.Start(time.Millisecond)
	for _, lk := range c.lks {
		lk.SetMembers(c.ids)
	}
	waitFor(t, "lockd quorum", func() bool { return c.lks["n1"].HasQuorum() && c.lks["n2"].HasQuorum() && c.lks["n3"].HasQuorum() })
	for i, id := range c.ids[:2] {
		s, err := Array(context.Background(), ArrayConfig{Node: id, Lockd: c.lks[id], Router: routers[id], Timeout: timeout, Poll: 20 * time.Millisecond, Logger: quiet,
			Array: array.Options{StateDir: stateDirs[i], Name: "a", Throttle: resync.Throttle{Min: 1 << 40}, ClearDelay: time.Hour,
				Logger: quiet, Remote: remote.Config{Logger: quiet}}})
		if err != nil {
			t.Fatal(err)
		}
		c.served = append(c.served, s)
	}
	return c
}

// Two nodes serve one raid35 array over an agent's disks. A member failed
// by the operator on one is recorded by both before either goes on, with
// one event counter; both keep writing degraded.
func TestTwoWritersAndAFailedMember(t *testing.T) {
	c := newTestCluster(t, 10*time.Second)
	ctx := context.Background()
	sb, served := c.sb, c.served
	s1, s2 := served[0], served[1]
	w1, _ := s1.Coordinator.Writer()
	w2, _ := s2.Coordinator.Writer()
	if w1.Slot == w2.Slot {
		t.Fatalf("both writers on slot %d", w1.Slot)
	}
	data := bytes.Repeat([]byte{0x77}, 128<<10)
	for i, s := range served {
		if _, err := s.Array.Device().WriteAt(data, int64(i)*(1<<20)); err != nil {
			t.Fatal(err)
		}
	}

	if err := s1.Array.Fail("1", false); err != nil {
		t.Fatal(err)
	}
	sb1, sb2 := s1.Array.Superblock(), s2.Array.Superblock()
	if sb1.Members[1].State != meta.StateFailed || sb2.Members[1].State != meta.StateFailed || sb1.Events != sb2.Events || sb1.Events != sb.Events+1 {
		t.Fatalf("after the fail: n1 %s event %d, n2 %s event %d; want failed at %d on both",
			sb1.Members[1].State, sb1.Events, sb2.Members[1].State, sb2.Events, sb.Events+1)
	}
	if st := s2.Array.Status(); st.State != raid.ArrayDegraded {
		t.Errorf("n2's running array is %s, want degraded", st.State)
	}
	for i, s := range served {
		if _, err := s.Array.Device().WriteAt(data, int64(i)*(1<<20)+(512<<10)); err != nil {
			t.Fatalf("degraded write on n%d: %v", i+1, err)
		}
	}
	buf := make([]byte, len(data))
	if _, err := s2.Array.Device().ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Errorf("n2 reads n1's write back: %v, equal %v", err, bytes.Equal(buf, data))
	}
	c.served = nil
	for _, s := range served {
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
	}
}

// n2 is cut off from the other nodes (not from the agent). The majority
// takes its slot over and fences it at the agent; n2's writes stop; no
// acknowledged write is lost; after the heal n2 learns its slot is gone
// and its array is fenced.
func TestCutOffWriterIsFenced(t *testing.T) {
	c := newTestCluster(t, 2*time.Second)
	ctx := context.Background()
	s1, s2 := c.served[0], c.served[1]
	w2, _ := s2.Coordinator.Writer()
	data := bytes.Repeat([]byte{0x42}, 64<<10)
	if _, err := s2.Array.Device().WriteAt(data, 3<<20); err != nil {
		t.Fatal(err)
	}
	c.lnet.Partition([]lockd.NodeID{"n2"}, []lockd.NodeID{"n1", "n3"})
	c.mnet.Partition([]lockd.NodeID{"n2"}, []lockd.NodeID{"n1", "n3"})
	c.lks["n2"].SetMembers([]lockd.NodeID{"n2"})
	c.lks["n1"].SetMembers([]lockd.NodeID{"n1", "n3"})
	c.lks["n3"].SetMembers([]lockd.NodeID{"n1", "n3"})
	waitFor(t, "the majority to fence n2's slot at the agent", func() bool { return c.host.MinEpoch(c.sb.UUID, w2.Slot) > w2.Epoch })
	if _, err := s2.Array.Device().WriteAt(data, 4<<20); err == nil {
		t.Error("the cut-off writer's write was acknowledged after its slot was taken over")
	}
	buf := make([]byte, len(data))
	if _, err := s1.Array.Device().ReadAt(buf, 3<<20); err != nil || !bytes.Equal(buf, data) {
		t.Errorf("n2's acknowledged write read by n1: %v, equal %v", err, bytes.Equal(buf, data))
	}
	if n, err := s1.Array.Check(ctx, false); err != nil || n.Mismatches != 0 {
		t.Errorf("check after the takeover: %d mismatches, %v", n.Mismatches, err)
	}
	c.lnet.Heal()
	c.mnet.Heal()
	for _, lk := range c.lks {
		lk.SetMembers(c.ids)
	}
	waitFor(t, "n2's array to be fenced", s2.Array.Fenced)
	// The agent's refusal can fence the array before n2's lockd has its
	// quorum back and n2 reads the takeover.
	waitFor(t, "n2's coordinator to report its slot lost", func() bool { return s2.Coordinator.Status().Lost != "" })
	if _, err := s2.Array.Device().WriteAt(data, 4<<20); err == nil {
		t.Error("the fenced writer's write was acknowledged")
	}
}
