package resync

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ddraid/ddraid/raid"
)

// Kind is what a job does to each range.
type Kind string

// Job kinds.
const (
	KindResync  Kind = "resync"  // make dirty regions consistent (recompute parity / copy mirror)
	KindRecover Kind = "recover" // rebuild a recovering member from the others
	KindCheck   Kind = "check"   // count mismatches
	KindRepair  Kind = "repair"  // count and rewrite mismatches
)

// Range is a byte range of the array.
type Range struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// Clock is the time source of a job; tests use a fake one.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx is done.
	Sleep(ctx context.Context, d time.Duration) error
}

// RealClock is the wall clock.
type RealClock struct{}

// Now implements Clock.
func (RealClock) Now() time.Time { return time.Now() }

// Sleep implements Clock.
func (RealClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Job describes one background pass over an array.
type Job struct {
	Kind   Kind
	Array  raid.Syncer
	Member int     // KindRecover: the recovering member
	Ranges []Range // what to cover, in order
	// Chunk is the bytes done per step between throttle decisions and
	// progress reports; default 1 MiB.
	Chunk    int64
	Throttle Throttle
	Clock    Clock // default RealClock
	// Busy reports whether foreground IO is active (nil: never).
	Busy func() bool
	// OnProgress, if set, is called after every chunk.
	OnProgress func(Progress)
	// OnRangeDone, if set, is called when a whole Range is done (resync
	// clears the range's bitmap region here).
	OnRangeDone func(Range) error
}

// Progress is a job's state, as status shows it.
type Progress struct {
	Kind       Kind    `json:"kind"`
	Member     int     `json:"member,omitempty"`
	Done       int64   `json:"done"`       // bytes processed
	Total      int64   `json:"total"`      // bytes to process
	Position   int64   `json:"position"`   // array offset being worked on
	Rate       float64 `json:"rate"`       // bytes per second so far
	ETA        float64 `json:"eta"`        // seconds left at the current rate
	Mismatches int64   `json:"mismatches"` // check/repair: blocks that did not match
	Finished   bool    `json:"finished"`
	Error      string  `json:"error,omitempty"`
}

// Percent returns the share done, 0 to 100.
func (p Progress) Percent() float64 {
	if p.Total <= 0 {
		return 100
	}
	return 100 * float64(p.Done) / float64(p.Total)
}

// Run executes the job until it is done, fails or ctx is cancelled. It
// returns the final progress.
func Run(ctx context.Context, j Job) (Progress, error) {
	if j.Array == nil {
		return Progress{}, errors.New("resync: job without an array")
	}
	if err := j.Throttle.Validate(); err != nil {
		return Progress{}, err
	}
	if j.Chunk <= 0 {
		j.Chunk = 1 << 20
	}
	if j.Clock == nil {
		j.Clock = RealClock{}
	}
	p := Progress{Kind: j.Kind, Member: j.Member}
	for _, r := range j.Ranges {
		p.Total += r.Len
	}
	start := j.Clock.Now()
	report := func() {
		el := j.Clock.Now().Sub(start).Seconds()
		if el > 0 {
			p.Rate = float64(p.Done) / el
		}
		if p.Rate > 0 {
			p.ETA = float64(p.Total-p.Done) / p.Rate
		}
		if j.OnProgress != nil {
			j.OnProgress(p)
		}
	}
	fail := func(err error) (Progress, error) {
		p.Error = err.Error()
		report()
		return p, err
	}
	report()
	// The throttle looks at the rate within the current window, not since
	// the start: an average over the whole job would stall it for as long
	// as it had been fast, and let it burst after a slow stretch.
	winStart, winDone := start, int64(0)
	for _, r := range j.Ranges {
		for off := r.Off; off < r.Off+r.Len; {
			if err := ctx.Err(); err != nil {
				return fail(fmt.Errorf("%s stopped at %d: %w", j.Kind, off, err))
			}
			now := j.Clock.Now()
			if now.Sub(winStart) >= rateWindow {
				winStart, winDone = now, 0
			}
			busy := j.Busy != nil && j.Busy()
			if d := j.Throttle.Delay(winDone, now.Sub(winStart), busy); d > 0 {
				if err := j.Clock.Sleep(ctx, d); err != nil {
					return fail(fmt.Errorf("%s stopped at %d: %w", j.Kind, off, err))
				}
				continue
			}
			n := min(j.Chunk, r.Off+r.Len-off)
			p.Position = off
			if err := step(j, off, n, &p); err != nil {
				return fail(fmt.Errorf("%s at %d: %w", j.Kind, off, err))
			}
			off += n
			p.Done += n
			winDone += n
			report()
		}
		if j.OnRangeDone != nil {
			if err := j.OnRangeDone(r); err != nil {
				return fail(fmt.Errorf("%s: range %d+%d done: %w", j.Kind, r.Off, r.Len, err))
			}
		}
	}
	p.Finished = true
	report()
	return p, nil
}

func step(j Job, off, n int64, p *Progress) error {
	switch j.Kind {
	case KindResync:
		return j.Array.Resync(off, n)
	case KindRecover:
		return j.Array.Recover(j.Member, off, n)
	case KindCheck, KindRepair:
		bad, err := j.Array.Check(off, n, j.Kind == KindRepair)
		p.Mismatches += bad
		return err
	default:
		return fmt.Errorf("unknown job kind %q", j.Kind)
	}
}

// rateWindow is the span over which the throttle measures a job's speed.
const rateWindow = time.Second

// Whole returns the one range covering an array of size bytes.
func Whole(size int64) []Range { return []Range{{0, size}} }
