package nbd

import (
	"sync"
	"time"
)

// Misbehaving clients are logged through a token bucket shared by the
// whole server, so that a flood of bad connections cannot flood the log:
// at most logBurst lines at once and logRate lines per second on average.
// The lines dropped are counted and the count goes out with the next line
// that passes.
const (
	logRate  = 10
	logBurst = 20
)

// logLimiter is that token bucket. The zero value is not usable; see
// newLogLimiter.
type logLimiter struct {
	mu         sync.Mutex
	now        func() time.Time
	tokens     float64
	last       time.Time
	suppressed int
}

func newLogLimiter(now func() time.Time) *logLimiter {
	return &logLimiter{now: now, tokens: logBurst, last: now()}
}

// allow reports whether a line may be logged now and, if so, how many
// lines were dropped since the last one allowed.
func (l *logLimiter) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if d := now.Sub(l.last); d > 0 {
		l.tokens = min(logBurst, l.tokens+d.Seconds()*logRate)
		l.last = now
	}
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
