package lockd

import "slices"

// Recovery: ballots, the stop/rebuild/done rounds, and rebuilding masters from records.

func (c *Core) sendJoin(to NodeID) {
	c.send(Message{Type: MsgJoin, To: to, Ballot: c.promised, Epoch: c.epoch, Accepted: c.accepted, Normal: c.phase == phaseNormal})
}

func (c *Core) coordinator() NodeID {
	if len(c.localView) == 0 {
		return ""
	}
	return c.localView[0]
}

func (c *Core) needRecovery() bool {
	return slices.Contains(c.localView, c.cfg.ID) && (c.phase != phaseNormal || !slices.Equal(c.view, c.localView))
}

// maybeRecover starts a recovery ballot if this node coordinates its view and the view is not
// the agreed one (or force: a member asked).
func (c *Core) maybeRecover(force bool) {
	if c.coordinator() != c.cfg.ID {
		c.coord = nil
		return
	}
	if !c.majority(c.localView) {
		return
	}
	if !force && !c.needRecovery() {
		return
	}
	if !force && c.coord != nil && slices.Equal(c.coord.view, c.localView) {
		return
	}
	c.maxBallotN = max(c.maxBallotN, c.promised.N) + 1
	k := &coordination{
		ballot:  Ballot{N: c.maxBallotN, Node: c.cfg.ID, Inc: c.cfg.Incarnation},
		view:    slices.Clone(c.localView),
		acks:    map[NodeID]uint64{},
		incs:    map[NodeID]uint64{},
		rebuilt: map[NodeID]bool{},
	}
	c.coord = k
	for _, n := range k.view {
		c.send(Message{Type: MsgStop, To: n, Ballot: k.ballot, View: k.view})
	}
}

func (c *Core) rebuildMsg(to NodeID) Message {
	k := c.coord
	return Message{Type: MsgRebuild, To: to, Ballot: k.ballot, Epoch: k.epoch, Accepted: k.prevEpoch, AccBy: k.prevBy, View: k.view}
}

// coordProgress sends Rebuild once every member stopped and, if the view leaves out any
// voter, once the lease of every node outside the view has run out.
func (c *Core) coordProgress() {
	k := c.coord
	if k == nil || !k.allAcked || k.rebuildSent {
		return
	}
	if len(k.view) < len(c.cfg.Voters) {
		wait := uint64(c.cfg.LeaseTicks + c.cfg.DriftTicks + 1)
		if c.tick < k.allAckedAt+wait {
			return
		}
	}
	k.rebuildSent = true
	for _, n := range k.view {
		c.send(c.rebuildMsg(n))
	}
}

// catchUp finishes our recovery when a peer already works in the epoch we rebuilt for (same
// number, same ballot): it can only do so after the coordinator's Done, which we may have
// missed.
func (c *Core) catchUp(m Message) {
	if c.phase == phaseRebuild && c.rec.built && m.Normal && m.Epoch == c.accepted && m.Accepted == c.accepted &&
		m.AccBy == c.acceptedBy && slices.Contains(c.rec.view, m.From) {
		c.finishRecovery()
	}
}

func (c *Core) onHeartbeat(m Message) {
	if m.Normal {
		c.catchUp(m)
	}
	// Answer only members of our view that know every rebuild we know: a node purged by an
	// epoch it missed must not regain a lease before it has caught up.
	// A node that has not taken part in any rebuild since it started knows nothing (a
	// restart forgets), so it answers no one.
	if c.accepted > 0 && slices.Contains(c.workingView(), m.From) && !acceptedLess(m.Accepted, m.AccBy, c.accepted, c.acceptedBy) {
		c.send(Message{Type: MsgHeartbeatAck, To: m.From, Tick: m.Tick, Epoch: c.epoch})
	}
	if c.phase == phaseNormal && m.Normal && m.Epoch > c.epoch && slices.Contains(c.view, m.From) {
		if co := c.coordinator(); co != "" {
			c.sendJoin(co)
		}
	}
}

