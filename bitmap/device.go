package bitmap

import (
	"fmt"

	"github.com/ddraid/ddraid/blockdev"
)

// Device is a blockdev.Device that marks before it writes: every request
// that changes data (WriteAt, Zero, Trim, ZeroNoHole) calls the Bitmap's
// StartWrite first and ends the write after the device below returned.
// Reads, Flush and the metadata queries pass straight through. It
// implements the optional Extenter, FastZeroer and NoHoleZeroer interfaces
// as the device below does.
type Device struct {
	dev blockdev.Device
	b   *Bitmap
}

var (
	_ blockdev.Device       = (*Device)(nil)
	_ blockdev.Extenter     = (*Device)(nil)
	_ blockdev.FastZeroer   = (*Device)(nil)
	_ blockdev.NoHoleZeroer = (*Device)(nil)
)

// NewDevice wraps dev, a whole array, with the write-intent bitmap b, which
// must cover dev.Size() bytes. Close closes dev, not b.
func NewDevice(dev blockdev.Device, b *Bitmap) *Device {
	return &Device{dev: dev, b: b}
}

// Bitmap returns the bitmap the device marks in.
func (d *Device) Bitmap() *Bitmap { return d.b }

// Underlying returns the wrapped device.
func (d *Device) Underlying() blockdev.Device { return d.dev }

// start checks the range against the device below (so an out-of-range
// request changes nothing, not even the bitmap) and marks it.
func (d *Device) start(op string, off, length int64) (func(), error) {
	if err := blockdev.CheckRange(off, length, d.dev.Size()); err != nil {
		return nil, fmt.Errorf("bitmap %s: %s: %w", d.b.array, op, err)
	}
	return d.b.StartWrite(off, length)
}

// ReadAt implements blockdev.Device.
func (d *Device) ReadAt(p []byte, off int64) (int, error) { return d.dev.ReadAt(p, off) }

// WriteAt implements blockdev.Device.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	end, err := d.start("write", off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer end()
	return d.dev.WriteAt(p, off)
}

// Flush implements blockdev.Device.
func (d *Device) Flush() error { return d.dev.Flush() }

// Trim implements blockdev.Device. A trim changes what members hold, so it
// is marked like a write.
func (d *Device) Trim(off, length int64) error {
	end, err := d.start("trim", off, length)
	if err != nil {
		return err
	}
	defer end()
	return d.dev.Trim(off, length)
}

// Zero implements blockdev.Device.
func (d *Device) Zero(off, length int64) error {
	end, err := d.start("zero", off, length)
	if err != nil {
		return err
	}
	defer end()
	return d.dev.Zero(off, length)
}

// Size implements blockdev.Device.
func (d *Device) Size() int64 { return d.dev.Size() }

// BlockSize implements blockdev.Device.
func (d *Device) BlockSize() int { return d.dev.BlockSize() }

// Close implements blockdev.Device: it closes the device below; the bitmap
// stays open.
func (d *Device) Close() error { return d.dev.Close() }

// Extents implements blockdev.Extenter through the device below.
func (d *Device) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	return blockdev.ExtentsOf(d.dev, dst, off, length)
}

// CanFastZero implements blockdev.FastZeroer as the device below does.
func (d *Device) CanFastZero() bool { return blockdev.CanFastZero(d.dev) }

// ZeroNoHole implements blockdev.NoHoleZeroer through the device below,
// marked like a write. When the device below cannot do it, nothing is
// marked and the error wraps blockdev.ErrNotSupported.
func (d *Device) ZeroNoHole(off, length int64) error {
	if _, ok := d.dev.(blockdev.NoHoleZeroer); !ok {
		return fmt.Errorf("zero without holes: %w", blockdev.ErrNotSupported)
	}
	end, err := d.start("zero without holes", off, length)
	if err != nil {
		return err
	}
	defer end()
	return blockdev.ZeroNoHole(d.dev, off, length)
}
