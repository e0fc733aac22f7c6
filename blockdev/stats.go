package blockdev

import (
	"sync/atomic"
	"time"
)

// Stats is a Device that counts the requests and bytes passing through it.
// Arrays wrap members with it for status and metrics; the drills use it to
// prove a resync read only the dirty regions.
type Stats struct {
	dev Device
	c   counters

	readLat, writeLat latency
}

type counters struct {
	reads, writes, flushes, zeroes  atomic.Int64
	readBytes, writeBytes, errCount atomic.Int64
}

// IOStats is a snapshot of a Stats device's counters.
type IOStats struct {
	Reads      int64 `json:"reads"`
	ReadBytes  int64 `json:"read_bytes"`
	Writes     int64 `json:"writes"`
	WriteBytes int64 `json:"write_bytes"`
	Flushes    int64 `json:"flushes"`
	Zeroes     int64 `json:"zeroes"`
	Errors     int64 `json:"errors"`
}

var _ Device = (*Stats)(nil)

// NewStats wraps dev.
func NewStats(dev Device) *Stats { return &Stats{dev: dev} }

// Snapshot returns the counters.
func (s *Stats) Snapshot() IOStats {
	return IOStats{
		Reads: s.c.reads.Load(), ReadBytes: s.c.readBytes.Load(),
		Writes: s.c.writes.Load(), WriteBytes: s.c.writeBytes.Load(),
		Flushes: s.c.flushes.Load(), Zeroes: s.c.zeroes.Load(), Errors: s.c.errCount.Load(),
	}
}

// Latency returns the histograms of read and write durations (writes
// include zeroing and trimming).
func (s *Stats) Latency() (read, write Histogram) {
	return s.readLat.snapshot(), s.writeLat.snapshot()
}

// Ops returns the number of requests seen so far (reads, writes, zeroes);
// a caller that compares two values learns whether IO happened between.
func (s *Stats) Ops() int64 { return s.c.reads.Load() + s.c.writes.Load() + s.c.zeroes.Load() }

func (s *Stats) count(err error) error {
	if err != nil {
		s.c.errCount.Add(1)
	}
	return err
}

// ReadAt implements Device.
func (s *Stats) ReadAt(p []byte, off int64) (int, error) {
	s.c.reads.Add(1)
	t := time.Now()
	n, err := s.dev.ReadAt(p, off)
	s.readLat.observe(time.Since(t))
	s.c.readBytes.Add(int64(n))
	return n, s.count(err)
}

// WriteAt implements Device.
func (s *Stats) WriteAt(p []byte, off int64) (int, error) {
	s.c.writes.Add(1)
	t := time.Now()
	n, err := s.dev.WriteAt(p, off)
	s.writeLat.observe(time.Since(t))
	s.c.writeBytes.Add(int64(n))
	return n, s.count(err)
}

// Flush implements Device.
func (s *Stats) Flush() error { s.c.flushes.Add(1); return s.count(s.dev.Flush()) }

// Trim implements Device.
func (s *Stats) Trim(off, length int64) error {
	s.c.zeroes.Add(1)
	t := time.Now()
	err := s.dev.Trim(off, length)
	s.writeLat.observe(time.Since(t))
	return s.count(err)
}

// Zero implements Device.
func (s *Stats) Zero(off, length int64) error {
	s.c.zeroes.Add(1)
	t := time.Now()
	err := s.dev.Zero(off, length)
	s.writeLat.observe(time.Since(t))
	return s.count(err)
}

// Size implements Device.
func (s *Stats) Size() int64 { return s.dev.Size() }

// BlockSize implements Device.
func (s *Stats) BlockSize() int { return s.dev.BlockSize() }

// Close implements Device.
func (s *Stats) Close() error { return s.dev.Close() }

// Extents implements Extenter by asking the device below.
func (s *Stats) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	return ExtentsOf(s.dev, dst, off, length)
}

// CanFastZero implements FastZeroer by asking the device below.
func (s *Stats) CanFastZero() bool { return CanFastZero(s.dev) }

// ZeroNoHole implements NoHoleZeroer by asking the device below.
func (s *Stats) ZeroNoHole(off, length int64) error {
	s.c.zeroes.Add(1)
	t := time.Now()
	err := ZeroNoHole(s.dev, off, length)
	s.writeLat.observe(time.Since(t))
	return s.count(err)
}
