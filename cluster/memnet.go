package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/ddraid/ddraid/lockd"
)

// MemNet is an in-memory network of Couriers for other packages' tests: no
// sockets, no gossip, no timers. Frames are delivered synchronously inside
// Send (handlers still run on their own goroutines), so tests under
// testing/synctest see every request arrive before the sender blocks.
// Each node's Live list is every node that is up and not cut off from it.
// Its methods are safe for concurrent use.
type MemNet struct {
	mu    sync.Mutex
	nodes map[lockd.NodeID]*memNode
	cut   map[[2]lockd.NodeID]bool
	log   *slog.Logger
}

type memNode struct {
	c  *Courier
	up bool
}

// NewMemNet returns an empty network. log may be nil (slog.Default()).
func NewMemNet(log *slog.Logger) *MemNet {
	if log == nil {
		log = slog.Default()
	}
	return &MemNet{nodes: map[lockd.NodeID]*memNode{}, cut: map[[2]lockd.NodeID]bool{}, log: log}
}

// Messenger returns node id's Courier, adding the node (up) on first use.
// Stop it (or Close the network) when done.
func (n *MemNet) Messenger(id lockd.NodeID) *Courier {
	n.mu.Lock()
	nd := n.nodes[id]
	if nd == nil {
		nd = &memNode{up: true}
		nd.c = NewCourier(id, func(to lockd.NodeID, frame []byte) error { return n.send(id, to, frame) }, n.log.With("node", id))
		n.nodes[id] = nd
	}
	n.mu.Unlock()
	n.updateLive()
	return nd.c
}

func (n *MemNet) send(from, to lockd.NodeID, frame []byte) error {
	n.mu.Lock()
	src, dst := n.nodes[from], n.nodes[to]
	ok := dst != nil && src != nil && src.up && dst.up && !n.cut[pair(from, to)]
	n.mu.Unlock()
	if dst == nil {
		return fmt.Errorf("memnet: unknown node %s", to)
	}
	if ok { // else lost on the way, as on a cut network
		dst.c.Deliver(from, slices.Clone(frame))
	}
	return nil
}

func pair(a, b lockd.NodeID) [2]lockd.NodeID {
	if b < a {
		a, b = b, a
	}
	return [2]lockd.NodeID{a, b}
}

// Partition cuts every link between nodes of different groups; nodes in no
// group are cut from everyone. Heal undoes it.
func (n *MemNet) Partition(groups ...[]lockd.NodeID) {
	n.mu.Lock()
	group := map[lockd.NodeID]int{}
	for i, g := range groups {
		for _, id := range g {
			group[id] = i + 1
		}
	}
	for a := range n.nodes {
		for b := range n.nodes {
			if a != b && (group[a] == 0 || group[a] != group[b]) {
				n.cut[pair(a, b)] = true
			}
		}
	}
	n.mu.Unlock()
	n.updateLive()
}

// Heal restores every link.
func (n *MemNet) Heal() {
	n.mu.Lock()
	clear(n.cut)
	n.mu.Unlock()
	n.updateLive()
}

// Down takes node id off the network (a crash as its peers see it: it
// neither sends nor receives); Up brings it back.
func (n *MemNet) Down(id lockd.NodeID) { n.setUp(id, false) }

// Up brings node id back.
func (n *MemNet) Up(id lockd.NodeID) { n.setUp(id, true) }

func (n *MemNet) setUp(id lockd.NodeID, up bool) {
	n.mu.Lock()
	if nd := n.nodes[id]; nd != nil {
		nd.up = up
	}
	n.mu.Unlock()
	n.updateLive()
}

// updateLive gives every node its view: the up nodes it is connected to.
func (n *MemNet) updateLive() {
	n.mu.Lock()
	views := map[*Courier][]lockd.NodeID{}
	for a, na := range n.nodes {
		var v []lockd.NodeID
		if na.up {
			for b, nb := range n.nodes {
				if nb.up && (a == b || !n.cut[pair(a, b)]) {
					v = append(v, b)
				}
			}
		}
		views[na.c] = v
	}
	n.mu.Unlock()
	for c, v := range views {
		c.SetLive(v)
	}
}

// Close stops every node's Courier.
func (n *MemNet) Close() {
	n.mu.Lock()
	var cs []*Courier
	for _, nd := range n.nodes {
		cs = append(cs, nd.c)
	}
	n.mu.Unlock()
	for _, c := range cs {
		c.Stop()
	}
}
