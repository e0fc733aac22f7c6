package lockd

import (
	"fmt"
	"hash/fnv"
	"slices"
)

// Config configures a Core. Times are in ticks: the driver decides how long a tick is
// (Node: NodeConfig.TickInterval).
type Config struct {
	// ID is this node. It must be one of Voters.
	ID NodeID
	// Incarnation distinguishes boots of the same ID; it must grow from boot to boot (the
	// Node uses the boot time in nanoseconds).
	Incarnation uint64
	// Voters is the configured node set; quorum is a strict majority of it. Every node must
	// be given the same set.
	Voters []NodeID
	// HeartbeatTicks between lease heartbeats (default 1).
	HeartbeatTicks int
	// LeaseTicks a heartbeat answer keeps counting toward the quorum lease (default 8). Must
	// exceed HeartbeatTicks plus a round trip.
	LeaseTicks int
	// DriftTicks is the margin a recovery that removes nodes adds to LeaseTicks before it
	// grants, for ticks running at slightly different rates on different nodes (default 2).
	DriftTicks int
	// RetryTicks between retransmissions of unanswered requests and recovery messages
	// (default 3).
	RetryTicks int
	// HardState is what this node saved (Ready.HardState) before it last stopped. The zero
	// value is a node that never ran (or lost its state: then fencing tokens may repeat an
	// epoch number if every member of the last epoch restarts at once).
	HardState HardState
}

// HardState is the little a node must keep across restarts, as raft's HardState: the
// recovery ballot it promised and the newest rebuild it took part in. It keeps epoch numbers
// (and so fencing tokens) from repeating after restarts. Locks themselves are not persisted:
// a restarted node holds none, as in the DLM.
type HardState struct {
	Promised   Ballot
	Accepted   uint64
	AcceptedBy Ballot
}

func (cfg *Config) validate() error {
	if cfg.ID == "" {
		return fmt.Errorf("%w: empty node ID", ErrInvalid)
	}
	if len(cfg.Voters) == 0 {
		return fmt.Errorf("%w: no voters", ErrInvalid)
	}
	v := slices.Clone(cfg.Voters)
	slices.Sort(v)
	v = slices.Compact(v)
	if len(v) != len(cfg.Voters) {
		return fmt.Errorf("%w: duplicate voter", ErrInvalid)
	}
	if !slices.Contains(v, cfg.ID) {
		return fmt.Errorf("%w: node %s is not a voter", ErrInvalid, cfg.ID)
	}
	for _, n := range v {
		if n == "" || len(n) > maxNameLen {
			return fmt.Errorf("%w: bad voter name %q", ErrInvalid, n)
		}
	}
	cfg.Voters = v
	def := func(p *int, d int) {
		if *p <= 0 {
			*p = d
		}
	}
	def(&cfg.HeartbeatTicks, 1)
	def(&cfg.LeaseTicks, 8)
	def(&cfg.DriftTicks, 2)
	def(&cfg.RetryTicks, 3)
	if cfg.LeaseTicks <= cfg.HeartbeatTicks {
		return fmt.Errorf("%w: LeaseTicks %d must exceed HeartbeatTicks %d", ErrInvalid, cfg.LeaseTicks, cfg.HeartbeatTicks)
	}
	return nil
}

// Completion reports the end of a lock operation (the DLM's completion AST).
type Completion struct {
	Lock            uint64 // the handle Core.Lock returned
	Space, Resource string
	Op              Op     // the operation that completed (OpLock, OpConvert, OpUnlock, OpCancel)
	Status          Status // outcome
	Mode            Mode   // mode now granted (noMode once the lock is gone)
	LVB             []byte // with ValBlk: the value block
	LVBSeq          uint64
	LVBValid        bool
	Token           Token // fencing token of the grant
}

// BlockingEvent asks the holder of Lock to release or convert down (the DLM's blocking AST);
// Mode is the mode another lock is waiting for.
type BlockingEvent struct {
	Lock            uint64
	Space, Resource string
	Mode            Mode
}

// Ready is what the core asks its driver to do: save HardState (when not nil) durably BEFORE
// sending Messages, then send them and deliver Completions and Blocking callbacks.
type Ready struct {
	HardState   *HardState
	Messages    []Message
	Completions []Completion
	Blocking    []BlockingEvent
}

// Empty reports whether there is nothing to do.
func (r Ready) Empty() bool {
	return r.HardState == nil && len(r.Messages) == 0 && len(r.Completions) == 0 && len(r.Blocking) == 0
}

