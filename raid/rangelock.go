package raid

import (
	"slices"
	"sync"
)

// rangeLock serialises overlapping block ranges within one process.
//
// Holders and waiters form one queue in arrival order. A request is granted
// once no earlier entry in the queue, held or waiting, overlaps it, so
// overlapping requests are granted first-come first-served (a wide range is
// never starved by a stream of narrow ones) while disjoint ranges never wait
// for each other. The zero value is an unlocked lock.
type rangeLock struct {
	mu    sync.Mutex
	queue []*rangeHold
	free  []*rangeHold
}

// rangeHold is one entry of a rangeLock: the half-open block range
// [from, to) and the channel that tells a waiter it holds the range.
type rangeHold struct {
	from, to int64
	held     bool
	ready    chan struct{}
}

// overlaps reports whether two non-empty ranges share a block.
func (h *rangeHold) overlaps(o *rangeHold) bool {
	return h.from < h.to && o.from < o.to && h.from < o.to && o.from < h.to
}

// lock blocks until the caller holds [from, to) and returns the handle to
// pass to unlock. An empty range (to <= from) is granted at once.
func (l *rangeLock) lock(from, to int64) *rangeHold {
	l.mu.Lock()
	h := l.newHold(from, to)
	h.held = true
	for _, o := range l.queue {
		if h.overlaps(o) {
			h.held = false
			break
		}
	}
	l.queue = append(l.queue, h)
	held := h.held // h.held is guarded by l.mu
	l.mu.Unlock()
	if !held {
		<-h.ready
	}
	return h
}

// unlock releases a range returned by lock and grants the waiters it was
// blocking.
func (l *rangeLock) unlock(h *rangeHold) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, o := range l.queue {
		if o == h {
			l.queue = slices.Delete(l.queue, i, i+1)
			break
		}
	}
	for i, w := range l.queue {
		if w.held || !w.overlaps(h) {
			continue
		}
		blocked := false
		for _, o := range l.queue[:i] {
			if w.overlaps(o) {
				blocked = true
				break
			}
		}
		if !blocked {
			w.held = true
			w.ready <- struct{}{}
		}
	}
	l.free = append(l.free, h)
}

// pending returns the number of held and waiting entries (for tests).
func (l *rangeLock) pending() (held, waiting int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.queue {
		if h.held {
			held++
		} else {
			waiting++
		}
	}
	return held, waiting
}

// newHold returns a recycled or new entry; l.mu must be held.
func (l *rangeLock) newHold(from, to int64) *rangeHold {
	var h *rangeHold
	if n := len(l.free); n > 0 {
		h = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		h = &rangeHold{ready: make(chan struct{}, 1)}
	}
	h.from, h.to, h.held = from, to, false
	return h
}
