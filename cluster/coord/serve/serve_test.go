package serve

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/blockdev/member"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/coord"
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

// startAgent serves n disk files of size bytes from an in-process member
// host on loopback and returns them as agent members.
func startAgent(t *testing.T, dir string, n int, size int64) []string {
	t.Helper()
	h, err := member.Open(member.Config{StateDir: filepath.Join(dir, "agent"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	cfg := nbd.DefaultConfig()
	cfg.Logger = quiet
	srv, err := nbd.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := nbd.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("disk%d", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		d, err := h.AddDisk(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.AddExport(nbd.Export{Name: d.Path(), Device: d.Device(), Member: d}); err != nil {
			t.Fatal(err)
		}
		members = append(members, l.Addr().String()+":"+d.Path())
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		<-done
		h.Close()
	})
	return members
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

// Two nodes serve one raid35 array over an agent's disks. A member failed
// by the operator on one is recorded by both before either goes on, with
// one event counter; both keep writing degraded.
func TestTwoWritersAndAFailedMember(t *testing.T) {
	dir := t.TempDir()
	members := startAgent(t, dir, 3, 8<<20)
	stateDirs := []string{filepath.Join(dir, "n1"), filepath.Join(dir, "n2")}
	var sb *meta.Array
	if err := meta.View(stateDirs[0], func(s *meta.Store) error {
		var err error
		sb, err = raid.Create(s, raid.CreateOptions{Name: "a", Level: raid.LevelRaid35, Members: members, RegionSize: 128 << 10, AssumeClean: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := meta.View(stateDirs[1], func(s *meta.Store) error { return s.Put(sb) }); err != nil {
		t.Fatal(err)
	}

	ids := []lockd.NodeID{"n1", "n2", "n3"}
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
		routers[id] = coord.NewRouter(mnet.Messenger(id))
	}
	lnet.Start(time.Millisecond)
	for _, lk := range lks {
		lk.SetMembers(ids)
	}
	waitFor(t, "lockd quorum", func() bool { return lks["n1"].HasQuorum() && lks["n2"].HasQuorum() && lks["n3"].HasQuorum() })

	ctx := context.Background()
	var served []*Served
	for i, id := range ids[:2] {
		s, err := Array(ctx, Config{Node: id, Lockd: lks[id], Router: routers[id], Timeout: 10 * time.Second, Poll: 20 * time.Millisecond, Logger: quiet,
			Array: array.Options{StateDir: stateDirs[i], Name: "a", Throttle: resync.Throttle{Min: 1 << 40}, ClearDelay: time.Hour,
				Logger: quiet, Remote: remote.Config{Logger: quiet}}})
		if err != nil {
			t.Fatal(err)
		}
		served = append(served, s)
	}
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
	for _, s := range served {
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
	}
}
