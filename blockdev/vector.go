package blockdev

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// VectorWriter is an optional Device method: a write whose data is
// gathered from several buffers, as one request to the device. An array
// that sends a member the fragments of many blocks uses it to write them
// straight from the caller's buffer (File: one pwritev) instead of copying
// them into one buffer first.
type VectorWriter interface {
	// WriteVAt writes the concatenation of bufs at off, with the same
	// contract as WriteAt: n is the number of bytes written, and an error
	// is returned whenever n is less than the total length. Buffers may be
	// empty. bufs and the buffers are not retained after it returns.
	WriteVAt(bufs [][]byte, off int64) (int, error)
}

// VectorReader is the read side of VectorWriter: one read whose data is
// scattered into several buffers (File: one preadv), so an array reads a
// member's fragments of many blocks straight into their places in the
// caller's buffer.
type VectorReader interface {
	// ReadVAt reads len(bufs[0])+len(bufs[1])+… bytes at off into bufs in
	// order, with the same contract as ReadAt.
	ReadVAt(bufs [][]byte, off int64) (int, error)
}

// ReadV reads into bufs at off on d, with d's ReadVAt when it has one;
// otherwise with one ReadAt into a scratch buffer whose bytes are then
// scattered, so a device still sees one request.
func ReadV(d Device, bufs [][]byte, off int64) (int, error) {
	if v, ok := d.(VectorReader); ok {
		return v.ReadVAt(bufs, off)
	}
	switch len(bufs) {
	case 0:
		return d.ReadAt(nil, off)
	case 1:
		return d.ReadAt(bufs[0], off)
	}
	total := vecLen(bufs)
	bp := gatherPool.Get().(*[]byte)
	defer gatherPool.Put(bp)
	if cap(*bp) < total {
		*bp = make([]byte, total)
	}
	buf := (*bp)[:total]
	n, err := d.ReadAt(buf, off)
	scatter(bufs, buf[:n])
	return n, err
}

// scatter copies src over bufs in order.
func scatter(bufs [][]byte, src []byte) {
	for _, b := range bufs {
		if len(src) == 0 {
			return
		}
		src = src[copy(b, src):]
	}
}

