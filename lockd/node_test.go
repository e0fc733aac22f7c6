package lockd_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/memnet"
)

// cluster starts nodes over a pumped memnet inside a synctest bubble (fake time).
type cluster struct {
	t     *testing.T
	net   *memnet.Network
	nodes map[lockd.NodeID]*lockd.Node
	ids   []lockd.NodeID
}

func startCluster(t *testing.T, names ...string) *cluster {
	c := &cluster{t: t, net: memnet.New(1), nodes: map[lockd.NodeID]*lockd.Node{}}
	for _, n := range names {
		c.ids = append(c.ids, lockd.NodeID(n))
	}
	for i, id := range c.ids {
		n, err := lockd.StartNode(lockd.NodeConfig{
			Config:       lockd.Config{ID: id, Incarnation: uint64(i + 1), Voters: c.ids},
			Transport:    c.net.Endpoint(id),
			TickInterval: 10 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		c.nodes[id] = n
	}
	c.net.Start(time.Millisecond)
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.Close()
		}
		c.net.Stop()
	})
	for _, n := range c.nodes {
		n.SetMembers(c.ids)
	}
	c.waitQuorum(c.ids...)
	return c
}

func (c *cluster) waitQuorum(ids ...lockd.NodeID) {
	for range 1000 {
		ok := true
		for _, id := range ids {
			ok = ok && c.nodes[id].HasQuorum()
		}
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("%v never reached quorum", ids)
}

func TestNodeLockUnlockLVB(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := startCluster(t, "n1", "n2", "n3")
		ctx := context.Background()
		a, err := c.nodes["n1"].Lockspace("ls").Lock(ctx, "r", lockd.EX, lockd.ValBlk)
		if err != nil {
			t.Fatal(err)
		}
		// n2 cannot have it while n1 does: NOQUEUE fails at once, a timeout fails later.
		if _, err := c.nodes["n2"].Lockspace("ls").Lock(ctx, "r", lockd.PR, lockd.NoQueue); !errors.Is(err, lockd.ErrAgain) {
			t.Fatalf("NOQUEUE lock of a held resource: %v, want ErrAgain", err)
		}
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = c.nodes["n2"].Lockspace("ls").Lock(tctx, "r", lockd.PR, 0)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, lockd.ErrNoQuorum) {
			t.Fatalf("lock of a held resource: %v, want a plain deadline", err)
		}
		a.SetLVB([]byte("hello"))
		if err := a.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		b, err := c.nodes["n2"].Lockspace("ls").Lock(ctx, "r", lockd.PR, lockd.ValBlk)
		if err != nil {
			t.Fatal(err)
		}
		data, seq, valid := b.LVB()
		if string(data[:5]) != "hello" || seq != 1 || !valid {
			t.Errorf("LVB %q seq %d valid %v, want hello 1 true", data, seq, valid)
		}
		tok, err := b.Token()
		if err != nil || tok.Epoch == 0 {
			t.Errorf("token %v, %v", tok, err)
		}
		if m, err := b.Mode(); m != lockd.PR || err != nil {
			t.Errorf("mode %v, %v", m, err)
		}
		if err := b.Convert(ctx, lockd.EX, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Token(); !errors.Is(err, lockd.ErrUnknownLock) {
			t.Errorf("token of an unlocked lock: %v", err)
		}
	})
}

func TestNodeBlockingCallback(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := startCluster(t, "n1", "n2", "n3")
		ctx := context.Background()
		asked := make(chan lockd.Mode, 4)
		a, err := c.nodes["n1"].Lockspace("ls").Lock(ctx, "r", lockd.PR, 0, lockd.WithBlocking(func(m lockd.Mode) { asked <- m }))
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() {
			l, err := c.nodes["n3"].Lockspace("ls").Lock(ctx, "r", lockd.EX, 0)
			if err == nil {
				err = l.Unlock(ctx)
			}
			got <- err
		}()
		if m := <-asked; m != lockd.EX {
			t.Errorf("blocking callback with %v, want EX", m)
		}
		if err := a.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	})
}

