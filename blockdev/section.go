package blockdev

import "fmt"

// Section is the window [off, off+size) of another Device, presented as a
// Device of its own starting at 0. Arrays use it to hide member headers:
// the engine sees only each member's data area. Closing a Section closes
// nothing; the owner of the underlying device closes it.
type Section struct {
	dev  Device
	off  int64
	size int64
}

var _ Device = (*Section)(nil)

// NewSection returns the window of dev at [off, off+size).
func NewSection(dev Device, off, size int64) (*Section, error) {
	if err := CheckRange(off, size, dev.Size()); err != nil {
		return nil, fmt.Errorf("section: %w", err)
	}
	return &Section{dev: dev, off: off, size: size}, nil
}

// Underlying returns the device the section is cut from.
func (s *Section) Underlying() Device { return s.dev }

// ReadAt implements Device.
func (s *Section) ReadAt(p []byte, off int64) (int, error) {
	if err := CheckRange(off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	return s.dev.ReadAt(p, s.off+off)
}

// WriteAt implements Device.
func (s *Section) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange(off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	return s.dev.WriteAt(p, s.off+off)
}

// Flush implements Device.
func (s *Section) Flush() error { return s.dev.Flush() }

// Trim implements Device.
func (s *Section) Trim(off, length int64) error {
	if err := CheckRange(off, length, s.size); err != nil {
		return err
	}
	return s.dev.Trim(s.off+off, length)
}

// Zero implements Device.
func (s *Section) Zero(off, length int64) error {
	if err := CheckRange(off, length, s.size); err != nil {
		return err
	}
	return s.dev.Zero(s.off+off, length)
}

// Size implements Device.
func (s *Section) Size() int64 { return s.size }

// BlockSize implements Device.
func (s *Section) BlockSize() int { return s.dev.BlockSize() }

// Close implements Device; it does not close the underlying device.
func (s *Section) Close() error { return nil }
