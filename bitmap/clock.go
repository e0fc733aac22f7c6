package bitmap

import "time"

// Clock is the time source of a Bitmap: the last use of each region and
// the ticks of the clearer come from it. Tests inject a fake clock so that
// nothing sleeps.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTicker returns a ticker that delivers the time on its channel
	// every d (d > 0), dropping ticks a slow receiver misses, as
	// time.NewTicker does.
	NewTicker(d time.Duration) Ticker
}

// Ticker is the ticker of a Clock.
type Ticker interface {
	// C returns the channel the ticks are delivered on.
	C() <-chan time.Time
	// Stop stops the ticker; no tick is delivered after Stop returns.
	Stop()
}

// RealClock returns the system clock.
func RealClock() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }
