package lockd

import (
	"errors"
	"fmt"
	"strings"
)

// NodeID names a node: the serf member name. It must be non-empty.
type NodeID string

// Frame is one message as it crosses a Transport: opaque bytes plus the sending node.
type Frame struct {
	From NodeID
	Data []byte
}

// Transport moves frames between nodes. lockd/memnet and lockd/transport implement it.
//
// Send queues frame for node to and must not block for long (the node loop calls it);
// it may drop the frame (the core retransmits). The transport must not retain frame after
// Send returns unless it copies it. Receive returns the channel of frames addressed to this
// node; the Node drains it continuously. A frame is delivered whole or not at all; order,
// loss and duplication are tolerated by the core.
type Transport interface {
	Send(to NodeID, frame []byte) error
	Receive() <-chan Frame
}

// Mode is a DLM lock mode.
type Mode uint8

// The six DLM modes, weakest first.
const (
	NL Mode = iota // null: no access, keeps the lock (and its LVB) alive
	CR             // concurrent read
	CW             // concurrent write
	PR             // protected read
	PW             // protected write
	EX             // exclusive
	numModes
)

// noMode marks "not granted" in lock records.
const noMode Mode = 255

var modeNames = [...]string{"NL", "CR", "CW", "PR", "PW", "EX"}

// MarshalText writes the mode's name (JSON dumps show "PR", not 3).
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText reads what MarshalText writes ("--" for no mode), so dumps
// decode again (`ddraid locks` reads the agent's JSON).
func (m *Mode) UnmarshalText(b []byte) error {
	if string(b) == noMode.String() {
		*m = noMode
		return nil
	}
	p, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = p
	return nil
}

func (m Mode) String() string {
	if m < numModes {
		return modeNames[m]
	}
	if m == noMode {
		return "--"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Valid reports whether m is one of the six modes.
func (m Mode) Valid() bool { return m < numModes }

// ParseMode reads a mode name (case-insensitive).
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if strings.EqualFold(s, n) {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("lockd: unknown mode %q (want NL, CR, CW, PR, PW or EX)", s)
}

// compat is the DLM compatibility matrix (symmetric).
var compat = [numModes][numModes]bool{
	NL: {true, true, true, true, true, true},
	CR: {true, true, true, true, true, false},
	CW: {true, true, true, false, false, false},
	PR: {true, true, false, true, false, false},
	PW: {true, true, false, false, false, false},
	EX: {true, false, false, false, false, false},
}

// Compatible reports whether locks in modes a and b may be granted at once on one resource.
func Compatible(a, b Mode) bool {
	if !a.Valid() || !b.Valid() {
		return true // an ungranted lock conflicts with nothing
	}
	return compat[a][b]
}

// Flags modify a lock request, as in the DLM.
type Flags uint16

const (
	// NoQueue fails a request that cannot be granted at once with StatusAgain.
	NoQueue Flags = 1 << iota
	// Convert marks a conversion of an existing lock (Convert sets it).
	Convert
	// Cancel cancels a pending request or conversion (Cancel sets it).
	Cancel
	// ValBlk: read the lock value block on grant; write it when a PW or EX holder converts
	// down or unlocks.
	ValBlk
	// IvValBlk: when a PW or EX holder converts down or unlocks, mark the LVB invalid.
	IvValBlk
	// Blocking asks for blocking callbacks while the lock is granted.
	Blocking
	flagsMask = NoQueue | Convert | Cancel | ValBlk | IvValBlk | Blocking
)

func (f Flags) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for _, x := range []struct {
		f Flags
		n string
	}{{NoQueue, "NOQUEUE"}, {Convert, "CONVERT"}, {Cancel, "CANCEL"}, {ValBlk, "VALBLK"}, {IvValBlk, "IVVALBLK"}, {Blocking, "BAST"}} {
		if f&x.f != 0 {
			parts = append(parts, x.n)
		}
	}
	return strings.Join(parts, "|")
}

// LVBSize is the size of a lock value block in bytes (md-cluster uses 64).
const LVBSize = 64

// Status is the outcome carried by a completion, as the DLM's completion AST status.
type Status uint8

const (
	StatusGranted  Status = iota // the request or conversion was granted
	StatusAgain                  // NOQUEUE request could not be granted at once (EAGAIN)
	StatusDeadlock               // the conversion would deadlock (EDEADLK); the lock keeps its mode
	StatusCanceled               // the request or conversion was canceled (ECANCEL)
	StatusUnlocked               // the lock was released (EUNLOCK)
	// StatusLost: the lock was purged while this node was cut off from the quorum (a later
	// epoch formed without it). Not a DLM status: the DLM would have fenced the node.
	StatusLost
	numStatus
)

var statusNames = [...]string{"granted", "EAGAIN", "EDEADLK", "ECANCEL", "unlocked", "lost"}

func (s Status) String() string {
	if s < numStatus {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Token is the fencing token of a grant: the membership epoch in which the master granted
// (or re-confirmed after recovery) the lock, and a per-resource sequence within that epoch.
// Tokens of one resource are totally ordered by (Epoch, Seq); storage protected by a lock
// rejects writes carrying a token older than the newest it has seen.
type Token struct {
	Epoch uint64
	Seq   uint64
}

// Less orders tokens by epoch, then sequence.
func (t Token) Less(u Token) bool {
	if t.Epoch != u.Epoch {
		return t.Epoch < u.Epoch
	}
	return t.Seq < u.Seq
}

func (t Token) String() string { return fmt.Sprintf("%d.%d", t.Epoch, t.Seq) }

// Sentinel errors.
var (
	// ErrNoQuorum: this node is not part of a quorum right now (a minority partition, or
	// recovery is running); the operation waits until it is, or fails when its context ends.
	ErrNoQuorum = errors.New("lockd: no quorum")
	// ErrBusy: the lock already has a request in progress (only CANCEL may overlap one).
	ErrBusy = errors.New("lockd: lock busy with a pending request")
	// ErrUnknownLock: no such lock on this node.
	ErrUnknownLock = errors.New("lockd: unknown lock")
	// ErrInvalid: a bad argument (mode, flags, names, LVB size).
	ErrInvalid = errors.New("lockd: invalid argument")
	// ErrStopped: the node was closed.
	ErrStopped = errors.New("lockd: node stopped")

	// The failure statuses of a completion, as errors.
	ErrAgain    = errors.New("lockd: not granted at once (NOQUEUE)")            // StatusAgain
	ErrDeadlock = errors.New("lockd: conversion deadlock")                      // StatusDeadlock
	ErrCanceled = errors.New("lockd: canceled")                                 // StatusCanceled
	ErrLost     = errors.New("lockd: lock lost (node was cut off from quorum)") // StatusLost
)

// Err returns the error of a failure status, nil for StatusGranted and StatusUnlocked.
func (s Status) Err() error {
	switch s {
	case StatusAgain:
		return ErrAgain
	case StatusDeadlock:
		return ErrDeadlock
	case StatusCanceled:
		return ErrCanceled
	case StatusLost:
		return ErrLost
	}
	return nil
}
