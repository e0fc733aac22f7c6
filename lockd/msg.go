package lockd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MsgType tells what a Message is for.
type MsgType uint8

// Message types. Request, Reply and Blocking carry lock traffic between a holder and a
// master; the rest run heartbeats (the quorum lease) and recovery.
const (
	MsgRequest         MsgType = iota + 1 // holder → master: lock, convert, unlock or cancel
	MsgReply                              // master → holder: completion (or a refresh after recovery)
	MsgBlocking                           // master → holder: blocking callback
	MsgHeartbeat                          // any → member: lease probe
	MsgHeartbeatAck                       // answer to a heartbeat
	MsgJoin                               // member → coordinator: please run recovery
	MsgStop                               // coordinator → members: stop, adopt this view (ballot)
	MsgStopAck                            // member → coordinator: stopped
	MsgNack                               // member → coordinator: promised a higher ballot
	MsgRebuild                            // coordinator → members: epoch decided, rebuild
	MsgRebuildLocks                       // member → member: my locks (and old master LVBs) for you
	MsgRebuildLocksAck                    // receipt of MsgRebuildLocks
	MsgRebuilt                            // member → coordinator: I have every member's locks
	MsgDone                               // coordinator → members: recovery complete, grant
	numMsgTypes
)

var msgTypeNames = [...]string{"?", "request", "reply", "blocking", "heartbeat", "heartbeat-ack", "join", "stop", "stop-ack", "nack", "rebuild", "rebuild-locks", "rebuild-locks-ack", "rebuilt", "done"}

