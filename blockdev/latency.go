package blockdev

import (
	"sync/atomic"
	"time"
)

// LatencyBounds are the upper bounds of the latency histogram's buckets,
// from 50 µs to 10 s; a last, implicit bucket holds everything slower.
var LatencyBounds = [...]time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// latency is a lock-free histogram of request durations.
type latency struct {
	buckets [len(LatencyBounds) + 1]atomic.Int64
	sum     atomic.Int64 // nanoseconds
}

func (l *latency) observe(d time.Duration) {
	i := 0
	for i < len(LatencyBounds) && d > LatencyBounds[i] {
		i++
	}
	l.buckets[i].Add(1)
	l.sum.Add(int64(d))
}

// Histogram is a snapshot of a latency histogram. Counts[i] is the number
// of requests that took at most LatencyBounds[i] and more than the bound
// before it; the last count is the requests slower than every bound.
type Histogram struct {
	Counts [len(LatencyBounds) + 1]int64
	Sum    time.Duration
}

// Total returns the number of requests in the histogram.
func (h Histogram) Total() int64 {
	var n int64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

func (l *latency) snapshot() Histogram {
	var h Histogram
	for i := range l.buckets {
		h.Counts[i] = l.buckets[i].Load()
	}
	h.Sum = time.Duration(l.sum.Load())
	return h
}
