package blockdev

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FileOptions configure OpenFile.
type FileOptions struct {
	// ReadOnly opens the file or device without write access.
	ReadOnly bool
	// Direct opens with O_DIRECT, bypassing the page cache. Requests that
	// are not 512-byte aligned in offset, length or memory are served
	// through a bounce buffer or a second, buffered descriptor.
	Direct bool
	// Create creates a sparse file of CreateSize bytes if path does not
	// exist.
	Create     bool
	CreateSize int64
}

// File is a Device backed by a regular file or a block device, using
// pread/pwrite. Trim and Zero punch holes in regular files and use the
// discard/zero-out ioctls on block devices.
type File struct {
	path    string
	f       *os.File // buffered (or the only) descriptor
	direct  *os.File // O_DIRECT descriptor, nil unless FileOptions.Direct
	size    int64
	block   bool // a block device
	ro      bool
	bs      int
	closeMu sync.RWMutex
	closed  bool
	zcaps   fileZeroCaps // what Zero can do fast; see extents.go
}

var _ Device = (*File)(nil)

const directAlign = 4096

// OpenFile opens a file or block device as a Device.
func OpenFile(path string, opt FileOptions) (*File, error) {
	flags := os.O_RDWR
	if opt.ReadOnly {
		flags = os.O_RDONLY
	}
	if opt.Create {
		if opt.CreateSize <= 0 {
			return nil, fmt.Errorf("create %s: size must be positive", path)
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		switch {
		case err == nil:
			if err := f.Truncate(opt.CreateSize); err != nil {
				f.Close()
				os.Remove(path)
				return nil, fmt.Errorf("create %s: %w", path, err)
			}
			f.Close()
		case errors.Is(err, os.ErrExist):
		default:
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := &File{path: path, f: f, ro: opt.ReadOnly, bs: 512}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	switch {
	case st.Mode().IsRegular():
		d.size = st.Size()
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		d.block = true
		var sz uint64
		if err := ioctlPtr(f.Fd(), unix.BLKGETSIZE64, unsafe.Pointer(&sz)); err != nil {
			f.Close()
			return nil, fmt.Errorf("size of block device %s: %w", path, err)
		}
		d.size = int64(sz)
		var lbs int32
		if err := ioctlPtr(f.Fd(), unix.BLKSSZGET, unsafe.Pointer(&lbs)); err == nil && lbs >= 512 {
			d.bs = int(lbs)
		}
	default:
		f.Close()
		return nil, fmt.Errorf("open %s: not a regular file or block device", path)
	}
	if opt.Direct {
		df, err := os.OpenFile(path, flags|unix.O_DIRECT, 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open %s with O_DIRECT: %w", path, err)
		}
		d.direct = df
	}
	return d, nil
}

func ioctlPtr(fd uintptr, req uint, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// Path returns the path the device was opened with.
func (d *File) Path() string { return d.path }

func (d *File) enter(off, n int64, write bool) error {
	d.closeMu.RLock()
	if d.closed {
		d.closeMu.RUnlock()
		return ErrClosed
	}
	if write && d.ro {
		d.closeMu.RUnlock()
		return fmt.Errorf("%s: %w", d.path, ErrReadOnly)
	}
	if err := CheckRange(off, n, d.size); err != nil {
		d.closeMu.RUnlock()
		return fmt.Errorf("%s: %w", d.path, err)
	}
	return nil
}

func (d *File) leave() { d.closeMu.RUnlock() }

// directOK reports whether p at off can go straight through O_DIRECT.
func directOK(p []byte, off int64) bool {
	return off%512 == 0 && len(p)%512 == 0 && len(p) > 0 &&
		uintptr(unsafe.Pointer(&p[0]))%directAlign == 0
}

// route picks the descriptor for p at off: the O_DIRECT one when it is
// open and the request is sector-aligned (bounce reports that p itself is
// not memory-aligned and must be copied through an aligned buffer), else
// the buffered one.
func (d *File) route(p []byte, off int64) (f *os.File, bounce bool) {
	if d.direct == nil || off%512 != 0 || len(p)%512 != 0 || len(p) == 0 {
		return d.f, false
	}
	return d.direct, !directOK(p, off)
}

var bouncePool = sync.Pool{New: func() any { return new([]byte) }}

// alignedBuf returns an n-byte slice aligned to directAlign, from the pool.
func alignedBuf(n int) (*[]byte, []byte) {
	bp := bouncePool.Get().(*[]byte)
	if cap(*bp) < n+directAlign {
		*bp = make([]byte, n+directAlign)
	}
	b := *bp
	shift := int(uintptr(unsafe.Pointer(&b[0])) % directAlign)
	if shift != 0 {
		shift = directAlign - shift
	}
	return bp, b[shift : shift+n]
}

// ReadAt implements Device.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := d.enter(off, int64(len(p)), false); err != nil {
		return 0, err
	}
	defer d.leave()
	f, bounce := d.route(p, off)
	if bounce {
		bp, b := alignedBuf(len(p))
		defer bouncePool.Put(bp)
		n, err := readFull(f, b, off)
		copy(p, b[:n])
		if err != nil {
			return n, fmt.Errorf("read %s at %d: %w", d.path, off, err)
		}
		return n, nil
	}
	n, err := readFull(f, p, off)
	if err != nil {
		return n, fmt.Errorf("read %s at %d: %w", d.path, off, err)
	}
	return n, nil
}

func readFull(f *os.File, p []byte, off int64) (int, error) {
	n, err := f.ReadAt(p, off)
	if n < len(p) && err != nil {
		return n, err
	}
	return n, nil
}

// WriteAt implements Device.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := d.enter(off, int64(len(p)), true); err != nil {
		return 0, err
	}
	defer d.leave()
	f, bounce := d.route(p, off)
	if bounce {
		bp, b := alignedBuf(len(p))
		defer bouncePool.Put(bp)
		copy(b, p)
		p = b
	}
	n, err := f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write %s at %d: %w", d.path, off, err)
	}
	return n, nil
}

