package raid

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// ioRange is one recorded member IO.
type ioRange struct{ off, n int64 }

// countDev counts and records the IOs that reach a Device.
type countDev struct {
	blockdev.Device
	reads, writes, zeros, trims, flushes atomic.Int64

	mu       sync.Mutex
	readLog  []ioRange
	writeLog []ioRange
}

var _ blockdev.Device = (*countDev)(nil)

func (c *countDev) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	c.mu.Lock()
	c.readLog = append(c.readLog, ioRange{off, int64(len(p))})
	c.mu.Unlock()
	return c.Device.ReadAt(p, off)
}

func (c *countDev) WriteAt(p []byte, off int64) (int, error) {
	c.writes.Add(1)
	c.mu.Lock()
	c.writeLog = append(c.writeLog, ioRange{off, int64(len(p))})
	c.mu.Unlock()
	return c.Device.WriteAt(p, off)
}

func (c *countDev) Zero(off, n int64) error { c.zeros.Add(1); return c.Device.Zero(off, n) }
func (c *countDev) Trim(off, n int64) error { c.trims.Add(1); return c.Device.Trim(off, n) }
func (c *countDev) Flush() error            { c.flushes.Add(1); return c.Device.Flush() }

func (c *countDev) reset() {
	c.reads.Store(0)
	c.writes.Store(0)
	c.zeros.Store(0)
	c.trims.Store(0)
	c.flushes.Store(0)
	c.mu.Lock()
	c.readLog, c.writeLog = nil, nil
	c.mu.Unlock()
}

// faultDev fails IOs with EIO once armed: every IO after the first
// `after` IOs of the kinds selected (reads, writes or both) fails, as do
// Zero and Flush once it has tripped.
type faultDev struct {
	blockdev.Device
	failReads, failWrites bool
	armed                 atomic.Bool
	after                 atomic.Int64 // IOs still allowed once armed
	tripped               atomic.Bool
	failures              atomic.Int64
}

var _ blockdev.Device = (*faultDev)(nil)

var errInjected = fmt.Errorf("injected: %w", syscall.EIO)

// arm makes the device fail from the (n+1)th selected IO on.
func (f *faultDev) arm(n int64) {
	f.after.Store(n)
	f.armed.Store(true)
}

func (f *faultDev) fail(selected bool) bool {
	if f.tripped.Load() {
		f.failures.Add(1)
		return true
	}
	if !selected || !f.armed.Load() {
		return false
	}
	if f.after.Add(-1) >= 0 {
		return false
	}
	f.tripped.Store(true)
	f.failures.Add(1)
	return true
}

func (f *faultDev) ReadAt(p []byte, off int64) (int, error) {
	if f.fail(f.failReads) {
		return 0, errInjected
	}
	return f.Device.ReadAt(p, off)
}

func (f *faultDev) WriteAt(p []byte, off int64) (int, error) {
	if f.fail(f.failWrites) {
		return 0, errInjected
	}
	return f.Device.WriteAt(p, off)
}

func (f *faultDev) Zero(off, n int64) error {
	if f.fail(f.failWrites) {
		return errInjected
	}
	return f.Device.Zero(off, n)
}

func (f *faultDev) Trim(off, n int64) error {
	if f.fail(f.failWrites) {
		return errInjected
	}
	return f.Device.Trim(off, n)
}

func (f *faultDev) Flush() error {
	if f.tripped.Load() {
		return errInjected
	}
	return f.Device.Flush()
}

// failLog records OnFail calls.
type failLog struct {
	mu    sync.Mutex
	calls []failCall
}

type failCall struct {
	member int
	err    error
}

func (l *failLog) onFail(member int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, failCall{member, err})
}

func (l *failLog) get() []failCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]failCall(nil), l.calls...)
}

// fill sets p to pseudo-random bytes from seed.
func fill(p []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i < len(p); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// countedRaid35 builds a raid35 array of the given number of blocks over
// memory members that count their IOs.
func countedRaid35(t testing.TB, g Geometry, blocks int64) (*Raid35, []*countDev) {
	t.Helper()
	f := int64(g.WithDefaults().FragmentSize())
	devs := make([]blockdev.Device, g.Members)
	counts := make([]*countDev, g.Members)
	for i := range devs {
		counts[i] = &countDev{Device: blockdev.NewMem(blocks*f, 512)}
		devs[i] = counts[i]
	}
	arr, err := NewRaid35(g, devs, blocks*f, Config{})
	if err != nil {
		t.Fatal(err)
	}
	return arr, counts
}

// newMems returns n memory devices of size bytes each.
func newMems(n int, size int64) []*blockdev.Mem {
	mems := make([]*blockdev.Mem, n)
	for i := range mems {
		mems[i] = blockdev.NewMem(size, 512)
	}
	return mems
}

// asDevs converts memory devices to Devices, leaving slot missing nil
// (missing < 0 keeps them all).
func asDevs(mems []*blockdev.Mem, missing int) []blockdev.Device {
	devs := make([]blockdev.Device, len(mems))
	for i, m := range mems {
		if i != missing {
			devs[i] = m
		}
	}
	return devs
}

// isIOError reports whether err is the error of a failed array IO.
func isIOError(err error) bool {
	return errors.Is(err, ErrArrayFailed) && errors.Is(err, syscall.EIO)
}
