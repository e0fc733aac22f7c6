package resync

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/raid"
)

// fakeClock advances only when the job sleeps.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	slept  time.Duration
	sleeps int
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.slept += d
	c.sleeps++
	return ctx.Err()
}

func newArray(t *testing.T) (*raid.Raid35, []*blockdev.Mem) {
	t.Helper()
	var devs []blockdev.Device
	var mems []*blockdev.Mem
	for range 3 {
		m := blockdev.NewMem(1<<20, 512)
		mems = append(mems, m)
		devs = append(devs, m)
	}
	a, err := raid.NewRaid35(raid.Geometry{Members: 3}, devs, 1<<20, raid.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return a, mems
}

func TestRunResyncRangesAndProgress(t *testing.T) {
	a, mems := newArray(t)
	defer a.Close()
	p := make([]byte, a.Size())
	for i := range p {
		p[i] = byte(i * 7)
	}
	a.WriteAt(p, 0)
	// Break parity in two places, one inside each range we will resync and
	// one outside.
	mems[2].Bytes()[10] ^= 1       // block 0
	mems[2].Bytes()[300*2048] ^= 1 // block 300
	mems[2].Bytes()[100*2048] ^= 1 // block 100: outside the ranges
	var reports []Progress
	var done []Range
	ranges := []Range{{0, 64 << 10}, {300 * 4096, 64 << 10}}
	res, err := Run(context.Background(), Job{
		Kind: KindResync, Array: a, Ranges: ranges, Chunk: 16 << 10, Clock: &fakeClock{},
		OnProgress:  func(p Progress) { reports = append(reports, p) },
		OnRangeDone: func(r Range) error { done = append(done, r); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Finished || res.Done != 128<<10 || res.Total != 128<<10 || res.Percent() != 100 {
		t.Fatalf("final progress %+v", res)
	}
	if len(done) != 2 || done[0] != ranges[0] || done[1] != ranges[1] {
		t.Fatalf("ranges done %v", done)
	}
	if len(reports) < 9 { // initial + 8 chunks + final
		t.Fatalf("%d progress reports", len(reports))
	}
	for i := 1; i < len(reports); i++ {
		if reports[i].Done < reports[i-1].Done {
			t.Fatal("progress went backwards")
		}
	}
	bad, err := a.Check(0, a.Size(), false)
	if err != nil || bad != 1 {
		t.Fatalf("after resync of two ranges: %d mismatches (want only block 100), %v", bad, err)
	}
}

func TestRunCheckCountsAndRepairs(t *testing.T) {
	a, mems := newArray(t)
	defer a.Close()
	for _, n := range []int{1, 50, 200} {
		mems[0].Bytes()[n*2048] ^= 0x80
	}
	res, err := Run(context.Background(), Job{Kind: KindCheck, Array: a, Ranges: Whole(a.Size()), Clock: &fakeClock{}})
	if err != nil || res.Mismatches != 3 {
		t.Fatalf("check: %+v %v", res, err)
	}
	res, err = Run(context.Background(), Job{Kind: KindRepair, Array: a, Ranges: Whole(a.Size()), Clock: &fakeClock{}})
	if err != nil || res.Mismatches != 3 {
		t.Fatalf("repair: %+v %v", res, err)
	}
	res, err = Run(context.Background(), Job{Kind: KindCheck, Array: a, Ranges: Whole(a.Size()), Clock: &fakeClock{}})
	if err != nil || res.Mismatches != 0 {
		t.Fatalf("check after repair: %+v %v", res, err)
	}
}

func TestRunThrottlesToMax(t *testing.T) {
	a, _ := newArray(t)
	defer a.Close()
	clk := &fakeClock{}
	var windows []int64 // bytes moved per clock second
	res, err := Run(context.Background(), Job{Kind: KindResync, Array: a, Ranges: Whole(a.Size()),
		Chunk: 64 << 10, Throttle: Throttle{Max: 1 << 20}, Clock: clk,
		OnProgress: func(p Progress) {
			sec := int(clk.Now().Sub(time.Time{}) / time.Second)
			for len(windows) <= sec {
				windows = append(windows, 0)
			}
			if len(windows) > 0 {
				windows[sec] = p.Done - sum(windows[:sec])
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	// 2 MiB at 1 MiB/s: chunks are paced through each window, so the job
	// takes about 2 s of clock time (the last chunk lands at the limit).
	if clk.slept < 1900*time.Millisecond || clk.slept > 2*time.Second {
		t.Fatalf("slept %v for %d bytes at 1 MiB/s", clk.slept, res.Done)
	}
	// No window moved more than Max.
	for i, w := range windows {
		if w > 1<<20 {
			t.Fatalf("window %d moved %d bytes, above the 1 MiB/s maximum", i, w)
		}
	}
}

func TestRunYieldsToForeground(t *testing.T) {
	a, _ := newArray(t)
	defer a.Close()
	clk := &fakeClock{}
	_, err := Run(context.Background(), Job{Kind: KindResync, Array: a, Ranges: Whole(a.Size()),
		Chunk: 64 << 10, Throttle: Throttle{Min: 256 << 10, Max: 100 << 20}, Clock: clk, Busy: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	// Busy all along: it runs at about Min (2 MiB at 256 KiB/s = 8 s).
	if clk.slept < 7*time.Second || clk.slept > 8*time.Second {
		t.Fatalf("slept %v, want about 8 s at the minimum speed", clk.slept)
	}
}

func TestRunStopsOnCancelAndErrors(t *testing.T) {
	a, _ := newArray(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, Job{Kind: KindResync, Array: a, Ranges: Whole(a.Size())}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	a.Fail(1, errors.New("gone"))
	res, err := Run(context.Background(), Job{Kind: KindResync, Array: a, Ranges: Whole(a.Size())})
	if !errors.Is(err, raid.ErrDegraded) || res.Error == "" || res.Finished {
		t.Fatalf("degraded resync: %+v %v", res, err)
	}
	a.Close()
	if _, err := Run(context.Background(), Job{Kind: "bogus", Array: a, Ranges: Whole(4096)}); err == nil {
		t.Fatal("unknown kind accepted")
	}
	if _, err := Run(context.Background(), Job{Kind: KindCheck}); err == nil {
		t.Fatal("job without array accepted")
	}
}

func sum(xs []int64) (t int64) {
	for _, x := range xs {
		t += x
	}
	return t
}

// TestRunKeepsMinUnderSustainedLoad: after a fast idle stretch, sustained
// foreground IO slows the job to about Min, never to a stop.
func TestRunKeepsMinUnderSustainedLoad(t *testing.T) {
	a, _ := newArray(t)
	defer a.Close()
	clk := &fakeClock{}
	var busy bool
	chunks := 0
	var last time.Time
	var maxGap time.Duration
	_, err := Run(context.Background(), Job{Kind: KindResync, Array: a, Ranges: Whole(a.Size()),
		Chunk: 64 << 10, Throttle: Throttle{Min: 256 << 10, Max: 100 << 20}, Clock: clk,
		Busy: func() bool { return busy },
		OnProgress: func(p Progress) {
			chunks++
			if chunks == 8 { // some chunks at full speed, then the load starts
				busy = true
			}
			if now := clk.Now(); chunks > 1 {
				maxGap = max(maxGap, now.Sub(last))
			}
			last = clk.Now()
		}})
	if err != nil {
		t.Fatal(err)
	}
	// The remaining ~1.6 MiB at 256 KiB/s take about 6-7 s, and progress
	// never stops for longer than one rate window (at the switch from idle
	// to busy); an average since the start would stall far longer after a
	// long fast stretch.
	if clk.slept < 5*time.Second || clk.slept > 8*time.Second {
		t.Fatalf("slept %v", clk.slept)
	}
	if maxGap > rateWindow+100*time.Millisecond {
		t.Fatalf("progress stalled for %v under load", maxGap)
	}
}