func (c *Core) onJoin(m Message) {
	if c.coordinator() != c.cfg.ID || !slices.Contains(c.localView, m.From) {
		return
	}
	if k := c.coord; k != nil {
		if !slices.Contains(k.view, m.From) {
			return
		}
		if k.ballot.Less(m.Ballot) {
			// The member promised a newer ballot than ours: start over above it.
			c.maxBallotN = max(c.maxBallotN, m.Ballot.N)
			c.coord = nil
			c.maybeRecover(true)
			return
		}
		if !k.allAcked {
			c.send(Message{Type: MsgStop, To: m.From, Ballot: k.ballot, View: k.view})
		} else if k.rebuildSent {
			c.send(c.rebuildMsg(m.From))
		}
		return
	}
	if c.phase != phaseNormal {
		return
	}
	switch {
	case max(m.Epoch, m.Accepted) > c.knownEpoch():
		c.maybeRecover(true) // an epoch formed without us: we are the stale ones
	case c.promised.Less(m.Ballot):
		// The member promised a ballot that completed nowhere (its coordinator gave up):
		// run a new one above it.
		c.maxBallotN = max(c.maxBallotN, m.Ballot.N)
		c.maybeRecover(true)
	case m.Ballot == c.promised:
		c.send(Message{Type: MsgDone, To: m.From, Ballot: c.promised, Epoch: c.epoch})
	case m.Ballot.Less(c.promised):
		// The member took part in our last ballot unless it restarted since; an older
		// ballot in its Join is then just a late message.
		if inc, ok := c.viewIncs[m.From]; !ok || inc != m.Inc {
			c.maybeRecover(true)
		}
	}
}

func (c *Core) onStop(m Message) {
	if !slices.Equal(m.View, c.localView) || !slices.Contains(m.View, c.cfg.ID) {
		return
	}
	c.maxBallotN = max(c.maxBallotN, m.Ballot.N)
	if m.Ballot.Less(c.promised) {
		c.send(Message{Type: MsgNack, To: m.From, Ballot: c.promised})
		return
	}
	if m.Ballot != c.promised || c.rec == nil || c.phase == phaseNormal {
		if m.Ballot == c.promised && c.phase == phaseNormal {
			return // this ballot already completed here
		}
		c.promised = m.Ballot
		c.saveHardState()
		c.rec = &recovery{ballot: m.Ballot, view: slices.Clone(m.View), inbox: map[NodeID]map[uint64]Message{},
			parts: map[NodeID]uint64{}, outLocks: map[NodeID][]Message{}, acked: map[NodeID]map[uint64]bool{}}
		c.phase = phaseStopped
		if c.coord != nil && c.coord.ballot != m.Ballot {
			c.coord = nil
		}
	}
	c.send(Message{Type: MsgStopAck, To: m.From, Ballot: m.Ballot, Accepted: c.accepted, AccBy: c.acceptedBy})
}

func (c *Core) onStopAck(m Message) {
	k := c.coord
	if k == nil || m.Ballot != k.ballot || !slices.Contains(k.view, m.From) {
		return
	}
	k.acks[m.From] = m.Accepted
	k.incs[m.From] = m.Inc
	if acceptedLess(k.prevEpoch, k.prevBy, m.Accepted, m.AccBy) {
		k.prevEpoch, k.prevBy = m.Accepted, m.AccBy
	}
	if k.allAcked || len(k.acks) < len(k.view) {
		return
	}
	k.allAcked = true
	k.allAckedAt = c.tick
	k.epoch = k.prevEpoch + 1
	c.coordProgress()
}