type phase uint8

const (
	phaseInit    phase = iota // never joined (or restarted)
	phaseNormal               // view agreed; locking enabled
	phaseStopped              // promised a recovery ballot; locking stopped
	phaseRebuild              // recovery epoch decided; rebuilding masters
)

var phaseNames = [...]string{"init", "normal", "stopped", "rebuild"}

func (p phase) String() string { return phaseNames[p] }

// hlock is the holder side of one lock.
type hlock struct {
	id          uint64
	space, res  string
	gr          Mode
	op          Op // pending operation
	rq          Mode
	flags       Flags
	seq         uint64
	sent        bool
	sentAt      uint64
	cancel      bool
	wlvb        []byte
	lvb         []byte
	lvbSeq      uint64
	lvbValid    bool
	token       Token
	everGranted bool
}

type resKey struct{ space, name string }

// recovery is a member's state for the ballot it promised.
type recovery struct {
	ballot   Ballot
	view     []NodeID
	epoch    uint64
	inbox    map[NodeID]Message // RebuildLocks received, by sender
	outLocks map[NodeID]Message // RebuildLocks sent, for retransmission
	acked    map[NodeID]bool    // receipts of our RebuildLocks
	built    bool
}

// coordination is the coordinator's state for its own ballot.
type coordination struct {
	ballot      Ballot
	view        []NodeID
	acks        map[NodeID]uint64 // accepted epoch per member
	incs        map[NodeID]uint64
	allAckedAt  uint64
	allAcked    bool
	prevEpoch   uint64 // the newest rebuild any member took part in: (prevEpoch, prevBy)
	prevBy      Ballot
	epoch       uint64
	rebuildSent bool
	rebuilt     map[NodeID]bool
	doneSent    bool
}

// Core is the lock manager of one node as a deterministic state machine. It is not safe for
// concurrent use; the driver serialises all calls.
type Core struct {
	cfg   Config
	tick  uint64
	local []Message // messages to ourselves, processed before a call returns

	localView  []NodeID // latest member list from outside
	view       []NodeID // agreed member list of epoch
	epoch      uint64
	accepted   uint64 // epoch of the last rebuild this node took part in
	acceptedBy Ballot // the ballot of that rebuild: (accepted, acceptedBy) orders rebuilds
	epochBy    Ballot // the ballot that completed epoch
	phase      phase
	promised   Ballot
	maxBallotN uint64
	rec        *recovery
	coord      *coordination
	viewIncs   map[NodeID]uint64 // coordinator: incarnations of the last completed view
	ackTick    map[NodeID]uint64 // 1 + our tick when the newest heartbeat it answered was sent
	lastJoin   uint64

	nextID uint64
	opSeq  uint64
	locks  map[uint64]*hlock
	byRes  map[resKey]map[uint64]*hlock

	masters map[resKey]*resource
	tokens  uint64 // grants made as master in the current epoch (token sequence)

	ready Ready
}

// NewCore makes the state machine of one node. It starts outside any epoch: it needs
// SetMembers (and peers) to join.
func NewCore(cfg Config) (*Core, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	hs := cfg.HardState
	return &Core{
		promised:   hs.Promised,
		maxBallotN: hs.Promised.N,
		accepted:   hs.Accepted,
		acceptedBy: hs.AcceptedBy,
		cfg:        cfg,
		ackTick:    map[NodeID]uint64{},
		locks:      map[uint64]*hlock{},
		byRes:      map[resKey]map[uint64]*hlock{},
		masters:    map[resKey]*resource{},
	}, nil
}

// ID returns this node's ID.
func (c *Core) ID() NodeID { return c.cfg.ID }

// Epoch returns the last completed membership epoch this node took part in (0: none yet).
func (c *Core) Epoch() uint64 { return c.epoch }

// Members returns the agreed member list of the current epoch.
func (c *Core) Members() []NodeID { return slices.Clone(c.view) }

// Normal reports whether recovery is complete and locking is enabled on this node.
func (c *Core) Normal() bool { return c.phase == phaseNormal }

// HasQuorum reports whether this node holds the quorum lease: it may grant, and its granted
// locks are valid. A node in a minority loses it within LeaseTicks.
func (c *Core) HasQuorum() bool {
	wv := c.workingView()
	if !slices.Contains(wv, c.cfg.ID) {
		return false
	}
	n := 1
	for _, v := range c.cfg.Voters {
		if v == c.cfg.ID {
			continue
		}
		if at := c.ackTick[v]; at > 0 && c.tick-(at-1) < uint64(c.cfg.LeaseTicks) {
			n++
		}
	}
	return 2*n > len(c.cfg.Voters)
}

