package lockd

import (
	"bytes"
	"slices"
)

// This file is the master side of one resource: the three DLM queues and their grant rules.
// It knows nothing of nodes or messages; it appends events that the core turns into replies
// and blocking callbacks.

type queueKind uint8

const (
	qNone queueKind = iota
	qGranted
	qConverting
	qWaiting
)

// lkb is the master's record of one lock (the DLM's lock block).
type lkb struct {
	id     LockID
	gr     Mode  // granted mode, noMode if not granted
	rq     Mode  // requested mode while converting or waiting
	flags  Flags // flags of the current (or last) operation
	seq    uint64
	queue  queueKind
	bast   Mode   // highest mode a blocking callback was sent for since the last grant
	wlvb   []byte // value block a down-convert writes
	token  Token
	cancel bool // recovery: a cancel is outstanding
	// The last completion, repeated when a retransmitted request shows the reply was lost.
	lastOp     Op
	lastStatus Status
}

// event is an outcome for one lock: a completion, or a blocking callback (blocking=true).
type event struct {
	lk       *lkb
	op       Op
	status   Status
	blocking bool
	mode     Mode // granted mode (completion) or requested mode (blocking)
	lvb      []byte
	lvbSeq   uint64
	lvbValid bool
	withLVB  bool
}

type resource struct {
	space, name string
	granted     []*lkb
	converting  []*lkb
	waiting     []*lkb
	locks       map[LockID]*lkb
	lvb         []byte // LVBSize bytes
	lvbSeq      uint64
	lvbValid    bool
	tokens      *uint64 // the master's grant counter of this epoch (shared by its resources,
	// so a resource freed and made again keeps getting larger tokens)
	epoch uint64
	out   []event
	low   map[NodeID]lowMark // per holder: lock IDs below low are forgotten by it
}

// lowMark is the newest (incarnation, low lock ID) a holder reported for this resource.
type lowMark struct{ inc, low uint64 }

func newResource(space, name string, epoch uint64, tokens *uint64) *resource {
	return &resource{space: space, name: name, tokens: tokens, locks: map[LockID]*lkb{}, low: map[NodeID]lowMark{}, lvb: make([]byte, LVBSize), lvbValid: true, epoch: epoch}
}

// idle reports whether the resource holds nothing worth keeping.
func (r *resource) idle() bool {
	return len(r.locks) == 0 && r.lvbSeq == 0 && r.lvbValid && bytes.Equal(r.lvb, make([]byte, LVBSize))
}

func remove(q []*lkb, lk *lkb) []*lkb {
	for i, x := range q {
		if x == lk {
			return append(q[:i], q[i+1:]...)
		}
	}
	return q
}

func (r *resource) unqueue(lk *lkb) {
	switch lk.queue {
	case qGranted:
		r.granted = remove(r.granted, lk)
	case qConverting:
		r.converting = remove(r.converting, lk)
	case qWaiting:
		r.waiting = remove(r.waiting, lk)
	}
	lk.queue = qNone
}

// weaker reports whether mode a conflicts with no mode that b does not conflict with (a
// conversion from b to a is a down-conversion, always grantable at once).
func weaker(a, b Mode) bool {
	for x := range numModes {
		if !Compatible(a, x) && Compatible(b, x) {
			return false
		}
	}
	return true
}

// holders are the locks that hold a granted mode: the granted queue and the convert queue
// (a converting lock keeps its granted mode until the conversion is granted).
func (r *resource) holders() []*lkb {
	return append(slices.Clone(r.granted), r.converting...)
}

// conflictsGranted reports whether mode m conflicts with the granted mode of a lock other
// than lk.
func (r *resource) conflictsGranted(lk *lkb, m Mode) bool {
	for _, q := range [][]*lkb{r.granted, r.converting} {
		for _, g := range q {
			if g != lk && !Compatible(g.gr, m) {
				return true
			}
		}
	}
	return false
}

// canGrant is the DLM's _can_be_granted without QUECVT: a conversion needs only to be
// compatible with the other granted locks; a new request also needs empty convert and wait
// queues (now) or to be first in the wait queue with no conversions pending (later).
func (r *resource) canGrant(lk *lkb, now bool) bool {
	if r.conflictsGranted(lk, lk.rq) {
		return false
	}
	if lk.gr != noMode { // conversion
		return true
	}
	if len(r.converting) > 0 {
		return false
	}
	if now {
		return len(r.waiting) == 0
	}
	return len(r.waiting) > 0 && r.waiting[0] == lk
}

