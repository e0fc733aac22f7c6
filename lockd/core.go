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
	// Incarnation distinguishes boots of the same ID; it must grow from boot to boot:
	// masters ignore lock requests from an incarnation below one they have seen (the
	// cluster node uses the boot time in nanoseconds, or one above the last boot's, which
	// it stores, when the clock reads no later than that).
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
	id         uint64
	space, res string
	gr         Mode
	op         Op // pending operation
	rq         Mode
	flags      Flags
	seq        uint64
	sent       bool
	sentAt     uint64
	cancel     bool
	wlvb       []byte
	lvb        []byte
	lvbSeq     uint64
	lvbValid   bool
	token      Token
}

type resKey struct{ space, name string }

// recovery is a member's state for the ballot it promised.
type recovery struct {
	ballot   Ballot
	view     []NodeID
	epoch    uint64
	inbox    map[NodeID]map[uint64]Message // RebuildLocks parts received, by sender and part
	parts    map[NodeID]uint64             // how many parts each sender sends
	outLocks map[NodeID][]Message          // RebuildLocks parts sent, for retransmission
	acked    map[NodeID]map[uint64]bool    // receipts of our parts
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
		if r := c.rec; r != nil && m.Ballot == r.ballot && r.acked[m.From] != nil {
			r.acked[m.From][m.Part] = true
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

// sameEpoch reports whether lock traffic m belongs to our epoch.
func (c *Core) sameEpoch(m Message) bool {
	return c.phase == phaseNormal && m.Epoch == c.epoch && m.AccBy == c.epochBy
}
