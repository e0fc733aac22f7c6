package raid

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/ddraid/ddraid/blockdev"
)

// Linear concatenates its members: member i covers the bytes after member
// i-1. A request that spans members is split at the boundaries and the
// pieces run in parallel. It has no redundancy: a member error fails the
// request. All methods are safe for concurrent use.
type Linear struct {
	members []blockdev.Device
	starts  []int64 // starts[i] is member i's first byte; starts[n] is Size
	bs      int
	spread  func() // Config.OnSpread, or nil
	closed  atomic.Bool
}

var _ blockdev.Device = (*Linear)(nil)

// NewLinear concatenates members (at least one, none nil) in order; the
// array size is the sum of their sizes. The array owns the members: Close
// closes them. Of cfg only OnSpread applies: a linear array has no member
// to fail over to.
func NewLinear(members []blockdev.Device, cfg Config) (*Linear, error) {
	if len(members) < 1 {
		return nil, errors.New("linear needs at least 1 member, got 0")
	}
	l := &Linear{members: append([]blockdev.Device(nil), members...), starts: make([]int64, len(members)+1), spread: cfg.OnSpread}
	for i, d := range members {
		if d == nil {
			return nil, fmt.Errorf("linear: member %d is missing; a linear array cannot run without a member", i)
		}
		l.starts[i+1] = l.starts[i] + d.Size()
		l.bs = max(l.bs, d.BlockSize())
	}
	if l.starts[len(members)] == 0 {
		return nil, errors.New("linear: every member is empty")
	}
	return l, nil
}

// Size implements blockdev.Device: the sum of the member sizes.
func (l *Linear) Size() int64 { return l.starts[len(l.members)] }

// BlockSize implements blockdev.Device: the largest member block size.
func (l *Linear) BlockSize() int { return l.bs }

// large calls Config.OnSpread for a request that moves more than
// fanoutSmall bytes: the member syscall that copies it spans sysmon ticks,
// and while the process has a single P sysmon takes that P from the
// syscall at every tick and hands it on; with an idle P beside it, it
// leaves it alone.
func (l *Linear) large(n int) {
	if n > fanoutSmall && l.spread != nil {
		l.spread()
	}
}

// ReadAt implements blockdev.Device.
func (l *Linear) ReadAt(p []byte, off int64) (int, error) {
	l.large(len(p))
	if i, moff := l.within(off, int64(len(p))); i >= 0 {
		if err := l.memberErr("read", off, i, moff, int64(len(p)), readFull(l.members[i], p, moff)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	err := l.split("read", off, int64(len(p)), func(i int, moff, at, n int64) error {
		return readFull(l.members[i], p[at:at+n], moff)
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt implements blockdev.Device.
func (l *Linear) WriteAt(p []byte, off int64) (int, error) {
	l.large(len(p))
	if i, moff := l.within(off, int64(len(p))); i >= 0 {
		if err := l.memberErr("write", off, i, moff, int64(len(p)), writeFull(l.members[i], p, moff)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	err := l.split("write", off, int64(len(p)), func(i int, moff, at, n int64) error {
		return writeFull(l.members[i], p[at:at+n], moff)
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Zero implements blockdev.Device.
func (l *Linear) Zero(off, length int64) error {
	return l.split("zero", off, length, func(i int, moff, _, n int64) error {
		return l.members[i].Zero(moff, n)
	})
}

// Trim implements blockdev.Device by trimming the members.
func (l *Linear) Trim(off, length int64) error {
	return l.split("trim", off, length, func(i int, moff, _, n int64) error {
		return l.members[i].Trim(moff, n)
	})
}

// Flush implements blockdev.Device: it flushes every member in parallel.
func (l *Linear) Flush() error {
	if l.closed.Load() {
		return fmt.Errorf("linear: flush: %w", blockdev.ErrClosed)
	}
	errs := make([]error, len(l.members))
	var wg sync.WaitGroup
	for i, d := range l.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Flush(); err != nil {
				errs[i] = &MemberError{Level: LevelLinear, Op: "flush", Member: i, Block: -1, Err: err}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close implements blockdev.Device: it closes every member.
func (l *Linear) Close() error {
	if l.closed.Swap(true) {
		return fmt.Errorf("linear: close: %w", blockdev.ErrClosed)
	}
	var errs []error
	for i, d := range l.members {
		if err := d.Close(); err != nil {
			errs = append(errs, &MemberError{Level: LevelLinear, Op: "close", Member: i, Block: -1, Err: err})
		}
	}
	return errors.Join(errs...)
}

// within returns the member that holds all of the valid, non-empty range
// [off, off+length) and the range's offset in it, or -1. It is the fast path
// of ReadAt and WriteAt: no closure is built, so nothing is allocated.
func (l *Linear) within(off, length int64) (int, int64) {
	if length <= 0 || l.closed.Load() || blockdev.CheckRange(off, length, l.Size()) != nil {
		return -1, 0
	}
	i := sort.Search(len(l.members), func(i int) bool { return l.starts[i+1] > off })
	if off+length > l.starts[i+1] {
		return -1, 0
	}
	return i, off - l.starts[i]
}

// memberErr wraps a member's error as split does; nil stays nil.
func (l *Linear) memberErr(op string, off int64, i int, moff, n int64, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("linear: %s offset %d length %d: %w", op, off, n,
		&MemberError{Level: LevelLinear, Op: op, Member: i, Block: -1, Err: fmt.Errorf("member offset %d length %d: %w", moff, n, err)})
}

// split checks [off, off+length) and calls fn for each member piece:
// member i, the offset within the member, the offset within the request
// and the piece length. Several pieces run in parallel; the errors of all
// failed pieces are returned joined.
func (l *Linear) split(op string, off, length int64, fn func(i int, moff, at, n int64) error) error {
	if l.closed.Load() {
		return fmt.Errorf("linear: %s: %w", op, blockdev.ErrClosed)
	}
	if err := blockdev.CheckRange(off, length, l.Size()); err != nil {
		return fmt.Errorf("linear: %s: %w", op, err)
	}
	if length == 0 {
		return nil
	}
	// first is the member holding byte off (skipping empty members).
	first := sort.Search(len(l.members), func(i int) bool { return l.starts[i+1] > off })
	end := off + length
	piece := func(i int) error {
		from := max(off, l.starts[i])
		to := min(end, l.starts[i+1])
		if err := fn(i, from-l.starts[i], from-off, to-from); err != nil {
			return &MemberError{Level: LevelLinear, Op: op, Member: i, Block: -1, Err: fmt.Errorf("member offset %d length %d: %w", from-l.starts[i], to-from, err)}
		}
		return nil
	}
	if end <= l.starts[first+1] {
		if err := piece(first); err != nil {
			return fmt.Errorf("linear: %s offset %d length %d: %w", op, off, length, err)
		}
		return nil
	}
	var pieces []int
	for i := first; i < len(l.members) && l.starts[i] < end; i++ {
		if l.starts[i+1] > l.starts[i] {
			pieces = append(pieces, i)
		}
	}
	errs := make([]error, len(pieces))
	var wg sync.WaitGroup
	for k, i := range pieces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = piece(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("linear: %s offset %d length %d: %w", op, off, length, err)
	}
	return nil
}
