package blockdev

import "time"

// Delay is a Device that adds a fixed latency to every request before
// passing it to the device below, like nbdkit's delay filter. It is used to
// benchmark concurrency (with latency, a server's speed depends on how many
// requests it keeps in flight, not on memcpy) and in tests.
type Delay struct {
	dev         Device
	read, write time.Duration
}

var _ Device = (*Delay)(nil)

// NewDelay wraps dev, delaying reads by read and writes, flushes, trims and
// zeroes by write.
func NewDelay(dev Device, read, write time.Duration) *Delay {
	return &Delay{dev: dev, read: read, write: write}
}

// ReadAt implements Device.
func (d *Delay) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(d.read)
	return d.dev.ReadAt(p, off)
}

// WriteAt implements Device.
func (d *Delay) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(d.write)
	return d.dev.WriteAt(p, off)
}

// Flush implements Device.
func (d *Delay) Flush() error {
	time.Sleep(d.write)
	return d.dev.Flush()
}

// Trim implements Device.
func (d *Delay) Trim(off, length int64) error {
	time.Sleep(d.write)
	return d.dev.Trim(off, length)
}

// Zero implements Device.
func (d *Delay) Zero(off, length int64) error {
	time.Sleep(d.write)
	return d.dev.Zero(off, length)
}

// Size implements Device.
func (d *Delay) Size() int64 { return d.dev.Size() }

// BlockSize implements Device.
func (d *Delay) BlockSize() int { return d.dev.BlockSize() }

// Close implements Device.
func (d *Delay) Close() error { return d.dev.Close() }
