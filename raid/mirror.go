package raid

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/ddraid/ddraid/blockdev"
)

// maxMirrorMembers is the widest mirror (members are tracked in a 64-bit
// mask).
const maxMirrorMembers = 64

// Mirror is an n-way mirror: every member holds the whole array. Writes go
// to every live member; each read is served by one live member: the first
// one, or, once the owner vouches that the copies match
// (TrustRedundancy), the least busy one (see pick). It tolerates n-1 lost
// members. All methods are safe for concurrent use.
type Mirror struct {
	members []blockdev.Device
	size    int64
	bs      int
	all     uint64
	set     memberSet
	locks   rangeLock // in units of bs
	queues  []mirrorQueue
	fan     fanout        // member requests of writes
	next    atomic.Uint64 // turns, to break ties between equally busy members
	trusted atomic.Bool   // TrustRedundancy
	around  atomic.Int64  // reads served by a copy other than the first
	closed  atomic.Bool
}

// mirrorQueue is what read balancing knows of one member, kept while the
// copies are trusted: its reads in flight and where its last read ended.
// Each fills a cache line of its own, since every read updates one.
type mirrorQueue struct {
	reads atomic.Int32
	end   atomic.Int64
	_     [52]byte
}

// seqBonus is how many more reads in flight a member may have than the
// least busy one and still get the read that continues its last one: a
// sequential stream stays on one copy (a disk reading ahead, a spindle whose
// head is there) until that copy falls behind.
const seqBonus = 2

var _ blockdev.Device = (*Mirror)(nil)

// NewMirror builds a mirror over members (at least two slots); members[i]
// == nil marks member i missing, but at least one must be present. Every
// present member must be at least memberDataSize bytes; the array is
// memberDataSize bytes. The array owns the members: Close closes them.
func NewMirror(members []blockdev.Device, memberDataSize int64, cfg Config) (*Mirror, error) {
	if len(members) < 2 || len(members) > maxMirrorMembers {
		return nil, fmt.Errorf("mirror needs 2 to %d members, got %d", maxMirrorMembers, len(members))
	}
	if memberDataSize <= 0 {
		return nil, fmt.Errorf("mirror: member data size %d must be positive", memberDataSize)
	}
	bs, present := 512, 0
	for i, d := range members {
		if d == nil {
			continue
		}
		present++
		if d.Size() < memberDataSize {
			return nil, fmt.Errorf("mirror: member %d is %d bytes, smaller than the %d-byte data area", i, d.Size(), memberDataSize)
		}
		bs = max(bs, d.BlockSize())
	}
	if present == 0 {
		return nil, fmt.Errorf("mirror: all %d members missing", len(members))
	}
	m := &Mirror{
		members: append([]blockdev.Device(nil), members...),
		size:    memberDataSize,
		bs:      bs,
		all:     1<<len(members) - 1,
		queues:  make([]mirrorQueue, len(members)),
	}
	if len(members) == maxMirrorMembers {
		m.all = ^uint64(0)
	}
	m.set.init(m.members, cfg)
	m.fan.init(cfg.OnSpread)
	return m, nil
}

// Size implements blockdev.Device.
func (m *Mirror) Size() int64 { return m.size }

// BlockSize implements blockdev.Device: the largest member block size, at
// least 512.
func (m *Mirror) BlockSize() int { return m.bs }

// MemberStates returns a copy of the member states.
func (m *Mirror) MemberStates() []MemberState { return m.set.snapshot() }

// Fail marks member failed: it is no longer read or written. Failing a
// member that is already failed or missing does nothing; otherwise
// Config.OnFail is called with err before Fail returns.
func (m *Mirror) Fail(member int, err error) { m.set.fail(member, err) }

// TrustRedundancy says whether reads may be spread over every live member.
// Until then each read goes to the first live member, the one a resync
// copies from: after an unclean stop the copies of a block whose write was
// in flight may differ until the resync reaches it, and a block read twice
// must not read back new data and then old. The array's owner turns it on
// only while the copies match wherever no write is in flight (after a
// clean stop, a finished resync or a finished repair, and never while
// others write the members) and off when a check finds mismatches.
func (m *Mirror) TrustRedundancy(on bool) { m.trusted.Store(on) }

// RedundancyTrusted reports the last TrustRedundancy.
func (m *Mirror) RedundancyTrusted() bool { return m.trusted.Load() }

// ReadsAround returns how many reads a copy other than the first live one
// served.
func (m *Mirror) ReadsAround() int64 { return m.around.Load() }

// ReadAt implements blockdev.Device. The request goes to one live member:
// the first, or while the copies are trusted the one pick chooses; if it
// fails, the member is marked failed and another live member is tried.
func (m *Mirror) ReadAt(p []byte, off int64) (int, error) {
	if err := m.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var seen []error
	var tried uint64
	for {
		lost := m.set.lostMask()
		live := m.all &^ lost &^ tried
		if live == 0 {
			return 0, m.failedErr("read", off, int64(len(p)), seen)
		}
		first := bits.TrailingZeros64(m.all &^ lost)
		d := bits.TrailingZeros64(live)
		var err error
		if m.trusted.Load() {
			d = m.pick(live, off)
			q := &m.queues[d]
			q.reads.Add(1)
			err = readFull(m.members[d], p, off)
			q.reads.Add(-1)
			q.end.Store(off + int64(len(p)))
		} else {
			err = readFull(m.members[d], p, off)
		}
		if err == nil {
			if d != first {
				m.around.Add(1)
			}
			return len(p), nil
		}
		tried |= 1 << d
		err = &MemberError{Level: LevelMirror, Op: "read", Member: d, Block: off / int64(m.bs), Err: err}
		m.set.fail(d, err)
		seen = append(seen, err)
	}
}

