package lockd

import (
	"fmt"
	"slices"
)

// The holder side: the local lock API and the replies it waits for.

func (c *Core) onReply(m Message) {
	if !c.sameEpoch(m) || m.Lock.Node != c.cfg.ID || m.Lock.Inc != c.cfg.Incarnation {
		return
	}
	hl := c.locks[m.Lock.ID]
	if hl == nil {
		if m.Status == StatusGranted {
			// A grant for a lock we no longer know (a duplicated request): give it back.
			c.send(Message{Type: MsgRequest, To: m.From, Epoch: c.epoch, Space: m.Space, Resource: m.Resource, Lock: m.Lock, Op: OpUnlock, Seq: m.Seq + 1, Low: c.low(resKey{m.Space, m.Resource})})
		}
		return
	}
	if m.Op == OpRefresh {
		if hl.gr == m.Mode && hl.gr.Valid() {
			hl.token = m.Token
			if m.LVB != nil && hl.op == OpNone {
				hl.lvb, hl.lvbSeq, hl.lvbValid = m.LVB, m.LVBSeq, m.LVBValid
			}
		}
		return
	}
	if m.Seq != hl.seq || hl.op == OpNone {
		return
	}
	op := hl.op
	switch m.Status {
	case StatusGranted:
		if op != OpLock && op != OpConvert {
			return
		}
		hl.gr, hl.token = m.Mode, m.Token
		if m.LVB != nil {
			hl.lvb, hl.lvbSeq, hl.lvbValid = m.LVB, m.LVBSeq, m.LVBValid
		}
		hl.op, hl.rq, hl.cancel, hl.wlvb = OpNone, noMode, false, nil
		c.complete(hl, op, StatusGranted)
	case StatusAgain, StatusDeadlock, StatusCanceled:
		if op == OpUnlock {
			return
		}
		hl.op, hl.rq, hl.cancel, hl.wlvb = OpNone, noMode, false, nil
		if op == OpConvert && m.Mode.Valid() {
			// The master's word on what is granted now: after a sideways conversion was
			// interrupted by recovery it may be NL rather than the mode we had.
			hl.gr = m.Mode
		}
		c.complete(hl, op, m.Status)
		if !hl.gr.Valid() {
			c.dropLock(hl)
		}
	case StatusUnlocked:
		if op != OpUnlock {
			return
		}
		if m.LVB != nil {
			hl.lvb, hl.lvbSeq, hl.lvbValid = m.LVB, m.LVBSeq, m.LVBValid
		}
		hl.gr, hl.op = noMode, OpNone
		c.complete(hl, op, StatusUnlocked)
		c.dropLock(hl)
	}
}

func (c *Core) onBlocking(m Message) {
	if !c.sameEpoch(m) || m.Lock.Node != c.cfg.ID || m.Lock.Inc != c.cfg.Incarnation {
		return
	}
	if hl := c.locks[m.Lock.ID]; hl != nil && hl.gr.Valid() {
		c.ready.Blocking = append(c.ready.Blocking, BlockingEvent{Lock: hl.id, Space: hl.space, Resource: hl.res, Mode: m.Mode})
	}
}

func (c *Core) complete(hl *hlock, op Op, st Status) {
	cp := Completion{Lock: hl.id, Space: hl.space, Resource: hl.res, Op: op, Status: st, Mode: hl.gr, Token: hl.token}
	if st == StatusLost || st == StatusUnlocked {
		cp.Mode = noMode
	}
	if hl.lvb != nil && hl.flags&ValBlk != 0 && (st == StatusGranted || st == StatusUnlocked) {
		cp.LVB, cp.LVBSeq, cp.LVBValid = slices.Clone(hl.lvb), hl.lvbSeq, hl.lvbValid
	}
	c.ready.Completions = append(c.ready.Completions, cp)
}

func (c *Core) dropLock(hl *hlock) {
	delete(c.locks, hl.id)
	k := resKey{hl.space, hl.res}
	delete(c.byRes[k], hl.id)
	if len(c.byRes[k]) == 0 {
		delete(c.byRes, k)
	}
}

// low is the lowest lock ID this node still has on a resource (or the next ID if none): the
// master forgets our locks below it.
func (c *Core) low(k resKey) uint64 {
	low := c.nextID + 1
	for id := range c.byRes[k] {
		low = min(low, id)
	}
	return low
}

func (c *Core) sendOp(hl *hlock) {
	hl.sent, hl.sentAt = true, c.tick
	if c.phase != phaseNormal {
		hl.sent = false
		return
	}
	k := resKey{hl.space, hl.res}
	m := Message{Type: MsgRequest, To: masterOf(c.view, k), Epoch: c.epoch, Space: hl.space, Resource: hl.res,
		Lock: LockID{Node: c.cfg.ID, Inc: c.cfg.Incarnation, ID: hl.id}, Op: hl.op, Mode: hl.rq, Flags: hl.flags, Seq: hl.seq, LVB: hl.wlvb, Low: c.low(k)}
	c.send(m)
	if hl.cancel {
		m.Op, m.LVB = OpCancel, nil
		c.send(m)
	}
}

func validName(s string) bool { return s != "" && len(s) <= maxNameLen }