// onRebuild: the epoch is decided. Purge what a later epoch purged already (if this node
// missed it), hand every lock and every old mastership to the new masters, drop master state.
func (c *Core) onRebuild(m Message) {
	r := c.rec
	if m.Ballot.Less(c.promised) {
		c.send(Message{Type: MsgNack, To: m.From, Ballot: c.promised})
		return
	}
	if r == nil || m.Ballot != c.promised || c.phase == phaseNormal {
		return
	}
	if c.phase == phaseRebuild {
		c.resendLocks()
		return
	}
	// Stale: a newer rebuild than our last one happened without us; it purged our grants.
	stale := acceptedLess(c.accepted, c.acceptedBy, m.Accepted, m.AccBy)
	c.accepted, c.acceptedBy = m.Epoch, m.Ballot
	c.saveHardState()
	r.epoch = m.Epoch
	c.phase = phaseRebuild
	if stale {
		// A later epoch formed without us and purged our granted locks; our masterships are
		// history too.
		for _, id := range c.sortedLockIDs() {
			hl := c.locks[id]
			if hl.gr == noMode {
				hl.sent = false
				continue
			}
			c.complete(hl, hl.op, StatusLost)
			c.dropLock(hl)
		}
		c.masters = map[resKey]*resource{}
	}
	out := map[NodeID]*Message{}
	for _, n := range r.view {
		out[n] = &Message{Type: MsgRebuildLocks, To: n, Ballot: r.ballot, Epoch: r.epoch}
	}
	for _, id := range c.sortedLockIDs() {
		hl := c.locks[id]
		k := resKey{hl.space, hl.res}
		rec := LockRecord{
			Space: hl.space, Resource: hl.res,
			Lock:    LockID{Node: c.cfg.ID, Inc: c.cfg.Incarnation, ID: hl.id},
			Granted: hl.gr, Op: hl.op, Mode: hl.rq, Flags: hl.flags, Seq: hl.seq, Cancel: hl.cancel,
			LVB: hl.lvb, LVBSeq: hl.lvbSeq, LVBValid: hl.lvbValid, Write: hl.wlvb,
		}
		if hl.op == OpNone {
			rec.Mode = noMode
		}
		o := out[masterOf(r.view, k)]
		o.Records = append(o.Records, rec)
		hl.sent = hl.op != OpNone
	}
	keys := make([]resKey, 0, len(c.masters))
	for k := range c.masters {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b resKey) int {
		if a.space != b.space {
			return cmpStr(a.space, b.space)
		}
		return cmpStr(a.name, b.name)
	})
	for _, k := range keys {
		res := c.masters[k]
		mr := MasterRecord{Space: k.space, Resource: k.name, LVB: slices.Clone(res.lvb), LVBSeq: res.lvbSeq, LVBValid: res.lvbValid}
		for _, lk := range res.holders() {
			if lk.gr >= PW {
				mr.Big = append(mr.Big, lk.id)
			}
		}
		o := out[masterOf(r.view, k)]
		o.Masters = append(o.Masters, mr)
	}
	c.masters = map[resKey]*resource{}
	c.tokens = 0
	for _, n := range r.view {
		r.outLocks[n] = splitRebuild(*out[n])
		r.acked[n] = map[uint64]bool{}
		for _, part := range r.outLocks[n] {
			c.send(part)
		}
	}
}

// rebuildChunk bounds the records in one rebuild-locks message, so that frames stay well
// under a transport's frame limit (1 MiB by default) even with the longest names.
const rebuildChunk = 256

// splitRebuild cuts a rebuild-locks message into parts of at most rebuildChunk records
// (lock and master records together); there is always at least one part.
func splitRebuild(m Message) []Message {
	var parts []Message
	recs, masters := m.Records, m.Masters
	for {
		p := m
		nr := min(len(recs), rebuildChunk)
		nm := min(len(masters), rebuildChunk-nr)
		p.Records, p.Masters = recs[:nr], masters[:nm]
		recs, masters = recs[nr:], masters[nm:]
		parts = append(parts, p)
		if len(recs) == 0 && len(masters) == 0 {
			break
		}
	}
	for i := range parts {
		parts[i].Part, parts[i].Parts = uint64(i), uint64(len(parts))
	}
	return parts
}

