package raid

import (
	"fmt"
	"math/bits"
	"sort"

	"github.com/ddraid/ddraid/blockdev"
)

// This file gives the engines the optional blockdev interfaces the NBD
// server uses for NBD_CMD_BLOCK_STATUS and NBD_CMD_FLAG_FAST_ZERO. They are
// metadata queries: no data is read, no member is marked failed by them,
// and a member that cannot answer makes the answer "unknown" (flags 0),
// which is always correct.
//
// Extents of a redundant array are the intersection of its live members'
// extents: a range is a hole (or reads as zeroes) only where every member's
// covering range is. A degraded array reports everything as unknown, since
// the missing member's contents cannot be asked.

var (
	_ blockdev.Extenter     = (*Raid35)(nil)
	_ blockdev.FastZeroer   = (*Raid35)(nil)
	_ blockdev.Extenter     = (*Mirror)(nil)
	_ blockdev.FastZeroer   = (*Mirror)(nil)
	_ blockdev.Extenter     = (*Linear)(nil)
	_ blockdev.FastZeroer   = (*Linear)(nil)
	_ blockdev.NoHoleZeroer = (*Linear)(nil)
)

// unknownExtent appends one extent of flags 0 covering length bytes.
func unknownExtent(dst []blockdev.Extent, length int64) []blockdev.Extent {
	return blockdev.AppendExtent(dst, blockdev.Extent{Length: length})
}

// memberExtents returns the extents of [off, off+length) of every member in
// mask, or ok=false when a member cannot answer.
func memberExtents(members []blockdev.Device, mask uint64, off, length int64) (lists [][]blockdev.Extent, ok bool) {
	for mask != 0 {
		m := bits.TrailingZeros64(mask)
		mask &^= 1 << m
		l, err := blockdev.ExtentsOf(members[m], nil, off, length)
		if err != nil {
			return nil, false
		}
		lists = append(lists, l)
	}
	return lists, true
}

// intersectExtents merges lists that describe the same range into one list
// whose every extent has only the flags that all lists have there.
func intersectExtents(dst []blockdev.Extent, lists [][]blockdev.Extent) []blockdev.Extent {
	if len(lists) == 0 {
		return dst
	}
	idx := make([]int, len(lists))
	rem := make([]int64, len(lists))
	for i, l := range lists {
		if len(l) == 0 {
			return dst
		}
		rem[i] = l[0].Length
	}
	for {
		step := rem[0]
		flags := ^blockdev.ExtentFlags(0)
		for i, l := range lists {
			step = min(step, rem[i])
			flags &= l[idx[i]].Flags
		}
		dst = blockdev.AppendExtent(dst, blockdev.Extent{Length: step, Flags: flags})
		for i, l := range lists {
			rem[i] -= step
			if rem[i] == 0 {
				idx[i]++
				if idx[i] == len(l) {
					return dst // the lists have the same total length
				}
				rem[i] = l[idx[i]].Length
			}
		}
	}
}

// clipExtents appends the part of src (which covers at least skip+length
// bytes) from byte skip to byte skip+length.
func clipExtents(dst, src []blockdev.Extent, skip, length int64) []blockdev.Extent {
	for _, e := range src {
		if length <= 0 {
			break
		}
		if e.Length <= skip {
			skip -= e.Length
			continue
		}
		n := min(e.Length-skip, length)
		dst = blockdev.AppendExtent(dst, blockdev.Extent{Length: n, Flags: e.Flags})
		skip = 0
		length -= n
	}
	return dst
}

// liveCanFastZero reports whether every member in mask zeroes fast.
func liveCanFastZero(members []blockdev.Device, mask uint64) bool {
	for mask != 0 {
		m := bits.TrailingZeros64(mask)
		mask &^= 1 << m
		if !blockdev.CanFastZero(members[m]) {
			return false
		}
	}
	return true
}

// Extents implements blockdev.Extenter. Logical block n occupies bytes
// [n*F, (n+1)*F) of every member, so the blocks touching the range map to
// one member range, the same on every member; a block is a hole (reads as
// zeroes) only when its fragment is on every member. A degraded array
// reports flags 0.
func (r *Raid35) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	if err := r.check("extents", off, length); err != nil {
		return dst, err
	}
	if length == 0 {
		return dst, nil
	}
	if r.set.lostMask() != 0 {
		return unknownExtent(dst, length), nil
	}
	n0, n1 := r.blockSpan(off, length)
	f, b := int64(r.f), int64(r.b)
	lists, ok := memberExtents(r.members, r.all, n0*f, (n1-n0)*f)
	if !ok {
		return unknownExtent(dst, length), nil
	}
	// Fragment granules are blocks; scale member bytes to logical bytes.
	perBlock := blockdev.AlignExtents(nil, intersectExtents(nil, lists), n0*f, f)
	for i := range perBlock {
		perBlock[i].Length = perBlock[i].Length / f * b
	}
	return clipExtents(dst, perBlock, off-n0*b, length), nil
}