// Ready returns what the driver must do. Call Advance after doing it.
func (c *Core) Ready() Ready { return c.ready }

// HasReady reports whether Ready has anything.
func (c *Core) HasReady() bool { return !c.ready.Empty() }

// Advance acknowledges the last Ready.
func (c *Core) Advance() { c.ready = Ready{} }

func (c *Core) saveHardState() {
	c.ready.HardState = &HardState{Promised: c.promised, Accepted: c.accepted, AcceptedBy: c.acceptedBy}
}

func (c *Core) knownEpoch() uint64 { return max(c.epoch, c.accepted) }

// acceptedLess orders rebuilds: by epoch, then by ballot. Two ballots can pick the same epoch
// number; only the higher of them can complete.
func acceptedLess(e1 uint64, b1 Ballot, e2 uint64, b2 Ballot) bool {
	if e1 != e2 {
		return e1 < e2
	}
	return b1.Less(b2)
}

func (c *Core) workingView() []NodeID {
	switch c.phase {
	case phaseNormal:
		return c.view
	case phaseStopped, phaseRebuild:
		return c.rec.view
	}
	return nil
}

func (c *Core) majority(v []NodeID) bool {
	n := 0
	for _, x := range v {
		if slices.Contains(c.cfg.Voters, x) {
			n++
		}
	}
	return 2*n > len(c.cfg.Voters)
}

// masterOf picks the master of a resource: a hash of its names over the sorted view.
func masterOf(view []NodeID, k resKey) NodeID {
	if len(view) == 0 {
		return ""
	}
	h := fnv.New64a()
	h.Write([]byte(k.space))
	h.Write([]byte{0})
	h.Write([]byte(k.name))
	return view[h.Sum64()%uint64(len(view))]
}

func (c *Core) send(m Message) {
	m.From = c.cfg.ID
	m.Inc = c.cfg.Incarnation
	if m.Type == MsgRequest || m.Type == MsgReply || m.Type == MsgBlocking {
		m.AccBy = c.epochBy // lock traffic names its epoch by number and ballot
	}
	if m.To == c.cfg.ID {
		c.local = append(c.local, m)
		return
	}
	c.ready.Messages = append(c.ready.Messages, m)
}

func (c *Core) drain() {
	// step may append to c.local; index, do not range.
	for i := 0; i < len(c.local); i++ {
		c.step(c.local[i])
	}
	clear(c.local)
	c.local = c.local[:0]
}

// SetMembers gives the core the current live member list (from serf in production). A list
// that differs from the agreed one starts recovery; only a list holding a strict majority of
// the voters can complete it. Names that are not voters are ignored.
func (c *Core) SetMembers(members []NodeID) {
	v := make([]NodeID, 0, len(members))
	for _, m := range members {
		if slices.Contains(c.cfg.Voters, m) {
			v = append(v, m)
		}
	}
	slices.Sort(v)
	c.localView = slices.Compact(v)
	c.maybeRecover(false)
	c.drain()
}

// Elapse advances logical time by ticks (at least one) at once, as after a pause of the
// process: the lease and waits see all of it, periodic work runs once.
func (c *Core) Elapse(ticks uint64) {
	if ticks > 1 {
		c.tick += ticks - 1
	}
	c.Tick()
}

// Tick advances logical time by one: heartbeats, retransmissions, recovery progress.
func (c *Core) Tick() {
	c.tick++
	if c.tick%uint64(c.cfg.HeartbeatTicks) == 0 {
		for _, v := range c.cfg.Voters {
			if v != c.cfg.ID {
				c.send(Message{Type: MsgHeartbeat, To: v, Tick: c.tick, Epoch: c.epoch, Accepted: c.accepted, AccBy: c.acceptedBy, Normal: c.phase == phaseNormal})
			}
		}
	}
	if c.tick%uint64(c.cfg.RetryTicks) == 0 {
		c.retransmit()
	}
	c.coordProgress()
	c.maybeRecover(false)
	c.drain()
}