// deadlocked reports whether conversion lk and some other queued conversion each wait for
// the other's granted mode.
func (r *resource) deadlocked(lk *lkb) bool {
	for _, o := range r.converting {
		if o != lk && !Compatible(o.gr, lk.rq) && !Compatible(lk.gr, o.rq) {
			return true
		}
	}
	return false
}

func (r *resource) emit(lk *lkb, op Op, st Status) {
	ev := event{lk: lk, op: op, status: st, mode: lk.gr}
	lk.lastOp, lk.lastStatus = op, st
	if lk.flags&ValBlk != 0 {
		ev.withLVB = true
		ev.lvb = append([]byte(nil), r.lvb...)
		ev.lvbSeq = r.lvbSeq
		ev.lvbValid = r.lvbValid
	}
	r.out = append(r.out, ev)
}

// writeLVB applies the value-block rules for a PW/EX holder going down from old (to a lower
// mode or to unlocked): VALBLK writes w and bumps the sequence; IVVALBLK invalidates.
func (r *resource) writeLVB(old Mode, flags Flags, w []byte) {
	if !old.Valid() || old < PW {
		return
	}
	switch {
	case flags&IvValBlk != 0:
		r.lvbValid = false
	case flags&ValBlk != 0 && w != nil:
		copy(r.lvb, w)
		for i := len(w); i < LVBSize; i++ {
			r.lvb[i] = 0
		}
		r.lvbSeq++
		r.lvbValid = true
	}
}

func (r *resource) grant(lk *lkb, op Op) {
	if !lk.rq.Valid() {
		panic("lockd: grant without a requested mode") // broken internal invariant
	}
	old := lk.gr
	r.unqueue(lk)
	if lk.rq < old {
		r.writeLVB(old, lk.flags, lk.wlvb)
	}
	lk.gr, lk.rq, lk.bast, lk.wlvb = lk.rq, noMode, noMode, nil
	*r.tokens++
	lk.token = Token{Epoch: r.epoch, Seq: *r.tokens}
	lk.queue = qGranted
	r.granted = append(r.granted, lk)
	r.emit(lk, op, StatusGranted)
}

// request handles a new lock.
func (r *resource) request(lk *lkb) {
	r.locks[lk.id] = lk
	lk.gr, lk.bast = noMode, noMode
	switch {
	case r.canGrant(lk, true):
		r.grant(lk, OpLock)
	case lk.flags&NoQueue != 0:
		delete(r.locks, lk.id)
		r.emit(lk, OpLock, StatusAgain)
	default:
		lk.queue = qWaiting
		r.waiting = append(r.waiting, lk)
	}
	r.sendBlocking()
}

// convert handles a conversion of the granted lock lk to mode m.
func (r *resource) convert(lk *lkb, m Mode, flags Flags, w []byte) {
	lk.rq, lk.flags, lk.wlvb = m, flags, w
	switch {
	case r.canGrant(lk, true):
		r.grant(lk, OpConvert)
		r.grantPending()
	case flags&NoQueue != 0:
		lk.rq, lk.wlvb = noMode, nil
		r.emit(lk, OpConvert, StatusAgain)
	case r.deadlocked(lk):
		lk.rq, lk.wlvb = noMode, nil
		r.emit(lk, OpConvert, StatusDeadlock)
	default:
		r.unqueue(lk)
		lk.queue = qConverting
		r.converting = append(r.converting, lk)
	}
	r.sendBlocking()
}

// unlock releases granted lock lk.
func (r *resource) unlock(lk *lkb, flags Flags, w []byte) {
	r.writeLVB(lk.gr, flags, w)
	r.unqueue(lk)
	delete(r.locks, lk.id)
	lk.gr = noMode
	lk.flags = flags
	r.emit(lk, OpUnlock, StatusUnlocked)
	r.grantPending()
	r.sendBlocking()
}

