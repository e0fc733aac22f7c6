package blockdev

import "sync"

// Swap is a Device whose backing device can be replaced while IO runs.
// Set waits for the requests in flight on the old device to finish, so
// the caller may close the old device once Set returns. Arrays put one in
// front of every member, which lets `replace` move a member to a new disk
// without stopping the array.
type Swap struct {
	mu  sync.RWMutex
	dev Device
}

var _ Device = (*Swap)(nil)

// NewSwap returns a Swap in front of dev.
func NewSwap(dev Device) *Swap { return &Swap{dev: dev} }

// Set replaces the device and returns the previous one, after every request
// that was using it has finished. It does not close the old device.
func (s *Swap) Set(dev Device) Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.dev
	s.dev = dev
	return old
}

// Current returns the device in use.
func (s *Swap) Current() Device {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev
}

// ReadAt implements Device.
func (s *Swap) ReadAt(p []byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.ReadAt(p, off)
}

// WriteAt implements Device.
func (s *Swap) WriteAt(p []byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.WriteAt(p, off)
}

// Flush implements Device.
func (s *Swap) Flush() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.Flush()
}

// Trim implements Device.
func (s *Swap) Trim(off, length int64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.Trim(off, length)
}

// Zero implements Device.
func (s *Swap) Zero(off, length int64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.Zero(off, length)
}

// Size implements Device.
func (s *Swap) Size() int64 { return s.Current().Size() }

// BlockSize implements Device.
func (s *Swap) BlockSize() int { return s.Current().BlockSize() }

// Close implements Device: it closes the current device.
func (s *Swap) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dev.Close()
}

// Extents implements Extenter by asking the current device.
func (s *Swap) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return ExtentsOf(s.dev, dst, off, length)
}

// CanFastZero implements FastZeroer by asking the current device.
func (s *Swap) CanFastZero() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return CanFastZero(s.dev)
}

// ZeroNoHole implements NoHoleZeroer with the current device.
func (s *Swap) ZeroNoHole(off, length int64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return ZeroNoHole(s.dev, off, length)
}
