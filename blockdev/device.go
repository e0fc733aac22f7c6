// Package blockdev defines Device, the one interface ddraid uses for block
// storage, and its backends: files and block devices, memory, and the
// wrappers used to compose or test devices (sections, fault injection,
// latency). The NBD server and client live in the nbd subpackage.
//
// # Contract
//
// Every Device method may be called concurrently from many goroutines.
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt: they return an error
// whenever n < len(p), they must not retain p after returning, and concurrent
// writes are only defined for non-overlapping ranges (an array serialises
// overlapping writes itself). Offsets and lengths need not be multiples of
// BlockSize; BlockSize is the granularity below which a device does extra work
// (a read-modify-write), never a hard limit.
//
// A request that reaches beyond Size fails with ErrOutOfRange and changes
// nothing. A write is durable once a later Flush returns nil.
package blockdev

import (
	"errors"
	"fmt"
)

// Device is positioned block storage.
type Device interface {
	// ReadAt reads len(p) bytes at off.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes len(p) bytes at off.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every write that returned before Flush was called durable.
	Flush() error
	// Trim tells the device that [off, off+length) is no longer needed. The
	// range reads back as zeroes or as its old contents; callers that need
	// zeroes use Zero.
	Trim(off, length int64) error
	// Zero makes [off, off+length) read back as zeroes.
	Zero(off, length int64) error
	// Size is the device size in bytes; it does not change while open.
	Size() int64
	// BlockSize is the preferred minimum IO size and alignment in bytes: a
	// power of two, at least 512 (1 for byte-addressable memory is allowed).
	BlockSize() int
	// Close releases the device. Methods must not be called after Close.
	Close() error
}

// Sentinel errors. Backends wrap them with context; test with errors.Is.
var (
	// ErrOutOfRange reports a request that reaches beyond the device size or
	// has a negative offset or length.
	ErrOutOfRange = errors.New("blockdev: request out of range")
	// ErrReadOnly reports a write to a read-only device.
	ErrReadOnly = errors.New("blockdev: device is read-only")
	// ErrClosed reports use of a closed device.
	ErrClosed = errors.New("blockdev: device is closed")
)

// CheckRange returns a wrapped ErrOutOfRange unless [off, off+length) lies
// within a device of the given size.
func CheckRange(off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("offset %d length %d on a %d-byte device: %w", off, length, size, ErrOutOfRange)
	}
	return nil
}
