package raid

import (
	"fmt"
	"io"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// memberSet tracks the states of the member slots of a redundant array.
// The lost mask is read lock-free on every IO; state changes take mu.
type memberSet struct {
	mu     sync.Mutex
	states []MemberState
	lost   atomic.Uint64 // bit i set when member i is failed, missing or recovering
	// recovering is the subset of lost that still takes writes.
	recovering atomic.Uint64
	beforeFail func(member int, err error)
	onFail     func(member int, err error)
}

func (s *memberSet) init(devs []blockdev.Device, cfg Config) {
	s.states = make([]MemberState, len(devs))
	s.beforeFail, s.onFail = cfg.BeforeFail, cfg.OnFail
	var lost uint64
	for i, d := range devs {
		s.states[i] = MemberActive
		if d == nil {
			s.states[i] = MemberMissing
			lost |= 1 << i
		}
	}
	s.lost.Store(lost)
}

// lostMask returns the set of members that must not be used.
func (s *memberSet) lostMask() uint64 { return s.lost.Load() }

// fail marks an active member failed and calls onFail; it does nothing for
// a member that is already failed or missing, or out of range. beforeFail
// runs under mu before the loss is published, so every IO that goes on
// without the member, or finds it failed, does so after beforeFail
// returned.
func (s *memberSet) fail(m int, err error) {
	s.mu.Lock()
	if m < 0 || m >= len(s.states) || (s.states[m] != MemberActive && s.states[m] != MemberRecovering) {
		s.mu.Unlock()
		return
	}
	if s.beforeFail != nil {
		s.beforeFail(m, err)
	}
	s.states[m] = MemberFailed
	s.lost.Store(s.lost.Load() | 1<<m)
	s.recovering.Store(s.recovering.Load() &^ (1 << m))
	s.mu.Unlock()
	if s.onFail != nil {
		s.onFail(m, err)
	}
}

// writeMask returns the members a write goes to: every member that is not
// lost, plus the recovering ones.
func (s *memberSet) writeMask(all uint64) uint64 {
	return all&^s.lost.Load() | s.recovering.Load()
}

// startRecovery turns failed or missing member m into a recovering one;
// install is called under the lock to put the member's new device in place
// before any write can reach it.
func (s *memberSet) startRecovery(m int, install func()) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m < 0 || m >= len(s.states) {
		return fmt.Errorf("no member %d", m)
	}
	if st := s.states[m]; st != MemberFailed && st != MemberMissing {
		return fmt.Errorf("member %d is %s, not failed or missing", m, st)
	}
	install()
	s.states[m] = MemberRecovering
	s.recovering.Store(s.recovering.Load() | 1<<m)
	return nil
}

// finishRecovery makes recovering member m active.
func (s *memberSet) finishRecovery(m int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m < 0 || m >= len(s.states) || s.states[m] != MemberRecovering {
		return fmt.Errorf("member %d is not recovering", m)
	}
	s.states[m] = MemberActive
	s.recovering.Store(s.recovering.Load() &^ (1 << m))
	s.lost.Store(s.lost.Load() &^ (1 << m))
	return nil
}

// snapshot returns a copy of the member states.
func (s *memberSet) snapshot() []MemberState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]MemberState(nil), s.states...)
}

// fanout runs the member requests of an array's reads and writes: each on
// a goroutine of its own, or, while the members answer small requests
// within fanoutInlineNs on average, one after the other on the caller's
// goroutine. Starting a goroutine per member and waiting for them all
// costs more than a small request to a member that answers from memory (a
// file in the page cache or on tmpfs): through the NBD server, a raid35 x5
// on tmpfs files did 1.37 times the 4 KiB random writes and 1.24 times the
// 4 KiB random reads with its members one after the other (medians of five
// 3 s fio runs at iodepth 64, taking turns with the parallel build). A slow
// member (a disk, a remote member) keeps the requests parallel, where its
// latency is paid once instead of once per member. Requests that move more
// than fanoutSmall bytes per member always run in parallel, so large
// copies use every CPU; each such request calls Config.OnSpread, with
// which the server gives the process those CPUs (internal/procs).
type fanout struct {
	ns     atomic.Int64  // moving average of a small member request, in ns
	calls  atomic.Uint32 // small calls, to time one in fanoutEvery
	spread func()        // Config.OnSpread, or nil
}

const (
	fanoutInlineNs = 20_000
	fanoutSmall    = 64 << 10
	fanoutEvery    = 8
	fanoutMaxNs    = 4 * fanoutInlineNs // a longer request counts as this long
)

// init starts the average slow: until measured, members count as slow.
// spread is Config.OnSpread.
func (f *fanout) init(spread func()) {
	f.ns.Store(fanoutMaxNs)
	f.spread = spread
}

// inline reports whether small member requests run on the caller's
// goroutine.
func (f *fanout) inline() bool { return f.ns.Load() < fanoutInlineNs }