// cancel drops a waiting request or reverts a pending conversion. It reports whether there
// was anything to cancel.
func (r *resource) cancel(lk *lkb) bool {
	switch lk.queue {
	case qWaiting:
		r.unqueue(lk)
		delete(r.locks, lk.id)
		lk.rq = noMode
		r.emit(lk, OpCancel, StatusCanceled)
	case qConverting:
		r.unqueue(lk)
		lk.rq, lk.wlvb = noMode, nil
		lk.queue = qGranted
		r.granted = append(r.granted, lk)
		r.emit(lk, OpCancel, StatusCanceled)
	default:
		return false
	}
	r.grantPending()
	r.sendBlocking()
	return true
}

// grantPending grants what the rules allow: conversions first (repeatedly, since one grant
// can enable another), conversion deadlocks are broken with EDEADLK, then the wait queue in
// FIFO order.
func (r *resource) grantPending() {
	for {
		progressed := false
		for _, lk := range append([]*lkb(nil), r.converting...) {
			if r.canGrant(lk, false) {
				r.grant(lk, OpConvert)
				progressed = true
			}
		}
		if progressed {
			continue
		}
		for _, lk := range r.converting {
			if r.deadlocked(lk) {
				r.unqueue(lk)
				lk.rq, lk.wlvb = noMode, nil
				lk.queue = qGranted
				r.granted = append(r.granted, lk)
				r.emit(lk, OpConvert, StatusDeadlock)
				progressed = true
				break
			}
		}
		if !progressed {
			break
		}
	}
	for len(r.waiting) > 0 && r.canGrant(r.waiting[0], false) {
		r.grant(r.waiting[0], OpLock)
	}
}

// sendBlocking sends blocking callbacks to granted locks (that asked for them) which block a
// queued request, carrying the requested mode; a lock is not told again about a mode no
// stronger than one it was already told about since its last grant.
func (r *resource) sendBlocking() {
	for _, q := range [][]*lkb{r.converting, r.waiting} {
		for _, b := range q {
			for _, g := range r.holders() {
				if g == b || g.flags&Blocking == 0 || Compatible(g.gr, b.rq) {
					continue
				}
				if g.bast != noMode && g.bast >= b.rq {
					continue
				}
				g.bast = b.rq
				r.out = append(r.out, event{lk: g, blocking: true, mode: b.rq})
			}
		}
	}
}

// remindBlocking repeats the blocking callbacks for queued lock b (its holder retransmitted,
// so messages are being lost and an earlier callback may have been too).
func (r *resource) remindBlocking(b *lkb) {
	for _, g := range r.holders() {
		if g != b && g.flags&Blocking != 0 && !Compatible(g.gr, b.rq) {
			g.bast = b.rq
			r.out = append(r.out, event{lk: g, blocking: true, mode: b.rq})
		}
	}
}

// failNoQueue fails queued NOQUEUE requests and conversions (after recovery regranted what it
// could, they were not grantable "at once").
func (r *resource) failNoQueue() {
	for _, lk := range append([]*lkb(nil), r.converting...) {
		if lk.flags&NoQueue != 0 {
			r.unqueue(lk)
			lk.rq, lk.wlvb = noMode, nil
			lk.queue = qGranted
			r.granted = append(r.granted, lk)
			r.emit(lk, OpConvert, StatusAgain)
		}
	}
	for _, lk := range append([]*lkb(nil), r.waiting...) {
		if lk.flags&NoQueue != 0 {
			r.unqueue(lk)
			delete(r.locks, lk.id)
			r.emit(lk, OpLock, StatusAgain)
		}
	}
}

// forget records that holder node (incarnation inc) no longer has locks below low on this
// resource, drops its older incarnations' locks and any of its locks below low (ghosts left
// by duplicated or late requests), and reports whether lock id is such a ghost.
func (r *resource) forget(node NodeID, inc, low uint64, id uint64) bool {
	m := r.low[node]
	if inc < m.inc {
		return true
	}
	switch {
	case inc > m.inc:
		m = lowMark{inc: inc, low: low}
	case low > m.low:
		m.low = low
	}
	r.low[node] = m
	removed := false
	for lid, lk := range r.locks {
		if lid.Node == node && (lid.Inc < m.inc || lid.Inc == m.inc && lid.ID < m.low) {
			r.unqueue(lk)
			delete(r.locks, lid)
			removed = true
		}
	}
	if removed {
		r.grantPending()
		r.sendBlocking()
	}
	return id < m.low
}

func (r *resource) takeEvents() []event {
	out := r.out
	r.out = nil
	return out
}
