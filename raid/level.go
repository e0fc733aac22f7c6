package raid

import (
	"errors"
	"fmt"
	"strings"
)

// Level is the RAID level of an array.
type Level string

// The RAID levels ddraid serves.
const (
	// LevelRaid35 stripes every logical block over 2^k+1 members: 2^k data
	// fragments and one XOR parity fragment (see [Geometry]).
	LevelRaid35 Level = "raid35"
	// LevelMirror keeps an identical copy on each of n members.
	LevelMirror Level = "mirror"
	// LevelLinear concatenates its members.
	LevelLinear Level = "linear"
)

var levels = []Level{LevelRaid35, LevelMirror, LevelLinear}

// ParseLevel returns the Level named by s (case-insensitive, surrounding
// spaces ignored).
func ParseLevel(s string) (Level, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	for _, l := range levels {
		if name == string(l) {
			return l, nil
		}
	}
	return "", fmt.Errorf("unknown raid level %q (valid: raid35, mirror, linear)", s)
}

// Parity is the parity placement of a Raid 3.5 array.
type Parity string

// Parity placements.
const (
	// ParityRotating moves parity to the next member every ParityChunk
	// blocks, so sequential reads use every member.
	ParityRotating Parity = "rotating"
	// ParityDedicated keeps parity on the last member (ddraid's original
	// layout, RAID-3/4 like).
	ParityDedicated Parity = "dedicated"
)

// ParseParity returns the Parity named by s (case-insensitive, surrounding
// spaces ignored).
func ParseParity(s string) (Parity, error) {
	switch name := Parity(strings.ToLower(strings.TrimSpace(s))); name {
	case ParityRotating, ParityDedicated:
		return name, nil
	}
	return "", fmt.Errorf("unknown parity placement %q (valid: rotating, dedicated)", s)
}

// MemberState is the state of one member slot of a redundant array.
type MemberState string

// Member states.
const (
	// MemberActive members take part in reads and writes.
	MemberActive MemberState = "active"
	// MemberFailed members returned an IO error or were failed by the
	// operator; they are no longer read or written.
	MemberFailed MemberState = "failed"
	// MemberMissing members were absent (nil) when the array was built.
	MemberMissing MemberState = "missing"
	// MemberRecovering members are being rebuilt: they take every write
	// but serve no read until recovery finishes.
	MemberRecovering MemberState = "recovering"
)

// Config holds the runtime options of the redundant engines (Raid35 and
// Mirror). The zero value is valid.
type Config struct {
	// OnFail, if not nil, is called exactly once for each member that goes
	// from active to failed while the array runs, whether because an IO
	// returned an error or because Fail was called. The caller persists the
	// new state. It is called synchronously from the IO path that saw the
	// error (before that IO returns to its caller), so it must not block for
	// long and must not call back into the array's IO methods; calling
	// MemberStates is fine. err is the member error (nil when Fail was
	// called with nil).
	OnFail func(member int, err error)
	// BeforeFail, if not nil, is called for each member about to go from
	// active to failed, before any IO can see the change: an IO that goes
	// on without the member, or finds it failed, returns after BeforeFail
	// did. A cluster writer holds the acknowledgement of writes there
	// until every writer knows of the failure. It runs under the engine's
	// member lock, so it must be quick and must not call into the array.
	BeforeFail func(member int, err error)
	// OnSpread, if not nil, is called each time a request moves more than
	// fanoutSmall bytes to or from a member (a linear array: in all;
	// large reads and writes, resync and rebuild included), so that the
	// process can give it CPUs (internal/procs, Governor.Spread): several
	// members' parts run on goroutines of their own, and even one
	// member's part is a syscall long enough to span the Go scheduler's
	// sysmon ticks. It must be cheap and must not block.
	OnSpread func()
}

// Sentinel errors. Engines wrap them with context; test with errors.Is.
var (
	// ErrArrayFailed reports an IO that cannot be served because more
	// members are lost than the level tolerates (two for raid35, all for a
	// mirror). The error also wraps the member errors seen by the IO.
	ErrArrayFailed = errors.New("raid: too many members lost")
	// ErrDegraded reports an operation that needs every member, such as a
	// parity check, on an array with a lost member.
	ErrDegraded = errors.New("raid: array is degraded")
)