// run calls fn(m) for every member m in mask and stores each result in
// errs[m], like forEachMember; memberBytes is the most any call moves.
// One small call in fanoutEvery times each of its member requests and
// feeds the slowest into the average, so that one slow member among fast
// ones is seen whichever it is.
func (f *fanout) run(mask uint64, memberBytes int, errs []error, fn func(m int) error) {
	if mask == 0 {
		return
	}
	if memberBytes > fanoutSmall {
		if f.spread != nil {
			f.spread()
		}
		forEachMember(mask, errs, fn)
		return
	}
	timed := f.calls.Add(1)%fanoutEvery == 0
	inline := f.inline()
	switch {
	case !inline && !timed:
		forEachMember(mask, errs, fn)
	case !inline:
		var slowest atomic.Int64 // ns
		forEachMember(mask, errs, func(m int) error {
			start := time.Now()
			err := fn(m)
			d := int64(time.Since(start))
			for {
				old := slowest.Load()
				if d <= old || slowest.CompareAndSwap(old, d) {
					break
				}
			}
			return err
		})
		f.observe(time.Duration(slowest.Load()))
	case !timed:
		for rest := mask; rest != 0; rest &= rest - 1 {
			m := bits.TrailingZeros64(rest)
			errs[m] = fn(m)
		}
	default:
		var slowest time.Duration
		last := time.Now()
		for rest := mask; rest != 0; rest &= rest - 1 {
			m := bits.TrailingZeros64(rest)
			errs[m] = fn(m)
			now := time.Now()
			slowest = max(slowest, now.Sub(last))
			last = now
		}
		f.observe(slowest)
	}
}

// observe moves the average an eighth of the way to d, d counting as at
// most fanoutMaxNs: on a busy machine a fast member's request is now and
// then held up for a scheduling slice, and one such request must not make
// the members count as slow for the next hundred; a member that is slow
// every time still takes the average over fanoutInlineNs within a few
// samples.
func (f *fanout) observe(d time.Duration) {
	avg := f.ns.Load()
	f.ns.Store(avg + (min(int64(d), fanoutMaxNs)-avg)/8)
}

// forEachMember calls fn(m) for every member m in mask, concurrently, and
// stores each result in errs[m]. The lowest member runs on the calling
// goroutine; forEachMember returns when every call has returned.
func forEachMember(mask uint64, errs []error, fn func(m int) error) {
	if mask == 0 {
		return
	}
	first := bits.TrailingZeros64(mask)
	rest := mask &^ (1 << first)
	if rest == 0 {
		errs[first] = fn(first)
		return
	}
	var wg sync.WaitGroup
	for rest != 0 {
		m := bits.TrailingZeros64(rest)
		rest &^= 1 << m
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[m] = fn(m)
		}()
	}
	errs[first] = fn(first)
	wg.Wait()
}

// MemberError is an IO error returned by one member of an array. Engines
// pass it to Config.OnFail and wrap it in the errors they return.
type MemberError struct {
	Level  Level  // the array's level
	Op     string // "read", "write", "zero", "flush", "check" or "close"
	Member int    // member index in the array
	Block  int64  // first logical block of the failed member IO; -1 if none
	Err    error  // the member's error
}

func (e *MemberError) Error() string { return string(e.Level) + ": " + e.detail() }

// detail is the message without the level prefix.
func (e *MemberError) detail() string {
	if e.Block < 0 {
		return fmt.Sprintf("%s: member %d: %v", e.Op, e.Member, e.Err)
	}
	return fmt.Sprintf("block %d: member %d: %s: %v", e.Block, e.Member, e.Op, e.Err)
}

func (e *MemberError) Unwrap() error { return e.Err }

// arrayError reports an IO that failed because too many members are lost.
// It wraps ErrArrayFailed and every member error the IO saw.
// The message is formatted only when asked for, so building one costs no
// formatting on the IO path.
type arrayError struct {
	level Level
	op    string // "read", "write", ...
	span  spanKind
	a, b  int64  // blocks [a, b) or offset a, length b, per span
	lost  uint64 // members lost when the IO gave up
	errs  []error
}

// spanKind says what the a and b of an arrayError are.
type spanKind int

const (
	spanNone   spanKind = iota // no range (flush)
	spanBlocks                 // blocks [a, b)
	spanBytes                  // offset a, length b
)

func (e *arrayError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", e.level, e.op)
	switch e.span {
	case spanBlocks:
		if e.b-e.a == 1 {
			fmt.Fprintf(&b, " block %d", e.a)
		} else {
			fmt.Fprintf(&b, " blocks %d-%d", e.a, e.b-1)
		}
	case spanBytes:
		fmt.Fprintf(&b, " offset %d length %d", e.a, e.b)
	}
	fmt.Fprintf(&b, ": %v (members lost: %s)", ErrArrayFailed, maskString(e.lost))
	for i, err := range e.errs {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		if me, ok := err.(*MemberError); ok {
			b.WriteString(me.detail())
		} else {
			b.WriteString(err.Error())
		}
	}
	return b.String()
}

func (e *arrayError) Unwrap() []error { return append([]error{ErrArrayFailed}, e.errs...) }

// maskString lists the members in mask, e.g. "1, 3".
func maskString(mask uint64) string {
	var parts []string
	for mask != 0 {
		m := bits.TrailingZeros64(mask)
		mask &^= 1 << m
		parts = append(parts, fmt.Sprint(m))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// readFull reads len(p) bytes at off from d, turning a short read without
// an error into io.ErrUnexpectedEOF.
func readFull(d blockdev.Device, p []byte, off int64) error {
	n, err := d.ReadAt(p, off)
	if err == nil && n < len(p) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// writeFull writes p at off to d, turning a short write without an error
// into io.ErrShortWrite.
func writeFull(d blockdev.Device, p []byte, off int64) error {
	n, err := d.WriteAt(p, off)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return err
}