var iovPool = sync.Pool{New: func() any { v := make([]unix.Iovec, 0, iovMax); return &v }}

// vecFull runs pwritev or preadv (sysno) for bufs at off on d's buffered
// descriptor, at most iovMax buffers per call, going on after short
// transfers until every buffer is done or a call fails; a read that meets
// the end of the file fails with io.ErrUnexpectedEOF. It returns the bytes
// transferred. The caller holds d open (enter), which keeps the descriptor
// valid; it allocates nothing.
func vecFull(d *File, sysno uintptr, bufs [][]byte, off int64) (int, error) {
	fd := d.f.Fd()
	vp := iovPool.Get().(*[]unix.Iovec)
	defer func() {
		clear(*vp) // drop the pointers into the caller's buffers
		*vp = (*vp)[:0]
		iovPool.Put(vp)
	}()
	done, i, skip := 0, 0, 0 // bytes written; next buffer and bytes of it already written
	for i < len(bufs) {
		iov := (*vp)[:0]
		for j := i; j < len(bufs) && len(iov) < iovMax; j++ {
			b := bufs[j]
			if j == i {
				b = b[skip:]
			}
			if len(b) == 0 {
				continue
			}
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			iov = append(iov, v)
		}
		*vp = iov
		if len(iov) == 0 {
			break
		}
		pos := uint64(off) + uint64(done)
		n, _, errno := unix.Syscall6(sysno, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)),
			uintptr(pos), uintptr(pos>>(bits.UintSize-1)>>1), 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return done, errno
		case n == 0 && sysno == unix.SYS_PREADV:
			return done, io.ErrUnexpectedEOF
		case n == 0:
			return done, errors.New("pwritev wrote nothing")
		}
		done += int(n)
		// Step past the buffers the call wrote.
		for left := int(n); left > 0 && i < len(bufs); {
			rest := len(bufs[i]) - skip
			if left < rest {
				skip += left
				break
			}
			left -= rest
			i, skip = i+1, 0
		}
		for i < len(bufs) && len(bufs[i]) == skip {
			i, skip = i+1, 0
		}
	}
	return done, nil
}

// Flush implements Device (fdatasync).
func (d *File) Flush() error {
	if err := d.enter(0, 0, false); err != nil {
		return err
	}
	defer d.leave()
	if d.ro {
		return nil
	}
	if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
		return fmt.Errorf("flush %s: %w", d.path, err)
	}
	return nil
}

// Trim implements Device: punch a hole (files) or discard (block devices).
// Devices that cannot discard ignore the request.
func (d *File) Trim(off, length int64) error {
	err := d.deallocate(off, length, unix.BLKDISCARD)
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOTTY) {
		return fmt.Errorf("trim %s at %d+%d: %w", d.path, off, length, err)
	}
	return nil
}

// Zero implements Device: punch a hole (files) or zero-out (block devices),
// falling back to writing zeroes.
func (d *File) Zero(off, length int64) error {
	err := d.deallocate(off, length, unix.BLKZEROOUT)
	if err == nil || errors.Is(err, ErrClosed) || errors.Is(err, ErrReadOnly) || errors.Is(err, ErrOutOfRange) {
		return err
	}
	if err := d.enter(off, length, true); err != nil {
		return err
	}
	defer d.leave()
	if err := writeZeroes(d.f, off, length); err != nil {
		return fmt.Errorf("zero %s at %d+%d: %w", d.path, off, length, err)
	}
	return nil
}

// deallocate punches a hole in [off, off+length) of a regular file, or
// sends blockReq (BLKDISCARD or BLKZEROOUT) to a block device.
func (d *File) deallocate(off, length int64, blockReq uint) error {
	if err := d.enter(off, length, true); err != nil {
		return err
	}
	defer d.leave()
	if length == 0 {
		return nil
	}
	if d.block {
		r := [2]uint64{uint64(off), uint64(length)}
		return ioctlPtr(d.f.Fd(), blockReq, unsafe.Pointer(&r))
	}
	return unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

var zeroChunk = make([]byte, 1<<20)

func writeZeroes(f *os.File, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroChunk)))
		if _, err := f.WriteAt(zeroChunk[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Size implements Device.
func (d *File) Size() int64 { return d.size }

// BlockSize implements Device: the logical sector size (512 for files).
func (d *File) BlockSize() int { return d.bs }

// Close implements Device. It waits for requests in progress.
func (d *File) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.f.Close()
	if d.direct != nil {
		if e := d.direct.Close(); err == nil {
			err = e
		}
	}
	if err != nil {
		return fmt.Errorf("close %s: %w", d.path, err)
	}
	return nil
}
