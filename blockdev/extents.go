package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds the optional interfaces a Device may implement to tell
// callers (the NBD server above all) what it knows about its contents and
// how cheaply it can zero them. Every one is optional: a caller that finds
// a device without it falls back to a safe default, never to an error.
// Wrappers (Section, Delay) pass them through; a wrapper that does not is
// still correct, only less informative.

// ExtentFlags describe the allocation state of an Extent. The values are
// those of the NBD base:allocation metadata context, so they go on the wire
// unchanged.
type ExtentFlags uint32

const (
	// ExtentHole marks a range that is not allocated in the backing
	// storage: writing it may need space and can fail with ENOSPC.
	ExtentHole ExtentFlags = 1 << 0
	// ExtentZero marks a range that reads back as zeroes.
	ExtentZero ExtentFlags = 1 << 1
)

// Extent is a run of bytes that share their flags. Flags 0 means allocated
// data, or that the device does not know; both are always safe to report.
type Extent struct {
	Length int64
	Flags  ExtentFlags
}

// Extenter is implemented by devices that can describe which ranges are
// holes or read as zeroes without reading the data.
type Extenter interface {
	// Extents appends to dst the extents of [off, off+length) and returns
	// the extended slice. They are consecutive, each has Length > 0, and
	// their lengths sum to exactly length (length 0 appends nothing). A
	// range beyond Size fails with ErrOutOfRange. The answer is a snapshot:
	// writes running at the same time may change it. Extents does no data
	// IO (it may ask the file system), so it is cheap relative to reading
	// the range, and it is safe for concurrent use.
	Extents(dst []Extent, off, length int64) ([]Extent, error)
}

// FastZeroer is implemented by devices that know whether their Zero is
// much faster than writing the same number of zero bytes, because it
// deallocates (punches a hole) or uses a zero-out command instead of moving
// data. The NBD server uses it to honour NBD_CMD_FLAG_FAST_ZERO.
type FastZeroer interface {
	// CanFastZero reports whether Zero is fast right now. It does no IO
	// (a device may probe once and remember) and the answer may change
	// over time, for instance when an array member fails.
	CanFastZero() bool
}

// NoHoleZeroer is implemented by devices that can zero a range quickly
// while keeping it allocated, as NBD_CMD_FLAG_NO_HOLE requires (Zero may
// punch holes, after which a write can fail for lack of space).
type NoHoleZeroer interface {
	// ZeroNoHole makes [off, off+length) read as zeroes and leaves it
	// allocated. It uses fast methods only: when none is available it
	// returns an error wrapping ErrNotSupported and has changed nothing,
	// and the caller falls back to writing zeroes.
	ZeroNoHole(off, length int64) error
}

// ErrNotSupported reports an optional operation the device cannot do (or
// cannot do fast); see NoHoleZeroer.
var ErrNotSupported = errors.New("blockdev: operation not supported")

// AppendExtent appends e to dst, merging it into the last extent when the
// flags are equal. Extents of length 0 are dropped.
func AppendExtent(dst []Extent, e Extent) []Extent {
	if e.Length <= 0 {
		return dst
	}
	if n := len(dst); n > 0 && dst[n-1].Flags == e.Flags {
		dst[n-1].Length += e.Length
		return dst
	}
	return append(dst, e)
}

// ExtentsOf appends the extents of [off, off+length) of dev: its own answer
// when it implements Extenter, otherwise one extent with flags 0 (unknown).
func ExtentsOf(dev Device, dst []Extent, off, length int64) ([]Extent, error) {
	if x, ok := dev.(Extenter); ok {
		return x.Extents(dst, off, length)
	}
	if err := CheckRange(off, length, dev.Size()); err != nil {
		return dst, err
	}
	return AppendExtent(dst, Extent{Length: length}), nil
}

// CanFastZero reports whether dev implements FastZeroer and says its Zero
// is fast.
func CanFastZero(dev Device) bool {
	f, ok := dev.(FastZeroer)
	return ok && f.CanFastZero()
}

// ZeroNoHole zeroes [off, off+length) of dev keeping it allocated, with
// dev's NoHoleZeroer. A device without one gets an error wrapping
// ErrNotSupported.
func ZeroNoHole(dev Device, off, length int64) error {
	if z, ok := dev.(NoHoleZeroer); ok {
		return z.ZeroNoHole(off, length)
	}
	return fmt.Errorf("zero without holes: %w", ErrNotSupported)
}

// AlignExtents appends to dst the extents src, which describe the bytes
// from off on, coarsened so that every boundary between them falls on a
// multiple of align (absolute, not relative to off): a granule of align
// bytes that several source extents share gets only the flags all of them
// have. The start (off) and the end keep their own alignment. align must be
// positive.
func AlignExtents(dst, src []Extent, off, align int64) []Extent {
	var end int64 = off
	for _, e := range src {
		end += e.Length
	}
	var (
		acc      ExtentFlags
		accStart int64
		haveAcc  bool
		pos      = off
	)
	for _, e := range src {
		s, t := pos, pos+e.Length
		pos = t
		for s < t {
			gStart := max(off, s/align*align)
			gEnd := min(end, (s/align+1)*align)
			if s == gStart && !haveAcc {
				whole := t
				if t != end {
					whole = t / align * align
				}
				if whole > s {
					dst = AppendExtent(dst, Extent{Length: whole - s, Flags: e.Flags})
					s = whole
					continue
				}
			}
			// A piece of the granule [gStart, gEnd).
			pe := min(t, gEnd)
			if haveAcc {
				acc &= e.Flags
			} else {
				acc, accStart, haveAcc = e.Flags, gStart, true
			}
			s = pe
			if pe == gEnd {
				dst = AppendExtent(dst, Extent{Length: gEnd - accStart, Flags: acc})
				haveAcc = false
			}
		}
	}
	return dst
}

// --- Mem ---

var (
	_ Extenter     = (*Mem)(nil)
	_ FastZeroer   = (*Mem)(nil)
	_ NoHoleZeroer = (*Mem)(nil)
)

// memExtentGrain is the granule Mem reports extents in.
const memExtentGrain = 4096

var zeroGrain [memExtentGrain]byte

// Extents implements Extenter: every 4 KiB granule (clipped to the range)
// that holds only zeroes is ExtentZero. Memory is always allocated, so Mem
// never reports holes.
func (m *Mem) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check(off, length); err != nil {
		return dst, fmt.Errorf("mem extents: %w", err)
	}
	for pos, end := off, off+length; pos < end; {
		next := min(end, (pos/memExtentGrain+1)*memExtentGrain)
		var f ExtentFlags
		if bytes.Equal(m.data[pos:next], zeroGrain[:next-pos]) {
			f = ExtentZero
		}
		dst = AppendExtent(dst, Extent{Length: next - pos, Flags: f})
		pos = next
	}
	return dst, nil
}

// CanFastZero implements FastZeroer: clearing memory is cheaper than
// receiving and copying the same bytes.
func (m *Mem) CanFastZero() bool { return true }

// ZeroNoHole implements NoHoleZeroer: memory has no holes, so it is Zero.
func (m *Mem) ZeroNoHole(off, length int64) error { return m.Zero(off, length) }

// --- File ---

var (
	_ Extenter     = (*File)(nil)
	_ FastZeroer   = (*File)(nil)
	_ NoHoleZeroer = (*File)(nil)
)

// fileZeroCaps caches what a File's zeroing can do, probed on first use.
type fileZeroCaps struct {
	once sync.Once
	fast bool // Zero is fast: hole punching (files) or hardware zero-out (block devices)
}

func (d *File) zeroCaps() *fileZeroCaps {
	c := &d.zcaps
	c.once.Do(func() {
		if d.ro || d.enter(0, 0, false) != nil {
			return
		}
		defer d.leave()
		if d.block {
			c.fast = blockWriteZeroes(d.f)
			return
		}
		// Punching a hole beyond the end of the file changes nothing and
		// tells whether the file system supports it.
		end := (d.size/4096 + 1) * 4096
		c.fast = unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, end, 4096) == nil
	})
	return c
}

