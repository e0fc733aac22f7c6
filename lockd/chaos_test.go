package lockd_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/memnet"
)

// TestNodeChaos runs five Nodes (real goroutines, fake time) over a lossy memnet while a
// controller partitions, heals, crashes and restarts them. One client per node takes EX on
// one resource again and again. Whenever a client starts using the lock, no other client may
// hold it with a token that is still valid, and its token must be larger than every earlier
// one. Restarted nodes get back their saved HardState.
func TestNodeChaos(t *testing.T) {
	defer goleak.VerifyNone(t)
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { chaos(t, seed) })
		})
	}
}

func chaos(t *testing.T, seed uint64) {
	ids := []lockd.NodeID{"n1", "n2", "n3", "n4", "n5"}
	net := memnet.New(seed)
	net.SetLoss(3)
	net.SetDelay(2)
	net.Start(time.Millisecond)
	defer net.Stop()

	var (
		mu       sync.Mutex
		nodes    = map[lockd.NodeID]*lockd.Node{}
		hardMu   sync.Mutex // SaveHardState runs on node goroutines
		hard     = map[lockd.NodeID]lockd.HardState{}
		inc      = map[lockd.NodeID]uint64{}
		holders  = map[lockd.NodeID]*lockd.Lock{}
		last     lockd.Token
		acquired int
		failure  error
		clients  sync.WaitGroup
	)
	fail := func(err error) {
		if failure == nil {
			failure = err
		}
	}
	client := func(id lockd.NodeID, n *lockd.Node) {
		defer clients.Done()
		ls := n.Lockspace("ls")
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			l, err := ls.Lock(ctx, "r", lockd.EX, 0)
			cancel()
			if errors.Is(err, lockd.ErrStopped) {
				return
			}
			if err != nil {
				continue
			}
			mu.Lock()
			tok, terr := l.Token()
			if terr == nil {
				for other, ol := range holders {
					if ot, err := ol.Token(); err == nil {
						fail(fmt.Errorf("%s got EX (token %v) while %s still holds it with valid token %v", id, tok, other, ot))
					}
				}
				if !last.Less(tok) {
					fail(fmt.Errorf("%s got token %v after %v", id, tok, last))
				}
				last = tok
				acquired++
				holders[id] = l
			}
			mu.Unlock()
			// Use it for a few ticks, or until it is no longer valid.
			for range 3 {
				time.Sleep(10 * time.Millisecond)
				if _, err := l.Token(); err != nil {
					break
				}
			}
			mu.Lock()
			delete(holders, id)
			mu.Unlock()
			uctx, ucancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_ = l.Unlock(uctx)
			ucancel()
		}
	}
	start := func(id lockd.NodeID) { // mu held
		inc[id]++
		ep := net.Endpoint(id)
		if inc[id] > 1 {
			ep = net.Restart(id)
		}
		hardMu.Lock()
		saved := hard[id]
		hardMu.Unlock()
		n, err := lockd.StartNode(lockd.NodeConfig{
			Config:       lockd.Config{ID: id, Incarnation: inc[id], Voters: ids, HardState: saved},
			Transport:    ep,
			TickInterval: 10 * time.Millisecond,
			SaveHardState: func(h lockd.HardState) error {
				hardMu.Lock()
				hard[id] = h
				hardMu.Unlock()
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
		clients.Add(1)
		go client(id, n)
	}
	mu.Lock()
	for _, id := range ids {
		start(id)
	}
	mu.Unlock()
	views := func(groups [][]lockd.NodeID) { // mu held
		for _, g := range groups {
			var live []lockd.NodeID
			for _, id := range g {
				if nodes[id] != nil {
					live = append(live, id)
				}
			}
			for _, id := range live {
				nodes[id].SetMembers(live)
			}
		}
	}
	views([][]lockd.NodeID{ids})

	rng := rand.New(rand.NewPCG(seed, 5))
	groups := [][]lockd.NodeID{ids}
	for range 60 {
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
		mu.Lock()
		switch rng.IntN(4) {
		case 0: // partition in two
			var a, b []lockd.NodeID
			for _, id := range ids {
				if rng.IntN(2) == 0 {
					a = append(a, id)
				} else {
					b = append(b, id)
				}
			}
			net.Partition(a, b)
			groups = [][]lockd.NodeID{a, b}
		case 1:
			net.Heal()
			groups = [][]lockd.NodeID{ids}
		case 2: // crash one node while a majority lives
			if len(nodes) > 3 {
				id := ids[rng.IntN(len(ids))]
				if n := nodes[id]; n != nil {
					delete(nodes, id)
					delete(holders, id)
					net.Crash(id)
					mu.Unlock()
					n.Close()
					mu.Lock()
				}
			}
		case 3: // restart a crashed node
			for _, id := range ids {
				if nodes[id] == nil {
					start(id)
					break
				}
			}
		}
		views(groups)
		mu.Unlock()
	}
	// Heal; every node up; the cluster must serve again.
	mu.Lock()
	net.Heal()
	for _, id := range ids {
		if nodes[id] == nil {
			start(id)
		}
	}
	views([][]lockd.NodeID{ids})
	before := acquired
	mu.Unlock()
	time.Sleep(5 * time.Second)
	mu.Lock()
	after := acquired
	err := failure
	all := make([]*lockd.Node, 0, len(nodes))
	for _, n := range nodes {
		all = append(all, n)
	}
	mu.Unlock()
	for _, n := range all {
		n.Close()
	}
	clients.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Fatalf("no lock granted in 5 s after healing (%d before)", before)
	}
	t.Logf("%d valid EX grants, %d after healing", after, after-before)
}
