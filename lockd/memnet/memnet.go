// Package memnet is an in-memory network for lockd: every node gets an Endpoint (a
// lockd.Transport), and the Network decides what arrives, when, in what order — under a
// seed, so a test can replay a run. It can drop, delay and reorder frames, cut links
// (partitions), and take nodes down and up again (crash and restart).
//
// Frames move only when the network is pumped: call Deliver from a test's own loop for full
// control, or Start a background pump for tests of lockd.Node.
package memnet

import (
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// Network is an in-memory network. Its methods are safe for concurrent use.
type Network struct {
	mu       sync.Mutex
	rng      *rand.Rand
	eps      map[lockd.NodeID]*Endpoint
	cut      map[[2]lockd.NodeID]bool
	queue    []packet
	now      uint64 // Deliver rounds so far
	dropPct  int
	maxDelay int

	stop chan struct{}
	done chan struct{}
}

type packet struct {
	from, to lockd.NodeID
	data     []byte
	due      uint64
	gen      uint64 // the receiver's generation when sent: a restart drops older frames
}

// Endpoint is one node's attachment to the network. It implements lockd.Transport.
type Endpoint struct {
	net  *Network
	id   lockd.NodeID
	ch   chan lockd.Frame
	up   bool
	gen  uint64
	lost int
}

// New makes an empty network whose random choices follow seed.
func New(seed uint64) *Network {
	return &Network{rng: rand.New(rand.NewPCG(seed, 0x6d656d6e6574)), eps: map[lockd.NodeID]*Endpoint{}, cut: map[[2]lockd.NodeID]bool{}}
}

// QueueSize is how many frames an endpoint buffers before the network drops more.
const QueueSize = 4096

// Endpoint returns the endpoint of node id, attaching it (up) on first use.
func (n *Network) Endpoint(id lockd.NodeID) *Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	ep := n.eps[id]
	if ep == nil {
		ep = &Endpoint{net: n, id: id, ch: make(chan lockd.Frame, QueueSize), up: true}
		n.eps[id] = ep
	}
	return ep
}

// SetLoss makes the network drop pct percent of frames (0 to 100).
func (n *Network) SetLoss(pct int) {
	n.mu.Lock()
	n.dropPct = min(max(pct, 0), 100)
	n.mu.Unlock()
}

// SetDelay makes frames wait up to rounds Deliver rounds (uniformly) before they arrive.
func (n *Network) SetDelay(rounds int) {
	n.mu.Lock()
	n.maxDelay = max(rounds, 0)
	n.mu.Unlock()
}

// Partition cuts every link between nodes of different groups (links inside a group and to
// nodes in no group stay). It replaces any earlier partition.
func (n *Network) Partition(groups ...[]lockd.NodeID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut = map[[2]lockd.NodeID]bool{}
	for i, g := range groups {
		for j, h := range groups {
			if i == j {
				continue
			}
			for _, a := range g {
				for _, b := range h {
					n.cut[[2]lockd.NodeID{a, b}] = true
				}
			}
		}
	}
}

// Heal removes every partition.
func (n *Network) Heal() {
	n.mu.Lock()
	n.cut = map[[2]lockd.NodeID]bool{}
	n.mu.Unlock()
}

// Crash takes node id down: frames to it are dropped until Restart, and those it had not
// read yet are gone.
func (n *Network) Crash(id lockd.NodeID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ep := n.eps[id]; ep != nil {
		ep.up = false
	}
}

// Restart brings node id up with a fresh endpoint (a new boot reads a new channel); frames
// sent to its earlier life are dropped.
func (n *Network) Restart(id lockd.NodeID) *Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.eps[id]
	ep := &Endpoint{net: n, id: id, ch: make(chan lockd.Frame, QueueSize), up: true}
	if old != nil {
		ep.gen = old.gen + 1
	}
	n.eps[id] = ep
	return ep
}

// Deliver runs one round: every frame that is due (in random order) reaches its endpoint,
// unless its link is cut or either side is down. It returns how many frames arrived.
func (n *Network) Deliver() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.now++
	var due, later []packet
	for _, p := range n.queue {
		if p.due <= n.now {
			due = append(due, p)
		} else {
			later = append(later, p)
		}
	}
	n.queue = later
	n.rng.Shuffle(len(due), func(i, j int) { due[i], due[j] = due[j], due[i] })
	delivered := 0
	for _, p := range due {
		ep := n.eps[p.to]
		src := n.eps[p.from]
		if ep == nil || !ep.up || ep.gen != p.gen || src == nil || !src.up || n.cut[[2]lockd.NodeID{p.from, p.to}] {
			continue
		}
		select {
		case ep.ch <- lockd.Frame{From: p.from, Data: p.data}:
			delivered++
		default:
			ep.lost++
		}
	}
	return delivered
}

// Pending returns how many frames are in flight.
func (n *Network) Pending() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.queue)
}

// Start pumps the network every interval in a goroutine until Stop.
func (n *Network) Start(interval time.Duration) {
	n.mu.Lock()
	if n.stop != nil {
		n.mu.Unlock()
		return
	}
	n.stop, n.done = make(chan struct{}), make(chan struct{})
	stop, done := n.stop, n.done
	n.mu.Unlock()
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				n.Deliver()
			}
		}
	}()
}

// Stop ends the pump started by Start and waits for it.
func (n *Network) Stop() {
	n.mu.Lock()
	stop, done := n.stop, n.done
	n.stop, n.done = nil, nil
	n.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// Send queues a copy of frame for node to. It never blocks; a frame to an unknown or down
// node, or from a down node, is dropped (as a real network would).
func (e *Endpoint) Send(to lockd.NodeID, frame []byte) error {
	n := e.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if !e.up || n.eps[e.id] != e {
		return nil
	}
	if n.dropPct > 0 && n.rng.IntN(100) < n.dropPct {
		return nil
	}
	due := n.now + 1
	if n.maxDelay > 0 {
		due += uint64(n.rng.IntN(n.maxDelay + 1))
	}
	var gen uint64
	if ep := n.eps[to]; ep != nil {
		gen = ep.gen
	}
	n.queue = append(n.queue, packet{from: e.id, to: to, data: append([]byte(nil), frame...), due: due, gen: gen})
	return nil
}

// Receive returns the frames addressed to this endpoint.
func (e *Endpoint) Receive() <-chan lockd.Frame { return e.ch }

var _ lockd.Transport = (*Endpoint)(nil)
