package raid

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/ddraid/ddraid/blockdev"
)

// CheckBlocks verifies parity of blocks [from, to): for each block it reads
// every fragment and compares the XOR of the data fragments with the parity
// fragment. It returns the number of blocks whose parity does not match.
// The array must not be degraded (ErrDegraded). Each run of blocks is
// locked while it is checked, so concurrent writes do not cause false
// mismatches. A member read error marks the member failed and stops the
// check with an error. Scrub and tests use it; it repairs nothing.
func (r *Raid35) CheckBlocks(from, to int64) (mismatches int64, err error) {
	if r.closed.Load() {
		return 0, fmt.Errorf("raid35: check: %w", blockdev.ErrClosed)
	}
	if from < 0 || to < from || to > r.blocks {
		return 0, fmt.Errorf("raid35: check blocks [%d, %d) of %d: %w", from, to, r.blocks, blockdev.ErrOutOfRange)
	}
	for n := from; n < to; {
		cnt := min(int64(r.maxRun), to-n)
		h := r.locks.lock(n, n+cnt)
		bad, err := r.checkRun(n, int(cnt))
		r.locks.unlock(h)
		mismatches += bad
		if err != nil {
			return mismatches, err
		}
		n += cnt
	}
	return mismatches, nil
}

// checkRun checks cnt blocks from n0; they must be locked.
func (r *Raid35) checkRun(n0 int64, cnt int) (int64, error) {
	what := fmt.Sprintf("check blocks %d-%d", n0, n0+int64(cnt)-1)
	if lost := r.set.lostMask(); lost != 0 {
		return 0, fmt.Errorf("raid35: %s: %w (members lost: %s)", what, ErrDegraded, maskString(lost))
	}
	span := cnt * r.f
	bp := getBuf(r.m * span)
	defer putBuf(bp)
	all := *bp
	var errs [maxMembers]error
	forEachMember(r.all, errs[:], func(m int) error {
		if err := readFull(r.members[m], all[m*span:(m+1)*span], n0*int64(r.f)); err != nil {
			return &MemberError{Level: LevelRaid35, Op: "check", Member: m, Block: n0, Err: err}
		}
		return nil
	})
	var seen []error
	for m, err := range errs {
		if err != nil {
			r.set.fail(m, err)
			seen = append(seen, err)
		}
	}
	if len(seen) > 0 {
		return 0, fmt.Errorf("raid35: %s: %w", what, errors.Join(seen...))
	}
	var srcs [maxMembers - 1][]byte
	pp := getBuf(r.f)
	defer putBuf(pp)
	want := *pp
	var bad int64
	for i := range cnt {
		n := n0 + int64(i)
		for d := range r.m - 1 {
			at := r.g.DataMember(n, d)*span + i*r.f
			srcs[d] = all[at : at+r.f]
		}
		xorBlocks(want, srcs[:r.m-1])
		at := r.g.ParityMember(n)*span + i*r.f
		if !bytes.Equal(want, all[at:at+r.f]) {
			bad++
		}
	}
	return bad, nil
}