// resendLocks re-sends our rebuild parts that have not been confirmed (in view order: output
// order must not depend on map order).
func (c *Core) resendLocks() {
	r := c.rec
	for _, n := range r.view {
		for i, part := range r.outLocks[n] {
			if !r.acked[n][uint64(i)] {
				c.send(part)
			}
		}
	}
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (c *Core) onRebuildLocks(m Message) {
	r := c.rec
	if r == nil || m.Ballot != r.ballot || !slices.Contains(r.view, m.From) {
		return
	}
	if m.Parts == 0 || m.Part >= m.Parts || (r.parts[m.From] != 0 && r.parts[m.From] != m.Parts) || !validRecords(m) {
		return // malformed, or disagrees with earlier parts of the same ballot
	}
	if !r.built {
		if r.inbox[m.From] == nil {
			r.inbox[m.From] = map[uint64]Message{}
		}
		r.parts[m.From] = m.Parts
		r.inbox[m.From][m.Part] = m
	}
	c.send(Message{Type: MsgRebuildLocksAck, To: m.From, Ballot: m.Ballot, Part: m.Part})
	c.tryBuild()
}

// validRecords checks a rebuild part from a peer: a node reports only its own locks, and
// every record is one a holder can be in.
func validRecords(m Message) bool {
	for _, x := range m.Records {
		if x.Lock.Node != m.From || !validName(x.Space) || !validName(x.Resource) {
			return false
		}
		switch x.Op {
		case OpNone, OpUnlock:
			if !x.Granted.Valid() {
				return false
			}
		case OpLock:
			if x.Granted != noMode || !x.Mode.Valid() {
				return false
			}
		case OpConvert:
			if !x.Granted.Valid() || !x.Mode.Valid() {
				return false
			}
		default:
			return false
		}
	}
	for _, x := range m.Masters {
		if !validName(x.Space) || !validName(x.Resource) {
			return false
		}
	}
	return true
}

func (c *Core) tryBuild() {
	r := c.rec
	if c.phase != phaseRebuild || r.built {
		return
	}
	for _, n := range r.view {
		if r.parts[n] == 0 || uint64(len(r.inbox[n])) < r.parts[n] {
			return
		}
	}
	recs := map[resKey][]LockRecord{}
	mrecs := map[resKey][]MasterRecord{}
	for _, n := range r.view {
		for i := range r.parts[n] {
			m := r.inbox[n][i]
			for _, x := range m.Records {
				k := resKey{x.Space, x.Resource}
				recs[k] = append(recs[k], x)
			}
			for _, x := range m.Masters {
				k := resKey{x.Space, x.Resource}
				mrecs[k] = append(mrecs[k], x)
			}
		}
	}
	for k, rs := range recs {
		c.masters[k] = rebuildResource(k, r.epoch, &c.tokens, rs, mrecs[k])
	}
	for k, ms := range mrecs {
		if _, ok := c.masters[k]; !ok {
			res := rebuildResource(k, r.epoch, &c.tokens, nil, ms)
			if !res.idle() {
				c.masters[k] = res
			}
		}
	}
	r.inbox = nil
	r.built = true
	c.send(Message{Type: MsgRebuilt, To: r.ballot.Node, Ballot: r.ballot})
}

// rebuildResource makes a resource at its new master from the holders' records and the old
// masters' LVBs: purge (dead holders simply sent nothing), LVB recovery, pending unlocks and
// cancels. Grants wait for finishRecovery.
func rebuildResource(k resKey, epoch uint64, tokens *uint64, rs []LockRecord, ms []MasterRecord) *resource {
	res := newResource(k.space, k.name, epoch, tokens)
	slices.SortFunc(rs, func(a, b LockRecord) int {
		switch {
		case a.Seq != b.Seq:
			if a.Seq < b.Seq {
				return -1
			}
			return 1
		case a.Lock.Node != b.Lock.Node:
			return cmpStr(string(a.Lock.Node), string(b.Lock.Node))
		}
		return 0
	})
	present := map[LockID]bool{}
	for _, x := range rs {
		present[x.Lock] = true
	}
	// LVB recovery.
	switch {
	case len(ms) > 0:
		best := ms[0]
		for _, m := range ms[1:] {
			if m.LVBSeq > best.LVBSeq {
				best = m
			}
		}
		copy(res.lvb, best.LVB)
		res.lvbSeq, res.lvbValid = best.LVBSeq, best.LVBValid
		for _, b := range best.Big {
			if !present[b] {
				res.lvbValid = false // a PW/EX holder died
			}
		}
	default:
		var big, high *LockRecord
		for i := range rs {
			x := &rs[i]
			if x.LVB == nil || !x.Granted.Valid() {
				continue
			}
			if x.Granted > CR && big == nil {
				big = x
			}
			if high == nil || x.LVBSeq > high.LVBSeq {
				high = x
			}
		}
		switch {
		case big != nil:
			copy(res.lvb, big.LVB)
			res.lvbSeq, res.lvbValid = big.LVBSeq, big.LVBValid
		case high != nil:
			copy(res.lvb, high.LVB)
			res.lvbSeq, res.lvbValid = high.LVBSeq, false // only NL/CR left
		}
	}
	downs := map[*lkb]bool{}
	for _, x := range rs {
		lk := &lkb{id: x.Lock, gr: x.Granted, rq: noMode, flags: x.Flags, seq: x.Seq, bast: noMode, cancel: x.Cancel}
		res.locks[lk.id] = lk
		if lm := res.low[lk.id.Node]; lk.id.Inc > lm.inc {
			res.low[lk.id.Node] = lowMark{inc: lk.id.Inc}
		}
		if lk.gr.Valid() {
			lk.queue = qGranted
			res.granted = append(res.granted, lk)
		}
		switch x.Op {
		case OpLock:
			lk.rq = x.Mode
			lk.queue = qWaiting
			res.waiting = append(res.waiting, lk)
		case OpConvert:
			lk.rq, lk.wlvb = x.Mode, x.Write
			switch {
			case weaker(x.Mode, x.Granted):
				// A down-conversion is granted at once, so the old master may have granted
				// it and then granted others on the strength of it: it stays granted (below).
				downs[lk] = true
				continue
			case !weaker(x.Granted, x.Mode):
				// Sideways (PR <-> CW): the old master may have granted either side's
				// neighbours. Hold nothing (NL) until the conversion is granted; a cancel
				// cannot restore the old mode safely, so it is dropped.
				lk.gr, lk.cancel = NL, false
			}
			res.unqueue(lk)
			lk.queue = qConverting
			res.converting = append(res.converting, lk)
		case OpUnlock:
			lk.wlvb = x.Write
		}
	}
	for _, x := range rs {
		lk := res.locks[x.Lock]
		switch {
		case downs[lk]:
			res.grant(lk, OpConvert)
		case x.Op == OpUnlock && lk.gr.Valid():
			res.unlock(lk, x.Flags, lk.wlvb)
		case x.Op == OpUnlock:
			res.unqueue(lk)
			delete(res.locks, lk.id)
			res.emit(lk, OpUnlock, StatusUnlocked)
		case x.Cancel:
			res.cancel(lk)
		}
	}
	for _, lk := range slices.Clone(res.converting) {
		if res.deadlocked(lk) {
			res.unqueue(lk)
			lk.rq, lk.wlvb = noMode, nil
			lk.queue = qGranted
			res.granted = append(res.granted, lk)
			res.emit(lk, OpConvert, StatusDeadlock)
		}
	}
	return res
}

func (c *Core) onRebuilt(m Message) {
	k := c.coord
	if k == nil || m.Ballot != k.ballot || !k.rebuildSent || !slices.Contains(k.view, m.From) {
		return
	}
	k.rebuilt[m.From] = true
	if k.doneSent || len(k.rebuilt) < len(k.view) {
		return
	}
	k.doneSent = true
	c.viewIncs = k.incs
	for _, n := range k.view {
		c.send(Message{Type: MsgDone, To: n, Ballot: k.ballot, Epoch: k.epoch})
	}
}

// finishRecovery enables locking in the new epoch: every surviving grant gets a fresh token,
// pending requests are granted by the rules, and requests made meanwhile go out.
func (c *Core) finishRecovery() {
	r := c.rec
	c.epoch, c.epochBy = r.epoch, r.ballot
	c.view = slices.Clone(r.view)
	c.phase = phaseNormal
	if c.coord != nil && c.coord.ballot == r.ballot {
		c.coord = nil
	}
	for _, k := range c.masterKeys() {
		res := c.masters[k]
		res.epoch = c.epoch
		done := map[*lkb]bool{}
		for _, ev := range res.out {
			done[ev.lk] = true
		}
		for _, lk := range res.holders() {
			if !done[lk] {
				c.tokens++
				lk.token = Token{Epoch: c.epoch, Seq: c.tokens}
				res.emit(lk, OpRefresh, StatusGranted)
			}
		}
		res.grantPending()
		res.failNoQueue()
		res.sendBlocking()
		c.flush(res)
		if res.idle() {
			delete(c.masters, k)
		}
	}
	for _, id := range c.sortedLockIDs() {
		hl := c.locks[id]
		if hl.op != OpNone && !hl.sent {
			c.sendOp(hl)
		}
	}
}

func (c *Core) masterKeys() []resKey {
	keys := make([]resKey, 0, len(c.masters))
	for k := range c.masters {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b resKey) int {
		if a.space != b.space {
			return cmpStr(a.space, b.space)
		}
		return cmpStr(a.name, b.name)
	})
	return keys
}
