package lockd

// The master side of lock traffic: requests in, replies and blocking callbacks out.

// flush turns a resource's events into replies and blocking callbacks.
func (c *Core) flush(res *resource) {
	for _, ev := range res.takeEvents() {
		lk := ev.lk
		m := Message{To: lk.id.Node, Epoch: c.epoch, Space: res.space, Resource: res.name, Lock: lk.id, Mode: ev.mode}
		if ev.blocking {
			m.Type = MsgBlocking
		} else {
			m.Type = MsgReply
			m.Op, m.Status, m.Seq, m.Token = ev.op, ev.status, lk.seq, lk.token
			if ev.withLVB {
				m.LVB, m.LVBSeq, m.LVBValid = ev.lvb, ev.lvbSeq, ev.lvbValid
			}
		}
		c.send(m)
	}
}

// onRequest runs a holder's operation at this master.
func (c *Core) onRequest(m Message) {
	k := resKey{m.Space, m.Resource}
	if !c.sameEpoch(m) || masterOf(c.view, k) != c.cfg.ID || !c.HasQuorum() {
		return // the holder retransmits, or re-sends it in recovery
	}
	if m.Lock.Node != m.From || m.Lock.Inc != m.Inc || (m.Op != OpUnlock && m.Op != OpCancel && !m.Mode.Valid()) {
		return
	}
	res := c.masters[k]
	if res == nil {
		res = newResource(k.space, k.name, c.epoch, &c.tokens)
		c.masters[k] = res
	}
	defer func() {
		c.flush(res)
		if res.idle() {
			delete(c.masters, k)
		}
	}()
	if res.forget(m.From, m.Inc, m.Low, m.Lock.ID) && m.Op == OpLock {
		return
	}
	lk := res.locks[m.Lock]
	if lk != nil && m.Seq < lk.seq {
		return // stale
	}
	switch m.Op {
	case OpLock:
		if lk != nil {
			switch {
			case m.Seq == lk.seq && lk.queue == qGranted:
				res.emit(lk, lk.lastOp, lk.lastStatus) // lost reply
			case m.Seq == lk.seq:
				res.remindBlocking(lk) // still waiting: a blocking callback may have been lost
			}
			return
		}
		lk = &lkb{id: m.Lock, rq: m.Mode, flags: m.Flags, seq: m.Seq}
		res.request(lk)
	case OpConvert:
		if lk != nil && lk.queue == qConverting && m.Seq == lk.seq {
			res.remindBlocking(lk)
			return
		}
		if lk == nil || lk.queue != qGranted {
			return
		}
		if m.Seq == lk.seq {
			res.emit(lk, lk.lastOp, lk.lastStatus) // lost reply of this conversion
			return
		}
		lk.seq = m.Seq
		res.convert(lk, m.Mode, m.Flags, m.LVB)
	case OpUnlock:
		if lk == nil {
			c.send(Message{Type: MsgReply, To: m.From, Epoch: c.epoch, Space: m.Space, Resource: m.Resource, Lock: m.Lock, Op: OpUnlock, Status: StatusUnlocked, Mode: noMode, Seq: m.Seq})
			return
		}
		if lk.queue != qGranted {
			return
		}
		lk.seq = m.Seq
		res.unlock(lk, m.Flags, m.LVB)
	case OpCancel:
		if lk != nil && lk.seq == m.Seq {
			res.cancel(lk)
		}
	}
}