// A partitioned node loses its quorum lease: its lock stops being valid, its requests fail
// with ErrNoQuorum when their context ends, and the majority grants its lock to someone else
// only afterwards, with a larger token.
func TestNodeMinorityFreezes(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		c := startCluster(t, "n1", "n2", "n3")
		ctx := context.Background()
		held, err := c.nodes["n3"].Lockspace("ls").Lock(ctx, "q", lockd.EX, 0)
		if err != nil {
			t.Fatal(err)
		}
		old, err := held.Token()
		if err != nil {
			t.Fatal(err)
		}
		c.net.Partition([]lockd.NodeID{"n3"}, []lockd.NodeID{"n1", "n2"})
		c.nodes["n3"].SetMembers([]lockd.NodeID{"n3"})
		c.nodes["n1"].SetMembers([]lockd.NodeID{"n1", "n2"})
		c.nodes["n2"].SetMembers([]lockd.NodeID{"n1", "n2"})

		// The majority's lock request waits until n3's lease is over, then succeeds.
		l, err := c.nodes["n1"].Lockspace("ls").Lock(ctx, "q", lockd.EX, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := held.Token(); !errors.Is(err, lockd.ErrNoQuorum) {
			t.Errorf("minority's token: %v, want ErrNoQuorum", err)
		}
		tok, err := l.Token()
		if err != nil || !old.Less(tok) {
			t.Errorf("majority's token %v (%v) is not newer than %v", tok, err, old)
		}
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = c.nodes["n3"].Lockspace("ls").Lock(tctx, "other", lockd.CR, 0)
		cancel()
		if !errors.Is(err, lockd.ErrNoQuorum) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("minority lock: %v, want ErrNoQuorum and a deadline", err)
		}

		// Healed, n3 learns its lock was purged.
		c.net.Heal()
		for _, n := range c.nodes {
			n.SetMembers(c.ids)
		}
		c.waitQuorum(c.ids...)
		if _, err := held.Token(); !errors.Is(err, lockd.ErrLost) {
			t.Errorf("purged lock's token: %v, want ErrLost", err)
		}
		d, err := json.Marshal(c.nodes["n1"].Dump())
		if err != nil || !strings.Contains(string(d), `"granted":"EX"`) {
			t.Errorf("dump %s (%v) does not show the EX grant", d, err)
		}
	})
}

// While the hard state cannot be saved, the node sends nothing; once it can, it catches up.
func TestNodeHoldsMessagesUntilSaved(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		net := memnet.New(1)
		net.Start(time.Millisecond)
		defer net.Stop()
		ids := []lockd.NodeID{"n1", "n2"}
		var mu sync.Mutex
		broken := true
		var nodes []*lockd.Node
		for i, id := range ids {
			cfg := lockd.NodeConfig{
				Config:       lockd.Config{ID: id, Incarnation: uint64(i + 1), Voters: ids},
				Transport:    net.Endpoint(id),
				TickInterval: 10 * time.Millisecond,
				Logger:       slog.New(slog.DiscardHandler),
			}
			if id == "n2" {
				cfg.SaveHardState = func(lockd.HardState) error {
					mu.Lock()
					defer mu.Unlock()
					if broken {
						return errors.New("disk full")
					}
					return nil
				}
			}
			n, err := lockd.StartNode(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			nodes = append(nodes, n)
		}
		for _, n := range nodes {
			n.SetMembers(ids)
		}
		time.Sleep(2 * time.Second)
		if nodes[0].HasQuorum() || nodes[1].HasQuorum() {
			t.Fatal("a quorum formed although n2 could not save its promise")
		}
		mu.Lock()
		broken = false
		mu.Unlock()
		for range 500 {
			if nodes[0].HasQuorum() && nodes[1].HasQuorum() {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no quorum after the hard state could be saved")
	})
}
