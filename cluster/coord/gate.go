package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// Window is a byte range of the array [Lo, Hi) that a resyncer works on:
// writers must not write it until the window moves or ends. A window is
// named by its resyncer (Owner) and the slot whose marks it resyncs. Seq
// orders one owner's announcements (they may arrive out of order); 0 means
// unordered.
type Window struct {
	Owner  lockd.NodeID
	Slot   uint32
	Lo, Hi int64
	Seq    uint64
}

// Empty reports whether the window covers nothing (it ends a resync).
func (w Window) Empty() bool { return w.Hi <= w.Lo }

// overlaps reports whether [off, end) meets the window.
func (w Window) overlaps(off, end int64) bool { return off < w.Hi && w.Lo < end }

// ErrHalted is what a write gets while the gate is halted (this node's
// slot lock is not valid: no quorum, or it was lost).
var ErrHalted = errors.New("coord: writes halted")

// ErrGateTimeout is what a write gets that waited longer than the gate's
// timeout for a resync window to move.
var ErrGateTimeout = errors.New("coord: write waited too long for a resync window")

// gateState is one immutable view of the gate: readers load it with one
// atomic load and never lock.
type gateState struct {
	windows []Window
	halted  error // non-nil: every write waits
	// noAck, if non-nil, fails every write that leaves (see HaltAcks).
	noAck error
	// changed is closed when this state is replaced.
	changed chan struct{}
}

// blocks reports whether a write of [off, end) must wait in this state.
func (s *gateState) blocks(off, end int64) bool {
	if s.halted != nil {
		return true
	}
	for i := range s.windows {
		if s.windows[i].overlaps(off, end) {
			return true
		}
	}
	return false
}

// WriteGate is what an array consults on every write in cluster mode: a
// write that overlaps an announced resync window waits until the window
// moves or ends, and every write waits while the gate is halted.
//
// The fast path (no window overlaps, not halted) is two atomic adds and
// two atomic loads: no allocation, no lock. Installing a window waits until
// every write that entered before it has left, so once Install returns no
// write can touch the window until it is removed.
//
// Every write calls Enter, then Leave with Enter's ticket once the write is
// done (also when it failed). All methods are safe for concurrent use.
type WriteGate struct {
	state    atomic.Pointer[gateState]
	phase    atomic.Uint32
	inflight [2]paddedCount
	draining atomic.Bool
	drained  chan struct{} // a token whenever a count may have reached zero
	timeout  time.Duration

	drainMu sync.Mutex              // serialises Install's phase flips and drains
	mu      sync.Mutex              // serialises changes of state; never held while waiting
	seen    map[lockd.NodeID]uint64 // newest Seq installed per owner; guarded by mu
	halts   map[string]haltReason   // halt reasons by key; guarded by mu
}

type paddedCount struct {
	n atomic.Int64
	_ [56]byte // keep the two counts on their own cache lines
}

// DefaultGateTimeout bounds how long a write waits at the gate.
const DefaultGateTimeout = 30 * time.Second

// NewWriteGate returns an open gate. timeout bounds each write's wait (0:
// DefaultGateTimeout).
func NewWriteGate(timeout time.Duration) *WriteGate {
	if timeout <= 0 {
		timeout = DefaultGateTimeout
	}
	g := &WriteGate{drained: make(chan struct{}, 1), timeout: timeout, seen: map[lockd.NodeID]uint64{}, halts: map[string]haltReason{}}
	g.state.Store(&gateState{changed: make(chan struct{})})
	return g
}

// Enter admits a write of [off, off+length). It waits while the range
// overlaps a window or the gate is halted, until ctx ends or the gate's
// timeout passes. On success the caller must call Leave(ticket) when the
// write is done.
func (g *WriteGate) Enter(ctx context.Context, off, length int64) (ticket uint32, err error) {
	end := off + length
	var deadline <-chan time.Time
	for {
		p := g.phase.Load() & 1
		g.inflight[p].n.Add(1)
		if g.phase.Load()&1 != p {
			g.leave(p) // a window was installed meanwhile: enter in the new phase
			continue
		}
		st := g.state.Load()
		if !st.blocks(off, end) {
			return p, nil
		}
		g.leave(p)
		if deadline == nil {
			t := time.NewTimer(g.timeout)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-st.changed:
		case <-ctx.Done():
			return 0, fmt.Errorf("write %d+%d at the cluster write gate: %w", off, length, context.Cause(ctx))
		case <-deadline:
			if st.halted != nil {
				return 0, fmt.Errorf("write %d+%d: %w: %w", off, length, ErrHalted, st.halted)
			}
			return 0, fmt.Errorf("write %d+%d after %v: %w", off, length, g.timeout, ErrGateTimeout)
		}
	}
}

// Leave ends a write admitted by Enter. While a halt set with HaltAcks is
// in force it holds the write's acknowledgement: it returns nil once every
// such halt is lifted, or an error wrapping ErrHalted if one outlasts the
// gate's timeout; the write must then not be acknowledged (fail it).
func (g *WriteGate) Leave(ticket uint32) error {
	g.leave(ticket & 1)
	st := g.state.Load()
	if st.noAck == nil {
		return nil
	}
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	for st.noAck != nil {
		select {
		case <-st.changed:
			st = g.state.Load()
		case <-t.C:
			return fmt.Errorf("%w: %w", ErrHalted, st.noAck)
		}
	}
	return nil
}

