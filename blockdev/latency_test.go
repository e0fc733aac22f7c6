package blockdev

import (
	"testing"
	"time"
)

func TestLatencyBuckets(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{50 * time.Microsecond, 0},
		{51 * time.Microsecond, 1},
		{time.Millisecond, 4},
		{3 * time.Millisecond, 6},
		{10 * time.Second, len(LatencyBounds) - 1},
		{11 * time.Second, len(LatencyBounds)},
	} {
		var l latency
		l.observe(tc.d)
		h := l.snapshot()
		for i, c := range h.Counts {
			want := int64(0)
			if i == tc.want {
				want = 1
			}
			if c != want {
				t.Errorf("%v: bucket %d count %d, want %d", tc.d, i, c, want)
			}
		}
		if h.Sum != tc.d || h.Total() != 1 {
			t.Errorf("%v: sum %v total %d", tc.d, h.Sum, h.Total())
		}
	}
}

func TestStatsLatency(t *testing.T) {
	dev := NewStats(NewDelay(NewMem(1<<20, 512), 0, 2*time.Millisecond))
	buf := make([]byte, 4096)
	if _, err := dev.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Zero(4096, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	r, w := dev.Latency()
	if r.Total() != 1 || w.Total() != 2 {
		t.Fatalf("read count %d write count %d, want 1 and 2", r.Total(), w.Total())
	}
	if w.Sum < 4*time.Millisecond {
		t.Errorf("write latency sum %v, want at least the two 2 ms delays", w.Sum)
	}
}
