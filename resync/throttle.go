package resync

import (
	"fmt"
	"time"
)

// Throttle bounds a job's speed in bytes per second, like md's
// sync_speed_min and sync_speed_max.
type Throttle struct {
	// Min is the speed the job keeps even under foreground IO.
	Min int64
	// Max is the speed the job never exceeds; 0 means no limit.
	Max int64
}

// DefaultThrottle matches md's defaults: 1 MiB/s minimum, 200 MiB/s maximum.
func DefaultThrottle() Throttle { return Throttle{Min: 1 << 20, Max: 200 << 20} }

// Validate checks the bounds.
func (t Throttle) Validate() error {
	if t.Min < 0 || t.Max < 0 {
		return fmt.Errorf("throttle: negative speed (min %d, max %d)", t.Min, t.Max)
	}
	if t.Max > 0 && t.Min > t.Max {
		return fmt.Errorf("throttle: minimum speed %d above maximum %d", t.Min, t.Max)
	}
	return nil
}

// Delay returns how long a job that has moved done bytes in elapsed time
// must wait before its next chunk. Above Max it waits until its average is
// back at Max. Between Min and Max it waits while foreground IO is busy, as
// long as that keeps it at or above Min (it yields to the foreground).
// Below Min it never waits.
func (t Throttle) Delay(done int64, elapsed time.Duration, foregroundBusy bool) time.Duration {
	if done <= 0 {
		return 0
	}
	atRate := func(rate int64) time.Duration { // elapsed time that makes done/elapsed == rate
		return time.Duration(float64(done) / float64(rate) * float64(time.Second))
	}
	if t.Max > 0 {
		if need := atRate(t.Max); need > elapsed {
			return need - elapsed
		}
	}
	if foregroundBusy {
		if t.Min <= 0 {
			return backoff
		}
		if need := atRate(t.Min); need > elapsed {
			return min(backoff, need-elapsed)
		}
	}
	return 0
}

// backoff is how long a job yields to busy foreground IO at a time.
const backoff = 20 * time.Millisecond