// vecLen returns the total length of bufs.
func vecLen(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// gatherPool holds the buffers WriteV gathers into for devices without
// WriteVAt.
var gatherPool = sync.Pool{New: func() any { return new([]byte) }}

// WriteV writes the concatenation of bufs at off on d, with d's WriteVAt
// when it has one; otherwise the buffers are copied into one scratch buffer
// and written with a single WriteAt, so a device still sees one request.
func WriteV(d Device, bufs [][]byte, off int64) (int, error) {
	if v, ok := d.(VectorWriter); ok {
		return v.WriteVAt(bufs, off)
	}
	switch len(bufs) {
	case 0:
		return d.WriteAt(nil, off)
	case 1:
		return d.WriteAt(bufs[0], off)
	}
	total := vecLen(bufs)
	bp := gatherPool.Get().(*[]byte)
	defer gatherPool.Put(bp)
	if cap(*bp) < total {
		*bp = make([]byte, total)
	}
	buf := (*bp)[:total]
	at := 0
	for _, b := range bufs {
		at += copy(buf[at:], b)
	}
	return d.WriteAt(buf, off)
}

// The wrappers pass WriteVAt through, so that a File under them keeps its
// vectored path.

var (
	_ VectorReader = (*File)(nil)
	_ VectorReader = (*Section)(nil)
	_ VectorReader = (*Swap)(nil)
	_ VectorReader = (*Stats)(nil)
	_ VectorReader = (*Delay)(nil)
	_ VectorWriter = (*File)(nil)
	_ VectorWriter = (*Section)(nil)
	_ VectorWriter = (*Swap)(nil)
	_ VectorWriter = (*Stats)(nil)
	_ VectorWriter = (*Delay)(nil)
)

// ReadVAt implements VectorReader.
func (s *Section) ReadVAt(bufs [][]byte, off int64) (int, error) {
	if err := CheckRange(off, int64(vecLen(bufs)), s.size); err != nil {
		return 0, err
	}
	return ReadV(s.dev, bufs, s.off+off)
}

// ReadVAt implements VectorReader.
func (s *Swap) ReadVAt(bufs [][]byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return ReadV(s.dev, bufs, off)
}

// ReadVAt implements VectorReader; it counts as one read.
func (s *Stats) ReadVAt(bufs [][]byte, off int64) (int, error) {
	s.c.reads.Add(1)
	t := time.Now()
	n, err := ReadV(s.dev, bufs, off)
	s.readLat.observe(time.Since(t))
	s.c.readBytes.Add(int64(n))
	return n, s.count(err)
}

// ReadVAt implements VectorReader; it is delayed like one read.
func (d *Delay) ReadVAt(bufs [][]byte, off int64) (int, error) {
	time.Sleep(d.read)
	return ReadV(d.dev, bufs, off)
}

// WriteVAt implements VectorWriter.
func (s *Section) WriteVAt(bufs [][]byte, off int64) (int, error) {
	if err := CheckRange(off, int64(vecLen(bufs)), s.size); err != nil {
		return 0, err
	}
	return WriteV(s.dev, bufs, s.off+off)
}

// WriteVAt implements VectorWriter.
func (s *Swap) WriteVAt(bufs [][]byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return WriteV(s.dev, bufs, off)
}

// WriteVAt implements VectorWriter; it counts as one write.
func (s *Stats) WriteVAt(bufs [][]byte, off int64) (int, error) {
	s.c.writes.Add(1)
	t := time.Now()
	n, err := WriteV(s.dev, bufs, off)
	s.writeLat.observe(time.Since(t))
	s.c.writeBytes.Add(int64(n))
	return n, s.count(err)
}

// WriteVAt implements VectorWriter; it is delayed like one write.
func (d *Delay) WriteVAt(bufs [][]byte, off int64) (int, error) {
	time.Sleep(d.write)
	return WriteV(d.dev, bufs, off)
}

// iovMax is the most buffers one pwritev takes (Linux IOV_MAX).
const iovMax = 1024

// WriteVAt implements VectorWriter with pwritev on the buffered
// descriptor. On a File opened with Direct, a request that is sector
// aligned is gathered into an aligned buffer and written with O_DIRECT, as
// WriteAt would.
func (d *File) WriteVAt(bufs [][]byte, off int64) (int, error) {
	total := vecLen(bufs)
	if err := d.enter(off, int64(total), true); err != nil {
		return 0, err
	}
	defer d.leave()
	if total == 0 {
		return 0, nil
	}
	if d.direct != nil && off%512 == 0 && total%512 == 0 {
		bp, b := alignedBuf(total)
		defer bouncePool.Put(bp)
		at := 0
		for _, p := range bufs {
			at += copy(b[at:], p)
		}
		n, err := d.direct.WriteAt(b, off)
		if err != nil {
			return n, fmt.Errorf("write %s at %d: %w", d.path, off, err)
		}
		return n, nil
	}
	n, err := vecFull(d, unix.SYS_PWRITEV, bufs, off)
	if err != nil {
		return n, fmt.Errorf("write %s at %d (%d buffers): %w", d.path, off, len(bufs), err)
	}
	return n, nil
}

// ReadVAt implements VectorReader with preadv on the buffered descriptor.
// On a File opened with Direct, a sector-aligned request is read with
// O_DIRECT into an aligned buffer and scattered, as ReadAt would.
func (d *File) ReadVAt(bufs [][]byte, off int64) (int, error) {
	total := vecLen(bufs)
	if err := d.enter(off, int64(total), false); err != nil {
		return 0, err
	}
	defer d.leave()
	if total == 0 {
		return 0, nil
	}
	if d.direct != nil && off%512 == 0 && total%512 == 0 {
		bp, b := alignedBuf(total)
		defer bouncePool.Put(bp)
		n, err := readFull(d.direct, b, off)
		scatter(bufs, b[:n])
		if err != nil {
			return n, fmt.Errorf("read %s at %d: %w", d.path, off, err)
		}
		return n, nil
	}
	n, err := vecFull(d, unix.SYS_PREADV, bufs, off)
	if err != nil {
		return n, fmt.Errorf("read %s at %d (%d buffers): %w", d.path, off, len(bufs), err)
	}
	return n, nil
}