func (c *Core) retransmit() {
	if k := c.coord; k != nil {
		for _, n := range k.view {
			switch {
			case !k.allAcked:
				if _, ok := k.acks[n]; !ok {
					c.send(Message{Type: MsgStop, To: n, Ballot: k.ballot, View: k.view})
				}
			case k.rebuildSent && !k.doneSent && !k.rebuilt[n]:
				c.send(c.rebuildMsg(n))
			}
		}
	}
	if r := c.rec; r != nil && c.phase == phaseRebuild {
		c.resendLocks()
		if r.built {
			c.send(Message{Type: MsgRebuilt, To: r.ballot.Node, Ballot: r.ballot})
		}
	}
	if c.needRecovery() {
		if co := c.coordinator(); co != "" && co != c.cfg.ID {
			c.sendJoin(co)
		}
	}
	if c.phase == phaseNormal {
		for _, id := range c.sortedLockIDs() {
			hl := c.locks[id]
			if hl.op != OpNone && hl.sent && c.tick-hl.sentAt >= uint64(c.cfg.RetryTicks) {
				c.sendOp(hl)
			}
		}
	}
}

func (c *Core) sortedLockIDs() []uint64 {
	ids := make([]uint64, 0, len(c.locks))
	for id := range c.locks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

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

// Step feeds one message from a peer.
func (c *Core) Step(m Message) {
	c.step(m)
	c.drain()
}

func (c *Core) step(m Message) {
	if m.To != c.cfg.ID || !slices.Contains(c.cfg.Voters, m.From) {
		return
	}
	switch m.Type {
	case MsgHeartbeat:
		c.onHeartbeat(m)
	case MsgHeartbeatAck:
		if m.Tick > 0 && m.Tick <= c.tick {
			c.ackTick[m.From] = max(c.ackTick[m.From], m.Tick+1)
		}
	case MsgJoin:
		c.onJoin(m)
	case MsgStop:
		c.onStop(m)
	case MsgStopAck:
		c.onStopAck(m)
	case MsgNack:
		if m.Ballot.N > c.maxBallotN {
			c.maxBallotN = m.Ballot.N
		}
		if c.coord != nil && c.coord.ballot.Less(m.Ballot) {
			c.coord = nil
			c.maybeRecover(false)
		}
	case MsgRebuild:
		c.onRebuild(m)
	case MsgRebuildLocks:
		c.onRebuildLocks(m)
	case MsgRebuildLocksAck:
		if c.rec != nil && m.Ballot == c.rec.ballot {
			c.rec.acked[m.From] = true
		}
	case MsgRebuilt:
		c.onRebuilt(m)
	case MsgDone:
		if c.rec != nil && m.Ballot == c.promised && c.phase == phaseRebuild && c.rec.built {
			c.finishRecovery()
		}
	case MsgRequest:
		c.onRequest(m)
	case MsgReply:
		c.onReply(m)
	case MsgBlocking:
		c.onBlocking(m)
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

// sameEpoch reports whether lock traffic m belongs to our epoch.
func (c *Core) sameEpoch(m Message) bool {
	return c.phase == phaseNormal && m.Epoch == c.epoch && m.AccBy == c.epochBy
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
		c.rec = &recovery{ballot: m.Ballot, view: slices.Clone(m.View), inbox: map[NodeID]Message{}, outLocks: map[NodeID]Message{}, acked: map[NodeID]bool{}}
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
		r.outLocks[n] = *out[n]
		c.send(*out[n])
	}
}

// resendLocks re-sends our rebuild records to the members that have not confirmed them (in
// view order: output order must not depend on map order).
func (c *Core) resendLocks() {
	r := c.rec
	for _, n := range r.view {
		if m, ok := r.outLocks[n]; ok && !r.acked[n] {
			c.send(m)
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
	if _, ok := r.inbox[m.From]; !ok && !r.built {
		r.inbox[m.From] = m
	}
	c.send(Message{Type: MsgRebuildLocksAck, To: m.From, Ballot: m.Ballot})
	c.tryBuild()
}

func (c *Core) tryBuild() {
	r := c.rec
	if c.phase != phaseRebuild || r.built || len(r.inbox) < len(r.view) {
		return
	}
	recs := map[resKey][]LockRecord{}
	mrecs := map[resKey][]MasterRecord{}
	for _, n := range r.view {
		m := r.inbox[n]
		for _, x := range m.Records {
			k := resKey{x.Space, x.Resource}
			recs[k] = append(recs[k], x)
		}
		for _, x := range m.Masters {
			k := resKey{x.Space, x.Resource}
			mrecs[k] = append(mrecs[k], x)
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
		hl.gr, hl.token, hl.everGranted = m.Mode, m.Token, true
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