// CanFastZero implements blockdev.FastZeroer: Zero zeroes whole blocks with
// member Zero (edge blocks by a small read-modify-write), so it is fast
// when every live member's Zero is and the array can still write.
func (r *Raid35) CanFastZero() bool {
	lost := r.set.lostMask()
	return !r.closed.Load() && bits.OnesCount64(lost) <= 1 && liveCanFastZero(r.members, r.all&^lost)
}

// Extents implements blockdev.Extenter: every member holds the whole
// array, so the extents are the intersection of the members' extents. A
// degraded mirror reports flags 0.
func (m *Mirror) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	if err := m.check("extents", off, length); err != nil {
		return dst, err
	}
	if length == 0 {
		return dst, nil
	}
	if m.set.lostMask() != 0 {
		return unknownExtent(dst, length), nil
	}
	lists, ok := memberExtents(m.members, m.all, off, length)
	if !ok {
		return unknownExtent(dst, length), nil
	}
	return intersectExtents(dst, lists), nil
}

// CanFastZero implements blockdev.FastZeroer: Zero runs member Zero on every
// live member.
func (m *Mirror) CanFastZero() bool {
	lost := m.set.lostMask()
	return !m.closed.Load() && lost != m.all && liveCanFastZero(m.members, m.all&^lost)
}

// linearPieces calls fn for each member piece of [off, off+length) in
// order: member i, the offset within the member and the piece length.
func (l *Linear) linearPieces(off, length int64, fn func(i int, moff, n int64) bool) {
	end := off + length
	first := sort.Search(len(l.members), func(i int) bool { return l.starts[i+1] > off })
	for i := first; i < len(l.members) && l.starts[i] < end; i++ {
		from, to := max(off, l.starts[i]), min(end, l.starts[i+1])
		if to > from && !fn(i, from-l.starts[i], to-from) {
			return
		}
	}
}

func (l *Linear) checkMeta(op string, off, length int64) error {
	if l.closed.Load() {
		return fmt.Errorf("linear: %s: %w", op, blockdev.ErrClosed)
	}
	if err := blockdev.CheckRange(off, length, l.Size()); err != nil {
		return fmt.Errorf("linear: %s: %w", op, err)
	}
	return nil
}

// Extents implements blockdev.Extenter: the members' extents, concatenated.
// A member that cannot answer contributes flags 0.
func (l *Linear) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	if err := l.checkMeta("extents", off, length); err != nil {
		return dst, err
	}
	l.linearPieces(off, length, func(i int, moff, n int64) bool {
		before := len(dst)
		var err error
		dst, err = blockdev.ExtentsOf(l.members[i], dst, moff, n)
		if err != nil {
			dst = unknownExtent(dst[:before], n)
		}
		return true
	})
	return dst, nil
}

// CanFastZero implements blockdev.FastZeroer: every member zeroes fast.
func (l *Linear) CanFastZero() bool {
	if l.closed.Load() {
		return false
	}
	for _, d := range l.members {
		if !blockdev.CanFastZero(d) {
			return false
		}
	}
	return true
}

// ZeroNoHole implements blockdev.NoHoleZeroer on the members the range
// touches, all of which must support it and zero fast; otherwise it
// returns an error wrapping blockdev.ErrNotSupported and changes nothing.
func (l *Linear) ZeroNoHole(off, length int64) error {
	if err := l.checkMeta("zero", off, length); err != nil {
		return err
	}
	supported := true
	l.linearPieces(off, length, func(i int, _, _ int64) bool {
		_, ok := l.members[i].(blockdev.NoHoleZeroer)
		supported = ok && blockdev.CanFastZero(l.members[i])
		return supported
	})
	if !supported {
		return fmt.Errorf("linear: zero without holes: %w", blockdev.ErrNotSupported)
	}
	return l.split("zero", off, length, func(i int, moff, _, n int64) error {
		return blockdev.ZeroNoHole(l.members[i], moff, n)
	})
}
