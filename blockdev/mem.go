package blockdev

import (
	"fmt"
	"sync"
)

// Mem is a Device held in memory, for tests and nesting experiments.
// The zero value is not usable; call NewMem.
type Mem struct {
	mu     sync.RWMutex
	data   []byte
	bs     int
	closed bool
}

var _ Device = (*Mem)(nil)

// NewMem returns a zero-filled memory device of size bytes with the given
// block size (512 if bs <= 0).
func NewMem(size int64, bs int) *Mem {
	if bs <= 0 {
		bs = 512
	}
	return &Mem{data: make([]byte, size), bs: bs}
}

// Bytes returns the backing slice (not a copy) for test inspection.
func (m *Mem) Bytes() []byte { return m.data }

func (m *Mem) check(off, n int64) error {
	if m.closed {
		return ErrClosed
	}
	return CheckRange(off, n, int64(len(m.data)))
}

// ReadAt implements Device.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, fmt.Errorf("mem read: %w", err)
	}
	return copy(p, m.data[off:]), nil
}

// WriteAt implements Device.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, fmt.Errorf("mem write: %w", err)
	}
	return copy(m.data[off:], p), nil
}

// Flush implements Device.
func (m *Mem) Flush() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	return nil
}

// Trim implements Device; memory trims to zeroes.
func (m *Mem) Trim(off, length int64) error { return m.Zero(off, length) }

// Zero implements Device.
func (m *Mem) Zero(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, length); err != nil {
		return fmt.Errorf("mem zero: %w", err)
	}
	clear(m.data[off : off+length])
	return nil
}

// Size implements Device.
func (m *Mem) Size() int64 { return int64(len(m.data)) }

// BlockSize implements Device.
func (m *Mem) BlockSize() int { return m.bs }

// Close implements Device.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
