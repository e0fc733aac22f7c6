package lockd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// This file is the driver: the only part of the package with goroutines, locks and a clock.

// NodeConfig configures a Node.
type NodeConfig struct {
	// Config is the core's configuration. Incarnation 0 means "the boot time".
	Config
	// Transport carries frames to and from the other nodes. Required.
	Transport Transport
	// TickInterval is the length of one tick (default 50 ms): with the default LeaseTicks
	// a cut-off node stops trusting its locks after 400 ms.
	TickInterval time.Duration
	// SaveHardState, if set, is called with the core's HardState whenever it changes, before
	// any message of that step is sent; it must store it durably (give it back in
	// Config.HardState after a restart). Nil: not kept (see HardState).
	SaveHardState func(HardState) error
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Node runs one Core: a goroutine feeds it frames and ticks, and the lock API below talks to
// it. All methods are safe for concurrent use.
type Node struct {
	cfg     NodeConfig
	log     *slog.Logger
	mu      sync.Mutex
	core    *Core
	locks   map[uint64]*Lock
	stop    chan struct{}
	done    chan struct{}
	cbs     sync.WaitGroup
	once    sync.Once
	start   time.Time  // ticks are counted from here on the monotonic clock
	unsaved *HardState // a hard state SaveHardState failed to store; retried before sending
	ticks   uint64     // ticks given to the core so far
}

// StartNode starts a node. Tell it the live members with SetMembers.
func StartNode(cfg NodeConfig) (*Node, error) {
	if cfg.Transport == nil {
		return nil, fmt.Errorf("%w: no transport", ErrInvalid)
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = 50 * time.Millisecond
	}
	if cfg.Incarnation == 0 {
		cfg.Incarnation = uint64(time.Now().UnixNano())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	core, err := NewCore(cfg.Config)
	if err != nil {
		return nil, fmt.Errorf("start lockd node %s: %w", cfg.ID, err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.ID), core: core, locks: map[uint64]*Lock{},
		stop: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	go n.run()
	return n, nil
}

func (n *Node) run() {
	defer close(n.done)
	t := time.NewTicker(n.cfg.TickInterval)
	defer t.Stop()
	rx := n.cfg.Transport.Receive()
	for {
		select {
		case <-n.stop:
			return
		case f, ok := <-rx:
			if !ok {
				n.log.Error("lockd: transport closed its receive channel; node stops")
				return
			}
			m, err := UnmarshalMessage(f.Data)
			if err != nil || m.From != f.From {
				n.log.Debug("lockd: dropping frame", "from", f.From, "err", err)
				continue
			}
			n.mu.Lock()
			n.catchUpLocked()
			n.core.Step(m)
			n.flushLocked()
			n.mu.Unlock()
		case <-t.C:
			n.mu.Lock()
			n.catchUpLocked()
			n.flushLocked()
			n.mu.Unlock()
		}
	}
}

// catchUpLocked gives the core every tick that has elapsed on the monotonic clock, before
// the node acts on anything: a process that was paused (or starved of its ticker) must see
// its quorum lease run out before it grants or trusts a lock again.
func (n *Node) catchUpLocked() {
	due := uint64(time.Since(n.start) / n.cfg.TickInterval)
	if due > n.ticks {
		n.core.Elapse(due - n.ticks)
		n.ticks = due
	}
}

// flushLocked carries out the core's Ready: save, send, deliver. n.mu is held.
func (n *Node) flushLocked() {
	for n.core.HasReady() {
		rd := n.core.Ready()
		n.core.Advance()
		if rd.HardState != nil && n.cfg.SaveHardState != nil {
			n.unsaved = rd.HardState
		}
		if n.unsaved != nil {
			if err := n.cfg.SaveHardState(*n.unsaved); err != nil {
				// Sending now could break the promise the state stands for: send nothing
				// until it is saved (retransmissions make up for the dropped messages).
				n.log.Error("lockd: save hard state; not sending", "err", err)
				rd.Messages = nil
			} else {
				n.unsaved = nil
			}
		}
		for _, m := range rd.Messages {
			if err := n.cfg.Transport.Send(m.To, m.Marshal()); err != nil {
				n.log.Debug("lockd: send", "to", m.To, "type", m.Type, "err", err)
			}
		}
		for _, cp := range rd.Completions {
			n.deliverLocked(cp)
		}
		for _, b := range rd.Blocking {
			if l := n.locks[b.Lock]; l != nil && l.blocking != nil {
				fn, mode := l.blocking, b.Mode
				n.cbs.Add(1)
				go func() { // never block the loop on a callback
					defer n.cbs.Done()
					fn(mode)
				}()
			}
		}
	}
}

func (n *Node) deliverLocked(cp Completion) {
	l := n.locks[cp.Lock]
	if l == nil {
		return
	}
	if !cp.Mode.Valid() { // unlocked, refused, canceled or lost: the lock is gone
		delete(n.locks, cp.Lock)
		l.gone = true
		l.lost = cp.Status == StatusLost
	}
	if l.abandoned && cp.Op == OpLock {
		// The caller gave up waiting; give back what it would have got.
		if cp.Status == StatusGranted {
			if err := n.core.Unlock(l.id, 0, nil); err != nil {
				n.log.Debug("lockd: give back abandoned lock", "err", err)
			}
		}
		return
	}
	if l.inflight {
		l.inflight = false
		l.wait <- cp // buffered; one operation in flight at a time
	}
}

// SetMembers tells the node which members are alive (from serf in production).
func (n *Node) SetMembers(members []NodeID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.catchUpLocked()
	n.core.SetMembers(members)
	n.flushLocked()
}

// Dump returns a snapshot of the node's lock state.
func (n *Node) Dump() Dump {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.core.Dump()
}

// HasQuorum reports whether the node holds its quorum lease (its locks are valid).
func (n *Node) HasQuorum() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.catchUpLocked()
	return n.core.HasQuorum() && n.core.Normal()
}

// Close stops the node. Waiting calls return ErrStopped; locks are not released (the other
// nodes purge them when the membership drops this node).
func (n *Node) Close() error {
	n.once.Do(func() {
		close(n.stop)
		<-n.done
		n.cbs.Wait()
	})
	return nil
}

// Lockspace is a namespace of resources.
type Lockspace struct {
	n    *Node
	name string
}

// Lockspace returns the lockspace called name.
func (n *Node) Lockspace(name string) *Lockspace { return &Lockspace{n: n, name: name} }

// LockOption modifies Lock.
type LockOption func(*Lock)

// WithBlocking registers fn as the blocking callback: it is called (on its own goroutine)
// with the mode another request waits for while this lock blocks it.
func WithBlocking(fn func(requested Mode)) LockOption {
	return func(l *Lock) { l.blocking = fn }
}

// Lock is a held lock.
type Lock struct {
	n        *Node
	id       uint64
	space    string
	resource string
	blocking func(Mode)
	wait     chan Completion
	// Guarded by n.mu.
	inflight  bool
	abandoned bool
	gone      bool
	lost      bool
	wlvb      []byte
	wflags    Flags
}

// Lock asks for resource in mode and waits until it is granted, refused (ErrAgain with
// NoQueue) or ctx ends. Without quorum the request waits; when ctx ends the error wraps both
// ErrNoQuorum and ctx.Err(). Flags: NoQueue, ValBlk (read the value block, see LVB).
func (ls *Lockspace) Lock(ctx context.Context, resource string, mode Mode, flags Flags, opts ...LockOption) (*Lock, error) {
	n := ls.n
	l := &Lock{n: n, space: ls.name, resource: resource, wait: make(chan Completion, 1)}
	for _, o := range opts {
		o(l)
	}
	if l.blocking != nil {
		flags |= Blocking
	}
	n.mu.Lock()
	select {
	case <-n.stop:
		n.mu.Unlock()
		return nil, ErrStopped
	default:
	}
	n.catchUpLocked()
	id, err := n.core.Lock(ls.name, resource, mode, flags)
	if err != nil {
		n.mu.Unlock()
		return nil, err
	}
	l.id, l.inflight = id, true
	n.locks[id] = l
	n.flushLocked()
	n.mu.Unlock()
	cp, err := l.await(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("lock %s/%s %v: %w", ls.name, resource, mode, err)
	}
	if err := cp.Status.Err(); err != nil {
		return nil, fmt.Errorf("lock %s/%s %v: %w", ls.name, resource, mode, err)
	}
	return l, nil
}

// await waits for the completion of the operation in flight.
func (l *Lock) await(ctx context.Context, isLock bool) (Completion, error) {
	n := l.n
	select {
	case cp := <-l.wait:
		return cp, nil
	case <-n.stop:
		return Completion{}, ErrStopped
	case <-ctx.Done():
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	select {
	case cp := <-l.wait:
		return cp, nil
	default:
	}
	l.inflight = false
	if isLock {
		l.abandoned = true
	}
	if err := n.core.Cancel(l.id); err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnknownLock) {
		n.log.Debug("lockd: cancel after context end", "err", err)
	}
	n.flushLocked()
	if !n.core.HasQuorum() || !n.core.Normal() {
		return Completion{}, fmt.Errorf("%w: %w", ErrNoQuorum, ctx.Err())
	}
	return Completion{}, ctx.Err()
}

// do starts an operation on l and waits for it.
func (l *Lock) do(ctx context.Context, what string, start func() error) (Completion, error) {
	n := l.n
	n.mu.Lock()
	if l.gone {
		n.mu.Unlock()
		if l.lost {
			return Completion{}, fmt.Errorf("%s %s/%s: %w", what, l.space, l.resource, ErrLost)
		}
		return Completion{}, fmt.Errorf("%s %s/%s: %w", what, l.space, l.resource, ErrUnknownLock)
	}
	n.catchUpLocked()
	if err := start(); err != nil {
		n.mu.Unlock()
		return Completion{}, fmt.Errorf("%s %s/%s: %w", what, l.space, l.resource, err)
	}
	l.inflight = true
	n.flushLocked()
	n.mu.Unlock()
	cp, err := l.await(ctx, false)
	if err == nil {
		err = cp.Status.Err()
	}
	if err != nil {
		return cp, fmt.Errorf("%s %s/%s: %w", what, l.space, l.resource, err)
	}
	return cp, nil
}

// Resource returns the name of the lock's resource.
func (l *Lock) Resource() string { return l.resource }

// SetLVB stages a value block (at most LVBSize bytes) that the next Unlock or
// down-conversion writes, if this lock holds PW or EX.
func (l *Lock) SetLVB(b []byte) {
	l.n.mu.Lock()
	l.wlvb, l.wflags = slices.Clone(b), ValBlk
	l.n.mu.Unlock()
}

// InvalidateLVB stages marking the value block invalid at the next Unlock or down-conversion
// (as IVVALBLK), if this lock holds PW or EX.
func (l *Lock) InvalidateLVB() {
	l.n.mu.Lock()
	l.wlvb, l.wflags = nil, IvValBlk
	l.n.mu.Unlock()
}

// Convert changes the lock's mode and waits for the outcome: nil, ErrAgain (NoQueue),
// ErrDeadlock, ErrCanceled, or the context's error (the conversion is then canceled; if it
// was granted first, Mode tells).
func (l *Lock) Convert(ctx context.Context, mode Mode, flags Flags) error {
	if l.blocking != nil {
		flags |= Blocking
	}
	_, err := l.do(ctx, "convert", func() error {
		w, wf := l.wlvb, l.wflags
		l.wlvb, l.wflags = nil, 0
		return l.n.core.Convert(l.id, mode, flags|wf, w)
	})
	return err
}

// Unlock releases the lock (writing a value block staged with SetLVB).
func (l *Lock) Unlock(ctx context.Context) error {
	_, err := l.do(ctx, "unlock", func() error {
		w, wf := l.wlvb, l.wflags
		l.wlvb, l.wflags = nil, 0
		return l.n.core.Unlock(l.id, wf, w)
	})
	return err
}

func (l *Lock) info() (LockInfo, error) {
	n := l.n
	if l.lost {
		return LockInfo{}, ErrLost
	}
	li, ok := n.core.LockInfo(l.id)
	if !ok || !li.Granted.Valid() {
		return LockInfo{}, ErrUnknownLock
	}
	return li, nil
}

// Mode returns the granted mode (or an error once the lock is gone).
func (l *Lock) Mode() (Mode, error) {
	l.n.mu.Lock()
	defer l.n.mu.Unlock()
	li, err := l.info()
	return li.Granted, err
}

// LVB returns the lock value block as of the last grant or write, its sequence, and whether
// it is valid (false after a PW/EX holder died, or IVVALBLK).
func (l *Lock) LVB() (data []byte, seq uint64, valid bool) {
	l.n.mu.Lock()
	defer l.n.mu.Unlock()
	li, err := l.info()
	if err != nil {
		return nil, 0, false
	}
	return li.LVB, li.LVBSeq, li.LVBValid
}

// Token returns the lock's fencing token. It fails with ErrNoQuorum while the node lacks
// its quorum lease (the lock may be granted elsewhere soon: stop using it), and with ErrLost
// once the lock is gone.
func (l *Lock) Token() (Token, error) {
	l.n.mu.Lock()
	defer l.n.mu.Unlock()
	l.n.catchUpLocked()
	li, err := l.info()
	if err != nil {
		return Token{}, err
	}
	if !l.n.core.HasQuorum() {
		return Token{}, ErrNoQuorum
	}
	return li.Token, nil
}
