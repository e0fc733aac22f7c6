package raid

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"

	"github.com/ddraid/ddraid/blockdev"
)

// Syncer is what resync, rebuild and scrub need from a redundant array
// (Raid35 and Mirror). Every method locks the blocks it works on against
// concurrent writes of the same array, one bounded run at a time, so it can
// run in the background while the array serves IO. Ranges are in array
// bytes and are widened to whole blocks.
type Syncer interface {
	blockdev.Device
	// Resync makes [off, off+length) consistent from its data: raid35
	// recomputes parity, a mirror copies its first live member to the
	// live others. Raid35 returns ErrDegraded while a member is lost
	// (there is nothing to recompute against; the region stays dirty).
	Resync(off, length int64) error
	// Check counts the blocks of [off, off+length) whose redundancy does
	// not match; with repair it rewrites them from their data (raid35:
	// parity; mirror: the first live member's copy). Raid35 returns
	// ErrDegraded when a member is lost.
	Check(off, length int64, repair bool) (mismatches int64, err error)
	// StartRecovery installs dev as the device of failed or missing member
	// m and makes it recovering: it takes every write from now on but
	// serves no read. The array owns dev from then on.
	StartRecovery(m int, dev blockdev.Device) error
	// Recover writes member m's content over [off, off+length) from the
	// other members. m must be recovering.
	Recover(m int, off, length int64) error
	// FinishRecovery makes recovering member m active.
	FinishRecovery(m int) error
	// MemberStates returns the member states in role order.
	MemberStates() []MemberState
	// Fail marks a member failed.
	Fail(m int, err error)
}

// ReadBalancer is a Syncer that spreads the reads of a healthy array over
// its redundancy once its owner vouches that the redundancy matches the
// data wherever no write is in flight (TrustRedundancy): a raid35 reads
// through parity in place of a busy member, a mirror reads the least busy
// copy instead of only the first. ReadsAround counts the reads that did.
type ReadBalancer interface {
	TrustRedundancy(on bool)
	RedundancyTrusted() bool
	ReadsAround() int64
}

var (
	_ Syncer       = (*Raid35)(nil)
	_ Syncer       = (*Mirror)(nil)
	_ ReadBalancer = (*Raid35)(nil)
	_ ReadBalancer = (*Mirror)(nil)
)

// syncRange splits [off, off+length) into locked runs of at most maxRun
// blocks of size b and calls fn for each run [n0, n1).
func syncRange(locks *rangeLock, b int64, maxRun int, off, length, blocks int64, fn func(n0, n1 int64) error) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("sync range %d+%d: %w", off, length, blockdev.ErrOutOfRange)
	}
	from, to := off/b, min((off+length+b-1)/b, blocks)
	for n := from; n < to; {
		n1 := min(n+int64(maxRun), to)
		h := locks.lock(n, n1)
		err := fn(n, n1)
		locks.unlock(h)
		if err != nil {
			return err
		}
		n = n1
	}
	return nil
}

// Resync implements Syncer: read the data of each run and write the whole
// stripes back, which recomputes parity.
func (r *Raid35) Resync(off, length int64) error {
	if r.closed.Load() {
		return fmt.Errorf("raid35: resync: %w", blockdev.ErrClosed)
	}
	return syncRange(&r.locks, int64(r.b), r.maxRun, off, length, r.blocks, func(n0, n1 int64) error {
		if lost := r.set.lostMask(); lost != 0 {
			return fmt.Errorf("raid35: resync blocks %d-%d: %w (members lost: %s)", n0, n1-1, ErrDegraded, maskString(lost))
		}
		bp := getBuf(int(n1-n0) * r.b)
		defer putBuf(bp)
		if err := r.readRun(*bp, n0, false); err != nil {
			return err
		}
		return r.writeRun(*bp, n0)
	})
}

// Check implements Syncer.
func (r *Raid35) Check(off, length int64, repair bool) (int64, error) {
	if r.closed.Load() {
		return 0, fmt.Errorf("raid35: check: %w", blockdev.ErrClosed)
	}
	var total int64
	err := syncRange(&r.locks, int64(r.b), r.maxRun, off, length, r.blocks, func(n0, n1 int64) error {
		bad, err := r.checkRun(n0, int(n1-n0))
		total += bad
		if err != nil || bad == 0 || !repair {
			return err
		}
		bp := getBuf(int(n1-n0) * r.b)
		defer putBuf(bp)
		if err := r.readRun(*bp, n0, false); err != nil {
			return err
		}
		return r.writeRun(*bp, n0)
	})
	return total, err
}

// StartRecovery implements Syncer.
func (r *Raid35) StartRecovery(m int, dev blockdev.Device) error {
	if dev == nil || dev.Size() < r.blocks*int64(r.f) {
		return fmt.Errorf("raid35: recover member %d: device smaller than the %d-byte data area", m, r.blocks*int64(r.f))
	}
	return r.set.startRecovery(m, func() {
		if old := r.members[m]; old != nil && old != dev {
			old.Close()
		}
		r.members[m] = dev
	})
}

