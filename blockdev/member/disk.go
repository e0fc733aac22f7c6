package member

import (
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/ddraid/ddraid/bitmap"
	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/raid/meta"
)

// Disk is one hosted disk. It implements nbd.Member; serve it with
// nbd.Export{Name: d.Path(), Device: d.Device(), Member: d}.
type Disk struct {
	h    *Host
	path string
	id   string
	dev  blockdev.Device
}

var _ nbd.Member = (*Disk)(nil)

// Path returns the disk's absolute path (its export name).
func (d *Disk) Path() string { return d.path }

// Device returns the disk. The Host closes it.
func (d *Disk) Device() blockdev.Device { return d.dev }

// Admit implements nbd.Member: it refuses a stale epoch, raises the slot's
// minimum to a newer one (fencing older writers), and opens the marks of
// (array, disk, slot) unless w.RegionSize is 0.
func (d *Disk) Admit(w nbd.Writer) (nbd.Session, error) {
	if w.DataOffset > uint64(d.dev.Size()) {
		return nil, fmt.Errorf("member: disk %s of %d bytes: data offset %d is beyond its end", d.path, d.dev.Size(), w.DataOffset)
	}
	h := d.h
	h.mu.Lock()
	err := h.fencedErrLocked(w)
	newer := w.Epoch > h.st.Fences[fenceKey(w.Array, w.Slot)]
	h.mu.Unlock()
	if err != nil {
		h.log.Warn("member: fenced writer refused", "disk", d.path, "writer", w.String(), "err", err)
		return nil, err
	}
	if newer {
		if err := h.Fence(w.Array, w.Slot, w.Epoch); err != nil {
			return nil, err
		}
	}
	s := &session{d: d, w: w, fkey: fenceKey(w.Array, w.Slot)}
	if w.RegionSize != 0 {
		bm, err := h.marks(d, w)
		if err != nil {
			return nil, err
		}
		s.bm = bm
		s.size = d.dev.Size() - int64(w.DataOffset)
	}
	h.log.Debug("member: writer admitted", "disk", d.path, "writer", w.String())
	return s, nil
}

// Dirty implements nbd.Member: the regions of the disk marked for slot,
// as extents covering [off, off+length). When the disk carries a ddraid
// member header, only the marks of that array count (a disk reused by a
// new array may still hold an old array's marks); without one, every
// array's marks do, which is never too few.
func (d *Disk) Dirty(slot uint32, off, length int64, dst []blockdev.Extent) ([]blockdev.Extent, error) {
	owner := ""
	if hd, err := meta.ReadHeader(d.dev); err == nil {
		owner = hex.EncodeToString(hd.ArrayUUID[:])
	}
	h := d.h
	h.mu.Lock()
	var infos []markInfo
	var keys []string
	for k, info := range h.st.Marks {
		if info.Disk == d.path && (owner == "" || info.Array == owner) {
			keys, infos = append(keys, k), append(infos, info)
		}
	}
	h.mu.Unlock()
	var marked []span
	for i, k := range keys {
		regions, err := h.store.Dirty(k, int(slot))
		if err != nil {
			return dst, fmt.Errorf("member: disk %s: %w", d.path, err)
		}
		rs, base := int64(infos[i].RegionSize), int64(infos[i].DataOffset)
		for _, r := range regions {
			marked = append(marked, span{base + int64(r)*rs, base + int64(r+1)*rs})
		}
	}
	return extentsOf(dst, marked, off, off+length), nil
}

// span is a byte range [start, end).
type span struct{ start, end int64 }

// extentsOf appends extents covering [from, to): StateDirty over the
// union of marked, 0 elsewhere.
func extentsOf(dst []blockdev.Extent, marked []span, from, to int64) []blockdev.Extent {
	slices.SortFunc(marked, func(a, b span) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	add := func(n int64, flags blockdev.ExtentFlags) {
		if n <= 0 {
			return
		}
		if k := len(dst) - 1; k >= 0 && dst[k].Flags == flags {
			dst[k].Length += n
			return
		}
		dst = append(dst, blockdev.Extent{Length: n, Flags: flags})
	}
	at := from
	for _, m := range marked {
		s, e := max(m.start, at), min(m.end, to)
		if e <= s {
			continue
		}
		add(s-at, 0)
		add(e-s, nbd.StateDirty)
		at = e
	}
	add(to-at, 0)
	return dst
}

// session is one writer connection to a disk.
type session struct {
	d    *Disk
	w    nbd.Writer
	bm   *bitmap.Bitmap // nil: no marks
	fkey string         // fenceKey of the writer's (array, slot)
	size int64          // bytes the marks cover, from DataOffset
}

// StartWrite implements nbd.Session: the fence check, then the marks.
func (s *session) StartWrite(off, length int64) (func(), error) {
	h := s.d.h
	h.fence.RLock()
	h.mu.Lock()
	stale := s.w.Epoch < h.st.Fences[s.fkey]
	h.mu.Unlock()
	if stale {
		h.fence.RUnlock()
		h.mu.Lock()
		err := h.fencedErrLocked(s.w)
		h.mu.Unlock()
		return nil, err
	}
	if s.bm == nil {
		return h.fence.RUnlock, nil
	}
	base := int64(s.w.DataOffset)
	start, end := max(off, base)-base, min(off+length-base, s.size)
	if end <= start {
		return h.fence.RUnlock, nil // the header area: not marked
	}
	done, err := s.bm.StartWrite(start, end-start)
	if err != nil {
		h.fence.RUnlock()
		return nil, fmt.Errorf("member: disk %s: %w", s.d.path, err)
	}
	return func() { done(); h.fence.RUnlock() }, nil
}

// Clear implements nbd.Session: it clears the regions lying wholly inside
// [off, off+length) (the last, shorter region of the disk counts when the
// range reaches the disk's end). A fenced writer may not clear.
func (s *session) Clear(off, length int64) error {
	h := s.d.h
	// Held like a write: a fence waits for clears in flight too, so that
	// after it no mark of the slot goes at the old epoch's request.
	h.fence.RLock()
	defer h.fence.RUnlock()
	h.mu.Lock()
	err := h.fencedErrLocked(s.w)
	h.mu.Unlock()
	if err != nil {
		return err
	}
	if s.bm == nil {
		return nil
	}
	base, rs := int64(s.w.DataOffset), s.bm.RegionSize()
	start, end := max(off, base)-base, min(off+length-base, s.size)
	if end <= start {
		return nil
	}
	first := (start + rs - 1) / rs
	last := end / rs // exclusive
	if end == s.size {
		last = int64(s.bm.NumRegions())
	}
	if last <= first {
		return nil
	}
	regions := make([]uint64, 0, last-first)
	for r := first; r < last; r++ {
		regions = append(regions, uint64(r))
	}
	if err := s.bm.ClearRegions(regions); err != nil {
		return fmt.Errorf("member: disk %s: clear for %s: %w", s.d.path, s.w.String(), err)
	}
	return nil
}

// Close implements nbd.Session. The marks stay open for the writer's next
// connection.
func (s *session) Close() {}