func (t MsgType) String() string {
	if t < numMsgTypes {
		return msgTypeNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Op is the lock operation a request carries.
type Op uint8

const (
	OpNone    Op = iota
	OpLock       // new lock
	OpConvert    // conversion of a granted lock
	OpUnlock     // release
	OpCancel     // cancel the pending lock or conversion with the same Seq
	OpRefresh    // reply only: the lock survived recovery; new token
	numOps
)

var opNames = [...]string{"none", "lock", "convert", "unlock", "cancel", "refresh"}

func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Ballot numbers a recovery attempt; higher ballots win. Ties break on the node, then on its
// incarnation, so that a restarted coordinator never reuses a ballot of its earlier life.
type Ballot struct {
	N    uint64
	Node NodeID
	Inc  uint64
}

// Less orders ballots.
func (b Ballot) Less(c Ballot) bool {
	switch {
	case b.N != c.N:
		return b.N < c.N
	case b.Node != c.Node:
		return b.Node < c.Node
	}
	return b.Inc < c.Inc
}

func (b Ballot) String() string { return fmt.Sprintf("%d/%s", b.N, b.Node) }

// LockID names one lock cluster-wide: the holder node, its incarnation, and a number the
// holder never reuses within the incarnation.
type LockID struct {
	Node NodeID
	Inc  uint64
	ID   uint64
}

func (l LockID) String() string { return fmt.Sprintf("%s#%d", l.Node, l.ID) }

// LockRecord is a holder's account of one lock, sent to the new master during recovery.
type LockRecord struct {
	Space, Resource string
	Lock            LockID
	Granted         Mode   // noMode if not granted
	Op              Op     // pending operation, OpNone if none
	Mode            Mode   // requested mode of a pending lock or convert
	Flags           Flags  // flags of the pending op (or of the last one)
	Seq             uint64 // sequence of the pending op (or of the last one)
	Cancel          bool   // a cancel of the pending op is outstanding
	LVB             []byte // the holder's copy of the LVB (nil if it never used VALBLK)
	LVBSeq          uint64
	LVBValid        bool
	Write           []byte // the LVB a pending down-convert or unlock writes
}

// MasterRecord is what an old master knew of a resource, sent to its new master.
type MasterRecord struct {
	Space, Resource string
	LVB             []byte
	LVBSeq          uint64
	LVBValid        bool
	Big             []LockID // holders granted PW or EX
}

// Message is everything nodes say to each other. Fields not used by a type stay zero.
type Message struct {
	Type     MsgType
	From, To NodeID
	Inc      uint64 // sender's incarnation
	Epoch    uint64 // sender's epoch (lock traffic: the epoch it belongs to)
	Accepted uint64 // sender's accepted epoch (heartbeats, acks); Rebuild: the previous epoch
	AccBy    Ballot // the ballot that decided Accepted (epoch numbers alone can repeat)
	Ballot   Ballot
	View     []NodeID
	Tick     uint64 // heartbeat: the sender's tick, echoed by the ack
	Normal   bool   // heartbeat/join: sender is in normal operation

	Space, Resource string
	Lock            LockID
	Op              Op
	Mode            Mode
	Flags           Flags
	Seq             uint64
	Low             uint64 // request: lowest lock ID the holder still has on this resource
	Status          Status
	LVB             []byte
	LVBSeq          uint64
	LVBValid        bool
	Token           Token

	Part, Parts uint64 // rebuild-locks (and its ack): this is part Part of Parts (0-based)
	Records     []LockRecord
	Masters     []MasterRecord
}

const msgVersion = 1

// Limits that keep a hostile frame from making Unmarshal allocate without bound.
const (
	maxNameLen = 1024
	maxList    = 1 << 20
)

// ErrBadFrame marks a frame that does not decode.
var ErrBadFrame = errors.New("lockd: bad frame")

type enc struct{ b []byte }

func (e *enc) u(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) s(v string) { e.u(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) bs(v []byte) { // nil and empty differ: nil = 0, else len+1
	if v == nil {
		e.u(0)
		return
	}
	e.u(uint64(len(v)) + 1)
	e.b = append(e.b, v...)
}
func (e *enc) bo(v bool) {
	if v {
		e.u(1)
	} else {
		e.u(0)
	}
}
func (e *enc) ballot(b Ballot) { e.u(b.N); e.s(string(b.Node)); e.u(b.Inc) }
func (e *enc) id(l LockID)     { e.s(string(l.Node)); e.u(l.Inc); e.u(l.ID) }

// Marshal encodes m compactly (a version byte, then varints and length-prefixed strings).
func (m *Message) Marshal() []byte {
	e := enc{b: make([]byte, 0, 64)}
	e.b = append(e.b, msgVersion, byte(m.Type))
	e.s(string(m.From))
	e.s(string(m.To))
	e.u(m.Inc)
	e.u(m.Epoch)
	e.u(m.Accepted)
	e.ballot(m.Ballot)
	e.ballot(m.AccBy)
	e.u(uint64(len(m.View)))
	for _, n := range m.View {
		e.s(string(n))
	}
	e.u(m.Tick)
	e.bo(m.Normal)
	e.s(m.Space)
	e.s(m.Resource)
	e.id(m.Lock)
	e.u(uint64(m.Op))
	e.u(uint64(m.Mode))
	e.u(uint64(m.Flags))
	e.u(m.Seq)
	e.u(m.Low)
	e.u(uint64(m.Status))
	e.bs(m.LVB)
	e.u(m.LVBSeq)
	e.bo(m.LVBValid)
	e.u(m.Token.Epoch)
	e.u(m.Token.Seq)
	e.u(m.Part)
	e.u(m.Parts)
	e.u(uint64(len(m.Records)))
	for _, r := range m.Records {
		e.s(r.Space)
		e.s(r.Resource)
		e.id(r.Lock)
		e.u(uint64(r.Granted))
		e.u(uint64(r.Op))
		e.u(uint64(r.Mode))
		e.u(uint64(r.Flags))
		e.u(r.Seq)
		e.bo(r.Cancel)
		e.bs(r.LVB)
		e.u(r.LVBSeq)
		e.bo(r.LVBValid)
		e.bs(r.Write)
	}
	e.u(uint64(len(m.Masters)))
	for _, r := range m.Masters {
		e.s(r.Space)
		e.s(r.Resource)
		e.bs(r.LVB)
		e.u(r.LVBSeq)
		e.bo(r.LVBValid)
		e.u(uint64(len(r.Big)))
		for _, b := range r.Big {
			e.id(b)
		}
	}
	return e.b
}

type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadFrame, what)
	}
}

func (d *dec) u() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("truncated varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) small(max uint64, what string) uint64 {
	v := d.u()
	if v > max {
		d.fail(what + " out of range")
		return 0
	}
	return v
}

func (d *dec) s() string {
	n := d.small(maxNameLen, "string length")
	if d.err != nil {
		return ""
	}
	if uint64(len(d.b)) < n {
		d.fail("truncated string")
		return ""
	}
	v := string(d.b[:n])
	d.b = d.b[n:]
	return v
}