// Recover implements Syncer: each run is read (member m's fragments are
// rebuilt from the others, as in a degraded read) and m's fragments are
// written.
func (r *Raid35) Recover(m int, off, length int64) error {
	if r.closed.Load() {
		return fmt.Errorf("raid35: recover: %w", blockdev.ErrClosed)
	}
	return syncRange(&r.locks, int64(r.b), r.maxRun, off, length, r.blocks, func(n0, n1 int64) error {
		if r.set.recovering.Load()&(1<<m) == 0 {
			return fmt.Errorf("raid35: recover member %d: not recovering (%s)", m, r.set.snapshot()[m])
		}
		bp := getBuf(int(n1-n0) * r.b)
		defer putBuf(bp)
		if err := r.readRun(*bp, n0, false); err != nil {
			return err
		}
		if err := r.writeMember(m, *bp, n0); err != nil {
			r.set.fail(m, err)
			return err
		}
		return nil
	})
}

// FinishRecovery implements Syncer.
func (r *Raid35) FinishRecovery(m int) error { return r.set.finishRecovery(m) }

// Resync implements Syncer: copy the first live member to the others.
func (m *Mirror) Resync(off, length int64) error {
	_, err := m.compare("resync", off, length, true, true)
	return err
}

// Check implements Syncer.
func (m *Mirror) Check(off, length int64, repair bool) (int64, error) {
	return m.compare("check", off, length, false, repair)
}

// compare reads every live member over each run and compares them with the
// first; mismatching runs are rewritten from the first when repair is set
// (always, when force is set). It returns the number of mismatching blocks.
func (m *Mirror) compare(op string, off, length int64, force, repair bool) (int64, error) {
	if m.closed.Load() {
		return 0, fmt.Errorf("mirror: %s: %w", op, blockdev.ErrClosed)
	}
	bs := int64(m.bs)
	maxRun := max(1, maxRunBytes/m.bs)
	var bad int64
	err := syncRange(&m.locks, bs, maxRun, off, length, m.size/bs, func(n0, n1 int64) error {
		live := m.all &^ m.set.lostMask()
		if live == 0 {
			return m.failedErr(op, n0*bs, (n1-n0)*bs, nil)
		}
		span := int((n1 - n0) * bs)
		bp := getBuf(len(m.members) * span)
		defer putBuf(bp)
		all := *bp
		errs := make([]error, len(m.members))
		forEachMember(live, errs, func(i int) error {
			if err := readFull(m.members[i], all[i*span:(i+1)*span], n0*bs); err != nil {
				return &MemberError{Level: LevelMirror, Op: op, Member: i, Block: n0, Err: err}
			}
			return nil
		})
		if err := m.settle(errs); err != nil {
			return err
		}
		src := bits.TrailingZeros64(live)
		first := all[src*span : (src+1)*span]
		differ := false
		for i := range m.members {
			if i == src || live&(1<<i) == 0 {
				continue
			}
			other := all[i*span : (i+1)*span]
			for b := 0; b < span; b += m.bs {
				if !bytes.Equal(first[b:b+m.bs], other[b:b+m.bs]) {
					bad++
					differ = true
				}
			}
		}
		if !force && !(repair && differ) {
			return nil
		}
		clear(errs)
		forEachMember(m.set.writeMask(m.all)&^(1<<src), errs, func(i int) error {
			if err := writeFull(m.members[i], first, n0*bs); err != nil {
				return &MemberError{Level: LevelMirror, Op: op, Member: i, Block: n0, Err: err}
			}
			return nil
		})
		return m.settle(errs)
	})
	return bad, err
}

// settle marks members with errors failed and reports them.
func (m *Mirror) settle(errs []error) error {
	var seen []error
	for i, err := range errs {
		if err != nil {
			m.set.fail(i, err)
			seen = append(seen, err)
		}
	}
	return errors.Join(seen...)
}

// StartRecovery implements Syncer.
func (m *Mirror) StartRecovery(i int, dev blockdev.Device) error {
	if dev == nil || dev.Size() < m.size {
		return fmt.Errorf("mirror: recover member %d: device smaller than the %d-byte data area", i, m.size)
	}
	return m.set.startRecovery(i, func() {
		if old := m.members[i]; old != nil && old != dev {
			old.Close()
		}
		m.members[i] = dev
	})
}

// Recover implements Syncer: copy a live member's range to member i.
func (m *Mirror) Recover(i int, off, length int64) error {
	if m.closed.Load() {
		return fmt.Errorf("mirror: recover: %w", blockdev.ErrClosed)
	}
	bs := int64(m.bs)
	return syncRange(&m.locks, bs, max(1, maxRunBytes/m.bs), off, length, m.size/bs, func(n0, n1 int64) error {
		if m.set.recovering.Load()&(1<<i) == 0 {
			return fmt.Errorf("mirror: recover member %d: not recovering", i)
		}
		bp := getBuf(int((n1 - n0) * bs))
		defer putBuf(bp)
		buf := *bp
		var src int = -1
		for j := range m.members {
			if m.set.lostMask()&(1<<j) == 0 {
				src = j
				break
			}
		}
		if src < 0 {
			return m.failedErr("recover", n0*bs, (n1-n0)*bs, nil)
		}
		if err := readFull(m.members[src], buf, n0*bs); err != nil {
			m.set.fail(src, err)
			return &MemberError{Level: LevelMirror, Op: "recover", Member: src, Block: n0, Err: err}
		}
		if err := writeFull(m.members[i], buf, n0*bs); err != nil {
			m.set.fail(i, err)
			return &MemberError{Level: LevelMirror, Op: "recover", Member: i, Block: n0, Err: err}
		}
		return nil
	})
}

// FinishRecovery implements Syncer.
func (m *Mirror) FinishRecovery(i int) error { return m.set.finishRecovery(i) }
