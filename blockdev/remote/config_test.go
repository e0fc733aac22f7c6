package remote

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const ms = time.Millisecond

func TestBackoff(t *testing.T) {
	cases := []struct {
		n      int
		lo, hi time.Duration
		want   time.Duration
	}{
		{0, 50 * ms, time.Second, 0},
		{-1, 50 * ms, time.Second, 0},
		{1, 50 * ms, time.Second, 50 * ms},
		{2, 50 * ms, time.Second, 100 * ms},
		{3, 50 * ms, time.Second, 200 * ms},
		{5, 50 * ms, time.Second, 800 * ms},
		{6, 50 * ms, time.Second, time.Second},
		{1000, 50 * ms, time.Second, time.Second},
		{1, 300 * ms, 500 * ms, 300 * ms},
		{2, 300 * ms, 500 * ms, 500 * ms},
		{3, time.Second, time.Second, time.Second},
	}
	for _, c := range cases {
		if got := backoff(c.n, c.lo, c.hi); got != c.want {
			t.Errorf("backoff(%d, %v, %v) = %v, want %v", c.n, c.lo, c.hi, got, c.want)
		}
	}
}

func TestNextAttempt(t *testing.T) {
	down := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return down.Add(d) }
	const fail, lo, hi = 10 * time.Second, 100 * ms, 2 * time.Second
	cases := []struct {
		name   string
		n      int
		now    time.Time
		wait   time.Duration
		wantOK bool
	}{
		{"first attempt at once", 0, at(0), 0, true},
		{"first attempt even late", 0, at(20 * time.Second), 0, true},
		{"second after lo", 1, at(5 * ms), lo, true},
		{"doubling", 3, at(time.Second), 400 * ms, true},
		{"capped", 10, at(3 * time.Second), hi, true},
		{"clipped to the deadline", 10, at(9500 * ms), 500 * ms, true},
		{"last attempt exactly at the deadline", 4, at(fail - ms), ms, true},
		{"deadline reached", 5, at(fail), 0, false},
		{"deadline passed", 2, at(fail + time.Second), 0, false},
	}
	for _, c := range cases {
		wait, ok := nextAttempt(c.n, down, c.now, fail, lo, hi)
		if wait != c.wait || ok != c.wantOK {
			t.Errorf("%s: nextAttempt(%d, +%v) = %v, %v; want %v, %v", c.name, c.n, c.now.Sub(down), wait, ok, c.wait, c.wantOK)
		}
	}
}

// TestNextAttemptSchedule replays the whole schedule against a server that
// never comes back: attempts at 0, lo, 3lo, 7lo, … and one at the deadline.
func TestNextAttemptSchedule(t *testing.T) {
	down := time.Unix(0, 0)
	now := down
	var times []time.Duration
	for n := 0; ; n++ {
		wait, ok := nextAttempt(n, down, now, 2*time.Second, 100*ms, 800*ms)
		if !ok {
			break
		}
		now = now.Add(wait)
		times = append(times, now.Sub(down))
	}
	want := []time.Duration{0, 100 * ms, 300 * ms, 700 * ms, 1500 * ms, 2000 * ms}
	if len(times) != len(want) {
		t.Fatalf("attempts at %v, want %v", times, want)
	}
	for i := range want {
		if times[i] != want[i] {
			t.Fatalf("attempts at %v, want %v", times, want)
		}
	}
}

func TestStalled(t *testing.T) {
	base := time.Unix(500, 0)
	cases := []struct {
		name        string
		outstanding int64
		since       time.Duration
		timeout     time.Duration
		want        bool
	}{
		{"idle connection", 0, time.Hour, 30 * time.Second, false},
		{"recent reply", 4, 29 * time.Second, 30 * time.Second, false},
		{"timeout reached", 1, 30 * time.Second, 30 * time.Second, true},
		{"long stall", 7, time.Minute, 30 * time.Second, true},
		{"check disabled", 7, time.Hour, -1, false},
	}
	for _, c := range cases {
		if got := stalled(c.outstanding, base, base.Add(c.since), c.timeout); got != c.want {
			t.Errorf("%s: stalled = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c := DefaultConfig()
	if c.FailAfter != DefaultFailAfter || c.ReconnectMin != DefaultReconnectMin || c.ReconnectMax != DefaultReconnectMax ||
		c.DialTimeout != DefaultDialTimeout || c.IOTimeout != DefaultIOTimeout || c.ReplayBudget != DefaultReplayBudget ||
		c.Dial == nil || c.Logger == nil {
		t.Fatalf("defaults not filled: %+v", c)
	}
	short := Config{FailAfter: 20 * ms}
	if err := short.validate(); err != nil {
		t.Fatal(err)
	}
	if short.ReconnectMin != 20*ms || short.ReconnectMax != 20*ms {
		t.Fatalf("backoff for a 20ms FailAfter: %v..%v", short.ReconnectMin, short.ReconnectMax)
	}
	bad := []struct {
		cfg  Config
		want string
	}{
		{Config{FailAfter: time.Microsecond}, "FailAfter"},
		{Config{ReconnectMin: time.Second, ReconnectMax: ms}, "ReconnectMin"},
		{Config{ReconnectMin: -ms}, "ReconnectMin"},
		{Config{DialTimeout: -time.Second}, "DialTimeout"},
		{Config{ReplayBudget: 4096}, "ReplayBudget"},
	}
	for _, b := range bad {
		err := b.cfg.validate()
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("validate(%+v) = %v, want an error about %s", b.cfg, err, b.want)
		}
	}
}