func (d *dec) bs() []byte {
	n := d.small(LVBSize+1, "value block length")
	if d.err != nil || n == 0 {
		return nil
	}
	n--
	if uint64(len(d.b)) < n {
		d.fail("truncated value block")
		return nil
	}
	v := append([]byte{}, d.b[:n]...)
	d.b = d.b[n:]
	return v
}

func (d *dec) bo() bool { return d.small(1, "bool") == 1 }

func (d *dec) ballot() Ballot {
	return Ballot{N: d.u(), Node: NodeID(d.s()), Inc: d.u()}
}

func (d *dec) id() LockID {
	return LockID{Node: NodeID(d.s()), Inc: d.u(), ID: d.u()}
}

// count reads a list length; each element takes at least min bytes, which bounds it by the
// frame's remaining size.
func (d *dec) count(min int) int {
	n := d.small(maxList, "list length")
	if d.err != nil {
		return 0
	}
	if n*uint64(min) > uint64(len(d.b)) {
		d.fail("list longer than frame")
		return 0
	}
	return int(n)
}

// UnmarshalMessage decodes a frame made by Marshal. It never panics; a bad frame gives an
// error wrapping ErrBadFrame.
func UnmarshalMessage(b []byte) (Message, error) {
	var m Message
	if len(b) < 2 {
		return m, fmt.Errorf("%w: %d bytes", ErrBadFrame, len(b))
	}
	if b[0] != msgVersion {
		return m, fmt.Errorf("%w: version %d", ErrBadFrame, b[0])
	}
	m.Type = MsgType(b[1])
	if m.Type == 0 || m.Type >= numMsgTypes {
		return m, fmt.Errorf("%w: type %d", ErrBadFrame, b[1])
	}
	d := dec{b: b[2:]}
	m.From = NodeID(d.s())
	m.To = NodeID(d.s())
	m.Inc = d.u()
	m.Epoch = d.u()
	m.Accepted = d.u()
	m.Ballot = d.ballot()
	m.AccBy = d.ballot()
	if n := d.count(1); n > 0 {
		m.View = make([]NodeID, n)
		for i := range m.View {
			m.View[i] = NodeID(d.s())
		}
	}
	m.Tick = d.u()
	m.Normal = d.bo()
	m.Space = d.s()
	m.Resource = d.s()
	m.Lock = d.id()
	m.Op = Op(d.small(uint64(numOps)-1, "op"))
	m.Mode = d.mode()
	m.Flags = Flags(d.small(uint64(flagsMask), "flags"))
	m.Seq = d.u()
	m.Low = d.u()
	m.Status = Status(d.small(uint64(numStatus)-1, "status"))
	m.LVB = d.bs()
	m.LVBSeq = d.u()
	m.LVBValid = d.bo()
	m.Token.Epoch = d.u()
	m.Token.Seq = d.u()
	m.Part = d.u()
	m.Parts = d.u()
	if n := d.count(13); n > 0 {
		m.Records = make([]LockRecord, n)
		for i := range m.Records {
			r := &m.Records[i]
			r.Space = d.s()
			r.Resource = d.s()
			r.Lock = d.id()
			r.Granted = d.mode()
			r.Op = Op(d.small(uint64(numOps)-1, "op"))
			r.Mode = d.mode()
			r.Flags = Flags(d.small(uint64(flagsMask), "flags"))
			r.Seq = d.u()
			r.Cancel = d.bo()
			r.LVB = d.bs()
			r.LVBSeq = d.u()
			r.LVBValid = d.bo()
			r.Write = d.bs()
		}
	}
	if n := d.count(6); n > 0 {
		m.Masters = make([]MasterRecord, n)
		for i := range m.Masters {
			r := &m.Masters[i]
			r.Space = d.s()
			r.Resource = d.s()
			r.LVB = d.bs()
			r.LVBSeq = d.u()
			r.LVBValid = d.bo()
			if k := d.count(3); k > 0 {
				r.Big = make([]LockID, k)
				for j := range r.Big {
					r.Big[j] = d.id()
				}
			}
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return Message{}, d.err
	}
	return m, nil
}

// mode reads a mode: one of the six or noMode.
func (d *dec) mode() Mode {
	v := d.u()
	if d.err != nil {
		return 0
	}
	if v >= uint64(numModes) && v != uint64(noMode) {
		d.fail("mode out of range")
		return 0
	}
	return Mode(v)
}
