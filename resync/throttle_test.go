package resync

import (
	"testing"
	"time"
)

func TestThrottleDelay(t *testing.T) {
	mib := int64(1 << 20)
	cases := []struct {
		name    string
		th      Throttle
		done    int64
		elapsed time.Duration
		busy    bool
		want    time.Duration
	}{
		{"nothing done", Throttle{Min: mib, Max: 10 * mib}, 0, 0, true, 0},
		{"over max waits back to max", Throttle{Max: 10 * mib}, 20 * mib, time.Second, false, time.Second},
		{"at max no wait", Throttle{Max: 10 * mib}, 10 * mib, time.Second, false, 0},
		{"no max never waits when idle", Throttle{}, 1 << 40, time.Millisecond, false, 0},
		{"between min and max idle", Throttle{Min: mib, Max: 10 * mib}, 5 * mib, time.Second, false, 0},
		{"between min and max busy yields", Throttle{Min: mib, Max: 10 * mib}, 5 * mib, time.Second, true, backoff},
		{"busy yield capped at min", Throttle{Min: 4 * mib, Max: 10 * mib}, 4*mib + mib/100, time.Second, true, 2500 * time.Microsecond},
		{"below min busy no wait", Throttle{Min: 8 * mib, Max: 10 * mib}, 5 * mib, time.Second, true, 0},
		{"no min busy always yields", Throttle{Max: 10 * mib}, 1, time.Second, true, backoff},
		{"over max and busy: max wins", Throttle{Min: mib, Max: 2 * mib}, 4 * mib, time.Second, true, time.Second},
	}
	for _, c := range cases {
		got := c.th.Delay(c.done, c.elapsed, c.busy)
		if d := got - c.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("%s: Delay = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestThrottleValidate(t *testing.T) {
	for _, th := range []Throttle{{Min: -1}, {Max: -1}, {Min: 2, Max: 1}} {
		if th.Validate() == nil {
			t.Errorf("%+v accepted", th)
		}
	}
	for _, th := range []Throttle{{}, {Min: 1}, {Min: 1, Max: 1}, DefaultThrottle()} {
		if err := th.Validate(); err != nil {
			t.Errorf("%+v: %v", th, err)
		}
	}
}
