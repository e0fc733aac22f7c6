package raid

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// concurrency records how many calls of a fanout ran at once.
type concurrency struct {
	now, most atomic.Int32
}

func (c *concurrency) call(d time.Duration) {
	n := c.now.Add(1)
	for {
		m := c.most.Load()
		if n <= m || c.most.CompareAndSwap(m, n) {
			break
		}
	}
	if d > 0 {
		time.Sleep(d)
	}
	c.now.Add(-1)
}

func TestFanout(t *testing.T) {
	errOdd := errors.New("odd member")
	for _, tc := range []struct {
		name        string
		warmDelay   time.Duration // each member call of the warm-up (small requests)
		delay       time.Duration // each member call after it
		memberBytes int
		inline      bool  // after the warm-up
		most        int32 // 0: at least 2 at once; else exactly this many
	}{
		{"fast members, small requests: one after the other", 0, 0, 4096, true, 1},
		{"fast members, large requests: in parallel", 0, time.Millisecond, fanoutSmall + 1, true, 0},
		{"slow members, small requests: in parallel", 2 * time.Millisecond, 2 * time.Millisecond, 4096, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f fanout
			f.init(nil)
			if f.inline() {
				t.Fatal("a new fanout counts its members as fast")
			}
			const mask = 0b11110
			errs := make([]error, 5)
			// Warm up with small requests: with fast members, enough to
			// take the average under fanoutInlineNs; with slow ones, a few.
			warm := 40 * fanoutEvery
			if tc.warmDelay > 0 {
				warm = 2 * fanoutEvery
			}
			for range warm {
				f.run(mask, 4096, errs, func(int) error { time.Sleep(tc.warmDelay); return nil })
			}
			if got := f.inline(); got != tc.inline {
				t.Fatalf("inline = %v after the warm-up (average %d ns), want %v", got, f.ns.Load(), tc.inline)
			}
			var c concurrency
			var mu sync.Mutex
			var got []int
			for range 2 * fanoutEvery {
				clear(errs)
				got = got[:0]
				f.run(mask, tc.memberBytes, errs, func(m int) error {
					c.call(tc.delay)
					mu.Lock()
					got = append(got, m)
					mu.Unlock()
					if m%2 == 1 {
						return errOdd
					}
					return nil
				})
				if len(got) != 4 {
					t.Fatalf("called members %v, want 1 to 4 once each", got)
				}
				for m, err := range errs {
					if want := m%2 == 1; (err != nil) != want || (err != nil && err != errOdd) {
						t.Fatalf("errs[%d] = %v", m, err)
					}
				}
				if errs[0] != nil {
					t.Fatal("a member outside the mask got a result")
				}
			}
			most := c.most.Load()
			switch {
			case tc.most == 0 && most < 2:
				t.Fatalf("at most %d member calls ran at once, want them in parallel", most)
			case tc.most != 0 && most != tc.most:
				t.Fatalf("at most %d member calls ran at once, want %d", most, tc.most)
			}
		})
	}
}

// TestFanoutSpread: Config.OnSpread is called for each request that moves
// more than fanoutSmall bytes to a member, and for no other.
func TestFanoutSpread(t *testing.T) {
	for _, tc := range []struct {
		name        string
		mask        uint64
		memberBytes int
		want        int // calls for 10 requests
	}{
		{"large, several members", 0b11111, fanoutSmall + 1, 10},
		{"large, two members", 0b101, 1 << 20, 10},
		{"large, one member", 0b100, 1 << 20, 10},
		{"at the threshold", 0b11111, fanoutSmall, 0},
		{"small", 0b11111, 4096, 0},
		{"no member", 0, 1 << 20, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			var f fanout
			f.init(func() { calls.Add(1) })
			errs := make([]error, 5)
			for range 10 {
				f.run(tc.mask, tc.memberBytes, errs, func(int) error { return nil })
			}
			if got := int(calls.Load()); got != tc.want {
				t.Fatalf("OnSpread called %d times for 10 requests, want %d", got, tc.want)
			}
		})
	}
}

func TestFanoutObserve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		start   int64
		samples []time.Duration
		inline  bool
	}{
		{"fast stays fast", 2_000, []time.Duration{2 * time.Microsecond, 3 * time.Microsecond}, true},
		{"one stall does not make fast members slow", 2_000, []time.Duration{time.Second}, true},
		{"slow every time: slow within a few samples", 2_000, []time.Duration{time.Second, time.Second, time.Second}, false},
		{"a new fanout turns fast", fanoutMaxNs, []time.Duration{
			time.Microsecond, time.Microsecond, time.Microsecond, time.Microsecond, time.Microsecond,
			time.Microsecond, time.Microsecond, time.Microsecond, time.Microsecond, time.Microsecond,
			time.Microsecond, time.Microsecond}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f fanout
			f.ns.Store(tc.start)
			for _, d := range tc.samples {
				f.observe(d)
			}
			if got := f.inline(); got != tc.inline {
				t.Fatalf("inline = %v (average %d ns), want %v", got, f.ns.Load(), tc.inline)
			}
		})
	}
}

// TestFanoutSeesAnySlowMember: one slow member among fast ones makes the
// requests parallel whichever member it is, in both modes.
func TestFanoutSeesAnySlowMember(t *testing.T) {
	const mask = 0b11110
	for slow := 1; slow <= 4; slow++ {
		for _, start := range []int64{0, fanoutMaxNs} { // inline, parallel
			var f fanout
			f.ns.Store(start)
			errs := make([]error, 5)
			for range 4 * fanoutEvery {
				f.run(mask, 4096, errs, func(m int) error {
					if m == slow {
						time.Sleep(2 * time.Millisecond)
					}
					return nil
				})
			}
			if f.inline() {
				t.Errorf("member %d slow, average from %d ns: still inline (average %d ns)", slow, start, f.ns.Load())
			}
		}
	}
}