// Lock requests a new lock on resource res in lockspace space and returns its handle. The
// outcome arrives as a Completion (Op OpLock). Without quorum the request waits.
func (c *Core) Lock(space, res string, mode Mode, flags Flags) (uint64, error) {
	if !validName(space) || !validName(res) || !mode.Valid() || flags&^flagsMask != 0 || flags&(Convert|Cancel) != 0 {
		return 0, fmt.Errorf("%w: lock %q/%q mode %v flags %v", ErrInvalid, space, res, mode, flags)
	}
	c.nextID++
	c.opSeq++
	hl := &hlock{id: c.nextID, space: space, res: res, gr: noMode, op: OpLock, rq: mode, flags: flags, seq: c.opSeq}
	c.locks[hl.id] = hl
	k := resKey{space, res}
	if c.byRes[k] == nil {
		c.byRes[k] = map[uint64]*hlock{}
	}
	c.byRes[k][hl.id] = hl
	c.sendOp(hl)
	c.drain()
	return hl.id, nil
}

// Convert asks to change granted lock id to mode. With ValBlk, a PW or EX holder converting
// down writes lvb (at most LVBSize bytes) to the value block.
func (c *Core) Convert(id uint64, mode Mode, flags Flags, lvb []byte) error {
	hl := c.locks[id]
	switch {
	case hl == nil:
		return fmt.Errorf("%w: %d", ErrUnknownLock, id)
	case !mode.Valid() || flags&^flagsMask != 0 || flags&Cancel != 0 || len(lvb) > LVBSize:
		return fmt.Errorf("%w: convert %d to %v flags %v", ErrInvalid, id, mode, flags)
	case hl.op != OpNone || !hl.gr.Valid():
		return fmt.Errorf("%w: lock %d", ErrBusy, id)
	}
	c.opSeq++
	hl.op, hl.rq, hl.flags, hl.seq, hl.cancel, hl.wlvb = OpConvert, mode, flags|Convert, c.opSeq, false, slices.Clone(lvb)
	c.sendOp(hl)
	c.drain()
	return nil
}

// Unlock releases granted lock id. With ValBlk, a PW or EX holder writes lvb; with IvValBlk
// it marks the value block invalid.
func (c *Core) Unlock(id uint64, flags Flags, lvb []byte) error {
	hl := c.locks[id]
	switch {
	case hl == nil:
		return fmt.Errorf("%w: %d", ErrUnknownLock, id)
	case flags&^(ValBlk|IvValBlk) != 0 || len(lvb) > LVBSize:
		return fmt.Errorf("%w: unlock %d flags %v", ErrInvalid, id, flags)
	case hl.op != OpNone || !hl.gr.Valid():
		return fmt.Errorf("%w: lock %d", ErrBusy, id)
	}
	c.opSeq++
	hl.op, hl.flags, hl.seq, hl.cancel, hl.wlvb = OpUnlock, flags|(hl.flags&(ValBlk|Blocking)), c.opSeq, false, slices.Clone(lvb)
	if flags&ValBlk == 0 {
		hl.flags &^= ValBlk
		hl.wlvb = nil
	}
	c.sendOp(hl)
	c.drain()
	return nil
}

// Cancel cancels the pending request or conversion of lock id. The canceled operation
// completes with StatusCanceled — or normally, if the master granted it first.
func (c *Core) Cancel(id uint64) error {
	hl := c.locks[id]
	switch {
	case hl == nil:
		return fmt.Errorf("%w: %d", ErrUnknownLock, id)
	case hl.op != OpLock && hl.op != OpConvert:
		return fmt.Errorf("%w: lock %d has nothing to cancel", ErrInvalid, id)
	}
	if hl.cancel {
		return nil
	}
	hl.cancel = true
	if hl.sent && c.phase == phaseNormal {
		k := resKey{hl.space, hl.res}
		c.send(Message{Type: MsgRequest, To: masterOf(c.view, k), Epoch: c.epoch, Space: hl.space, Resource: hl.res,
			Lock: LockID{Node: c.cfg.ID, Inc: c.cfg.Incarnation, ID: hl.id}, Op: OpCancel, Seq: hl.seq, Low: c.low(k)})
	}
	c.drain()
	return nil
}

// LockInfo is a holder's view of one of its locks.
type LockInfo struct {
	ID              uint64
	Space, Resource string
	Granted         Mode // noMode ("--") if not granted
	Pending         Op
	Requested       Mode
	Token           Token
	LVB             []byte
	LVBSeq          uint64
	LVBValid        bool
}

// LockInfo returns the state of lock id, or false if it is unknown.
func (c *Core) LockInfo(id uint64) (LockInfo, bool) {
	hl := c.locks[id]
	if hl == nil {
		return LockInfo{}, false
	}
	li := LockInfo{ID: hl.id, Space: hl.space, Resource: hl.res, Granted: hl.gr, Pending: hl.op, Requested: noMode, Token: hl.token,
		LVB: slices.Clone(hl.lvb), LVBSeq: hl.lvbSeq, LVBValid: hl.lvbValid}
	if hl.op == OpLock || hl.op == OpConvert {
		li.Requested = hl.rq
	}
	return li, true
}

// Locks returns this node's locks in handle order.
func (c *Core) Locks() []LockInfo {
	var out []LockInfo
	for _, id := range c.sortedLockIDs() {
		li, _ := c.LockInfo(id)
		out = append(out, li)
	}
	return out
}