// blockWriteZeroes reports whether the block device behind f zeroes in
// hardware (queue/write_zeroes_max_bytes > 0), so BLKZEROOUT does not fall
// back to writing zero pages.
func blockWriteZeroes(f *os.File) bool {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	dir := fmt.Sprintf("/sys/dev/block/%d:%d/", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	for _, p := range []string{dir + "queue/write_zeroes_max_bytes", dir + "../queue/write_zeroes_max_bytes"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		return s != "" && s != "0\n" && s != "0"
	}
	return false
}

// Extents implements Extenter. Regular files report their holes (found
// with SEEK_DATA/SEEK_HOLE) as ExtentHole|ExtentZero and everything else as
// data (flags 0); block devices report everything as flags 0. File systems
// may report preallocated but unwritten ranges as holes; they read as
// zeroes all the same.
func (d *File) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if err := d.enter(off, length, false); err != nil {
		return dst, err
	}
	defer d.leave()
	if length == 0 {
		return dst, nil
	}
	end := off + length
	if d.block {
		return AppendExtent(dst, Extent{Length: length}), nil
	}
	fd := int(d.f.Fd())
	for pos := off; pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end // no data after pos
		} else if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				// The file system cannot tell: all data.
				return AppendExtent(dst, Extent{Length: end - pos}), nil
			}
			return dst, fmt.Errorf("extents of %s at %d: %w", d.path, pos, err)
		}
		data = min(data, end)
		if data > pos {
			dst = AppendExtent(dst, Extent{Length: data - pos, Flags: ExtentHole | ExtentZero})
			pos = data
			if pos >= end {
				break
			}
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return dst, fmt.Errorf("extents of %s at %d: %w", d.path, pos, err)
		}
		hole = min(max(hole, pos+1), end)
		dst = AppendExtent(dst, Extent{Length: hole - pos})
		pos = hole
	}
	return dst, nil
}

// CanFastZero implements FastZeroer: true for writable regular files on a
// file system that punches holes, and for block devices that zero in
// hardware. The check is made once.
func (d *File) CanFastZero() bool { return d.zeroCaps().fast }

// ZeroNoHole implements NoHoleZeroer. Regular files use
// FALLOC_FL_ZERO_RANGE, or punch a hole and allocate it again where that is
// not supported (tmpfs); block devices use BLKZEROOUT when the device
// zeroes in hardware.
func (d *File) ZeroNoHole(off, length int64) error {
	if !d.CanFastZero() {
		return fmt.Errorf("zero %s without holes: %w", d.path, ErrNotSupported)
	}
	if err := d.enter(off, length, true); err != nil {
		return err
	}
	defer d.leave()
	if length == 0 {
		return nil
	}
	fd := int(d.f.Fd())
	if d.block {
		r := [2]uint64{uint64(off), uint64(length)}
		if err := ioctlPtr(d.f.Fd(), unix.BLKZEROOUT, unsafe.Pointer(&r)); err != nil {
			return fmt.Errorf("zero %s at %d+%d: %w", d.path, off, length, err)
		}
		return nil
	}
	err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("zero %s at %d+%d: %w", d.path, off, length, err)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("zero %s without holes: %w", d.path, ErrNotSupported)
		}
		return fmt.Errorf("zero %s at %d+%d: %w", d.path, off, length, err)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, off, length); err != nil {
		return fmt.Errorf("allocate %s at %d+%d after zeroing: %w", d.path, off, length, err)
	}
	return nil
}

// --- Section ---

var (
	_ Extenter     = (*Section)(nil)
	_ FastZeroer   = (*Section)(nil)
	_ NoHoleZeroer = (*Section)(nil)
)

// Extents implements Extenter with the underlying device's extents of the
// window (flags 0 when it has none).
func (s *Section) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if err := CheckRange(off, length, s.size); err != nil {
		return dst, err
	}
	return ExtentsOf(s.dev, dst, s.off+off, length)
}

// CanFastZero implements FastZeroer as the underlying device does.
func (s *Section) CanFastZero() bool { return CanFastZero(s.dev) }

// ZeroNoHole implements NoHoleZeroer through the underlying device.
func (s *Section) ZeroNoHole(off, length int64) error {
	if err := CheckRange(off, length, s.size); err != nil {
		return err
	}
	return ZeroNoHole(s.dev, s.off+off, length)
}

// --- Delay ---

var (
	_ Extenter     = (*Delay)(nil)
	_ FastZeroer   = (*Delay)(nil)
	_ NoHoleZeroer = (*Delay)(nil)
)

// Extents implements Extenter through the wrapped device, without delay:
// it is a metadata query, not data IO.
func (d *Delay) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	return ExtentsOf(d.dev, dst, off, length)
}

// CanFastZero implements FastZeroer as the wrapped device does.
func (d *Delay) CanFastZero() bool { return CanFastZero(d.dev) }

// ZeroNoHole implements NoHoleZeroer through the wrapped device, delayed
// like a write when it is attempted.
func (d *Delay) ZeroNoHole(off, length int64) error {
	if _, ok := d.dev.(NoHoleZeroer); !ok {
		return fmt.Errorf("zero without holes: %w", ErrNotSupported)
	}
	time.Sleep(d.write)
	return ZeroNoHole(d.dev, off, length)
}