func (g *WriteGate) leave(p uint32) {
	if g.inflight[p].n.Add(-1) == 0 && g.draining.Load() {
		select {
		case g.drained <- struct{}{}:
		default:
		}
	}
}

// setLocked replaces the state and wakes every waiting write. g.mu is held.
func (g *WriteGate) setLocked(windows []Window) {
	old := g.state.Load()
	halted, noAck := g.haltedLocked()
	g.state.Store(&gateState{windows: windows, halted: halted, noAck: noAck, changed: make(chan struct{})})
	close(old.changed)
}

// Install adds the window w (replacing the window of the same owner and
// slot), or removes that window when w is empty. An announcement older
// than one already installed for its owner (by Seq) is ignored. Adding
// waits until the writes admitted before it have left, or until ctx ends
// (the window then stays installed and the error says the drain did not
// finish).
//
// The drain holds drainMu, not mu: a write in flight may halt the gate
// (a member failure seen on its IO path, HaltAcks) while a drain waits
// for it to leave.
func (g *WriteGate) Install(ctx context.Context, w Window) error {
	g.drainMu.Lock()
	defer g.drainMu.Unlock()
	g.mu.Lock()
	if w.Seq != 0 {
		if w.Seq <= g.seen[w.Owner] {
			g.mu.Unlock()
			return nil
		}
		g.seen[w.Owner] = w.Seq
	}
	st := g.state.Load()
	ws := slices.DeleteFunc(slices.Clone(st.windows), func(x Window) bool { return x.Owner == w.Owner && x.Slot == w.Slot })
	if w.Empty() {
		g.setLocked(ws)
		g.mu.Unlock()
		return nil
	}
	g.setLocked(append(ws, w))
	g.mu.Unlock()
	return g.drain(ctx)
}

// drain flips the phase and waits for the writes of the old phase to
// leave. g.drainMu is held, so phases never overtake a drain.
func (g *WriteGate) drain(ctx context.Context) error {
	old := g.phase.Add(1) - 1
	p := old & 1
	g.draining.Store(true)
	defer g.draining.Store(false)
	for g.inflight[p].n.Load() != 0 {
		select {
		case <-g.drained:
		case <-ctx.Done():
			return fmt.Errorf("wait for writes in flight before a resync window: %w", context.Cause(ctx))
		}
	}
	return nil
}

// DropOwner removes every window of owner (a resyncer that left the
// cluster: its windows would otherwise block writes for ever).
func (g *WriteGate) DropOwner(owner lockd.NodeID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.seen, owner) // a restarted owner numbers from 1 again
	st := g.state.Load()
	if !slices.ContainsFunc(st.windows, func(x Window) bool { return x.Owner == owner }) {
		return
	}
	g.setLocked(slices.DeleteFunc(slices.Clone(st.windows), func(x Window) bool { return x.Owner == owner }))
}

// Halt makes every new write wait (and fail after the timeout with
// ErrHalted and why) until every reason given is lifted with Resume; key
// names the reason (a second Halt with the same key replaces it). Writes
// already admitted go on.
func (g *WriteGate) Halt(key string, why error) { g.halt(key, why, false) }

// HaltAcks is Halt that also holds the writes already admitted when they
// leave: none of them may be acknowledged until the reason is lifted (a
// member failure not yet known to every writer: they may have written
// without the member, and a writer that does not know would still read
// the member). Leave waits for the lift, and fails the write if it does
// not come within the gate's timeout.
func (g *WriteGate) HaltAcks(key string, why error) { g.halt(key, why, true) }

type haltReason struct {
	err  error
	acks bool
}

func (g *WriteGate) halt(key string, why error, acks bool) {
	if why == nil {
		why = errors.New(key)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if old, ok := g.halts[key]; ok && old.acks == acks && old.err.Error() == why.Error() {
		return
	}
	g.halts[key] = haltReason{why, acks}
	g.setLocked(g.state.Load().windows)
}

// Resume lifts the halt reason key.
func (g *WriteGate) Resume(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.halts[key]; !ok {
		return
	}
	delete(g.halts, key)
	g.setLocked(g.state.Load().windows)
}

// haltedLocked combines the halt reasons (in key order): all of them, and
// those that also fail acknowledgements; nil if none.
func (g *WriteGate) haltedLocked() (halted, noAck error) {
	if len(g.halts) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(g.halts))
	for k := range g.halts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var all, acks []error
	for _, k := range keys {
		all = append(all, g.halts[k].err)
		if g.halts[k].acks {
			acks = append(acks, g.halts[k].err)
		}
	}
	return errors.Join(all...), errors.Join(acks...)
}

// HaltedBy reports whether the reason key halts the gate.
func (g *WriteGate) HaltedBy(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.halts[key]
	return ok
}

// Halted returns why the gate is halted, or nil.
func (g *WriteGate) Halted() error { return g.state.Load().halted }

// Windows returns the installed windows.
func (g *WriteGate) Windows() []Window { return slices.Clone(g.state.Load().windows) }
