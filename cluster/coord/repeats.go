package coord

import (
	"sync"
	"time"
)

// repeatEvery is how often a message that repeats unchanged is logged at
// its own level; in between it goes to debug.
const repeatEvery = time.Minute

// repeats keeps the coordinator's retried messages (a takeover scan that
// fails every poll while a member host is down) from filling the log: the
// first of a kind and every change show, unchanged repeats once a minute.
type repeats struct {
	mu   sync.Mutex
	last map[string]repeat
}

type repeat struct {
	text string
	at   time.Time
}

// quiet records that the message key with text is logged now and reports
// whether it repeats the last one of its key, logged less than
// repeatEvery ago (the caller then logs it at debug level).
func (r *repeats) quiet(key, text string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.last[key]; ok && l.text == text && now.Sub(l.at) < repeatEvery {
		return true
	}
	if r.last == nil {
		r.last = map[string]repeat{}
	}
	r.last[key] = repeat{text, now}
	return false
}