// pick chooses the member of the mask live that reads at off: the one with
// the fewest reads in flight, where a member whose last read ended at off
// counts seqBonus fewer, and among equals the next in turn, so that
// members that are equally busy share the reads.
func (m *Mirror) pick(live uint64, off int64) int {
	n := len(m.members)
	start := int(m.next.Add(1) % uint64(n))
	best, bestScore := -1, int32(0)
	for i := range n {
		d := start + i
		if d >= n {
			d -= n
		}
		if live&(1<<d) == 0 {
			continue
		}
		q := &m.queues[d]
		score := q.reads.Load()
		if q.end.Load() == off {
			score -= seqBonus
		}
		if best < 0 || score < bestScore {
			best, bestScore = d, score
		}
	}
	return best
}

// WriteAt implements blockdev.Device: p is written to every live member in
// parallel. Members that fail are marked failed; the write fails only when
// no member took it. Overlapping writes are serialised so the members
// cannot end up with different contents.
func (m *Mirror) WriteAt(p []byte, off int64) (int, error) {
	if err := m.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	err := m.each("write", off, int64(len(p)), func(d blockdev.Device) error { return writeFull(d, p, off) })
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Zero implements blockdev.Device on every live member.
func (m *Mirror) Zero(off, length int64) error {
	if err := m.check("zero", off, length); err != nil {
		return err
	}
	return m.each("zero", off, length, func(d blockdev.Device) error { return d.Zero(off, length) })
}

// Trim implements blockdev.Device as Zero on every live member, so the
// copies stay identical (a member trim may keep old contents on one
// member and not on another).
func (m *Mirror) Trim(off, length int64) error {
	if err := m.check("trim", off, length); err != nil {
		return err
	}
	return m.each("trim", off, length, func(d blockdev.Device) error { return d.Zero(off, length) })
}

// Flush implements blockdev.Device: it flushes every live member in
// parallel.
func (m *Mirror) Flush() error {
	if m.closed.Load() {
		return fmt.Errorf("mirror: flush: %w", blockdev.ErrClosed)
	}
	return m.each("flush", -1, 0, func(d blockdev.Device) error { return d.Flush() })
}

// Close implements blockdev.Device: it closes every present member.
func (m *Mirror) Close() error {
	if m.closed.Swap(true) {
		return fmt.Errorf("mirror: close: %w", blockdev.ErrClosed)
	}
	var errs []error
	for i, d := range m.members {
		if d == nil {
			continue
		}
		if err := d.Close(); err != nil {
			errs = append(errs, &MemberError{Level: LevelMirror, Op: "close", Member: i, Block: -1, Err: err})
		}
	}
	return errors.Join(errs...)
}

// each runs fn on every live member in parallel, holding the range lock
// over [off, off+length) unless off < 0, marks the members that fail and
// returns an error only when no member is left.
func (m *Mirror) each(op string, off, length int64, fn func(d blockdev.Device) error) error {
	if length == 0 && off >= 0 {
		return nil
	}
	block := int64(-1)
	if off >= 0 {
		bs := int64(m.bs)
		block = off / bs
		h := m.locks.lock(block, (off+length+bs-1)/bs)
		defer m.locks.unlock(h)
	}
	lost := m.set.lostMask()
	if lost == m.all {
		return m.failedErr(op, off, length, nil)
	}
	errs := make([]error, len(m.members))
	m.fan.run(m.set.writeMask(m.all), int(min(length, fanoutSmall+1)), errs, func(i int) error {
		if err := fn(m.members[i]); err != nil {
			return &MemberError{Level: LevelMirror, Op: op, Member: i, Block: block, Err: err}
		}
		return nil
	})
	var seen []error
	for i, err := range errs {
		if err != nil {
			m.set.fail(i, err)
			seen = append(seen, err)
		}
	}
	if len(seen) > 0 && m.set.lostMask() == m.all {
		return m.failedErr(op, off, length, seen)
	}
	return nil
}

// failedErr returns the error of op on [off, off+length) (off < 0: no
// range) given up because no member is left; errs are the member errors
// seen.
func (m *Mirror) failedErr(op string, off, length int64, errs []error) error {
	e := &arrayError{level: LevelMirror, op: op, a: off, b: length, lost: m.set.lostMask(), errs: errs}
	if off >= 0 {
		e.span = spanBytes
	}
	return e
}

func (m *Mirror) check(op string, off, length int64) error {
	if m.closed.Load() {
		return fmt.Errorf("mirror: %s: %w", op, blockdev.ErrClosed)
	}
	if err := blockdev.CheckRange(off, length, m.size); err != nil {
		return fmt.Errorf("mirror: %s: %w", op, err)
	}
	return nil
}
