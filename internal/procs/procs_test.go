package procs

import (
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWant(t *testing.T) {
	cases := []struct {
		conns, def int
		wide       bool
		want       int
	}{
		{0, 2, false, 2},
		{1, 2, false, 1},
		{2, 2, false, 2},
		{3, 2, false, 2},
		{1, 1, false, 1},
		{0, 8, false, 8},
		{5, 8, false, 5},
		{100, 8, false, 8},
		{-1, 4, false, 4},
		{3, 0, false, 0},
		{1, 2, true, 2},
		{0, 2, true, 2},
		{5, 8, true, 8},
		{1, 1, true, 1},
	}
	for _, c := range cases {
		if got := Want(c.conns, c.def, c.wide); got != c.want {
			t.Errorf("Want(%d, %d, %v) = %d, want %d", c.conns, c.def, c.wide, got, c.want)
		}
	}
}

func TestParse(t *testing.T) {
	cases := []struct {
		in   string
		n    int
		auto bool
		err  string
	}{
		{"auto", 0, true, ""},
		{"AUTO", 0, true, ""},
		{"", 0, true, ""},
		{"1", 1, false, ""},
		{" 16 ", 16, false, ""},
		{"0", 0, false, "at least 1"},
		{"-2", 0, false, "at least 1"},
		{"two", 0, false, `--cpus "two"`},
		{"1.5", 0, false, "want auto or a number"},
	}
	for _, c := range cases {
		n, auto, err := Parse(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Parse(%q) error = %v, want one containing %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || n != c.n || auto != c.auto {
			t.Errorf("Parse(%q) = %d, %v, %v; want %d, %v, nil", c.in, n, auto, err, c.n, c.auto)
		}
	}
}

// fakeRuntime records what a Governor applies (0 stands for the
// default), and gives it a clock that moves only when told and timers that
// fire only when told.
type fakeRuntime struct {
	mu     sync.Mutex
	def    int
	cur    int
	sets   []int
	now    int64 // ns
	timers []fakeTimer
}

type fakeTimer struct {
	at int64
	f  func()
}

func (f *fakeRuntime) governor() *Governor {
	f.cur = f.def
	g := newGovernor(f.def, func(n int) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.sets = append(f.sets, n)
		if n == 0 {
			n = f.def
		}
		f.cur = n
	}, func() int { return f.def }, nil)
	g.now = func() int64 {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.now
	}
	g.after = func(d time.Duration, fn func()) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.timers = append(f.timers, fakeTimer{f.now + int64(d), fn})
	}
	return g
}

// advance moves the clock by d and fires the timers that are due, in
// order, including those they set.
func (f *fakeRuntime) advance(d time.Duration) {
	f.mu.Lock()
	f.now += int64(d)
	f.mu.Unlock()
	for {
		f.mu.Lock()
		i := slices.IndexFunc(f.timers, func(t fakeTimer) bool { return t.at <= f.now })
		if i < 0 {
			f.mu.Unlock()
			return
		}
		fn := f.timers[i].f
		f.timers = slices.Delete(f.timers, i, i+1)
		f.mu.Unlock()
		fn()
	}
}

// TestGovernorSequences runs sequences of connections opened and closed,
// Spread calls and waits, and checks the setting after each step and what
// was applied.
func TestGovernorSequences(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name  string
		def   int
		ops   string          // o: open a connection, c: close the oldest, s: Spread, w: wait
		waits []time.Duration // one per w, in order
		sets  []int           // what is applied, in order (0: the default)
		cur   []int           // the setting after each op
	}{
		{"one connection on two CPUs", 2, "oc", nil, []int{1, 0}, []int{1, 2}},
		{"second connection", 2, "oocc", nil, []int{1, 2, 1, 0}, []int{1, 2, 1, 2}},
		{"beyond the CPU count", 2, "ooocc", nil, []int{1, 2, 1}, []int{1, 2, 2, 2, 1}},
		{"one CPU, connections only", 1, "ooocc", nil, nil, []int{1, 1, 1, 1, 1}},
		{"eight CPUs", 8, "oooccc", nil, []int{1, 2, 3, 2, 1, 0}, []int{1, 2, 3, 2, 1, 8}},
		{"spread widens one connection", 2, "oswc", []time.Duration{spreadHold},
			[]int{1, 2, 1, 0}, []int{1, 2, 1, 2}},
		{"spreads keep it wide", 2, "oswswswwc", []time.Duration{600 * ms, 600 * ms, 600 * ms, 600 * ms},
			[]int{1, 2, 1, 0}, []int{1, 2, 2, 2, 2, 2, 2, 1, 2}},
		{"spread with no connection changes nothing", 4, "sw", []time.Duration{spreadHold},
			nil, []int{4, 4}},
		{"close while wide stays wide", 2, "oscw", []time.Duration{spreadHold},
			[]int{1, 2, 0}, []int{1, 2, 2, 2}},
		{"open while wide stays wide", 8, "soow", []time.Duration{spreadHold},
			[]int{2}, []int{8, 8, 8, 2}},
		{"one CPU changes nothing", 1, "osswc", []time.Duration{spreadHold},
			nil, []int{1, 1, 1, 1, 1}},
		{"widens again after the hold", 2, "oswsw", []time.Duration{spreadHold, spreadHold},
			[]int{1, 2, 1, 2, 1}, []int{1, 2, 1, 2, 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeRuntime{def: c.def}
			g := f.governor()
			var open []func()
			waits := c.waits
			for i, op := range c.ops {
				switch op {
				case 'o':
					open = append(open, g.Opened())
				case 'c':
					open[0]()
					open = open[1:]
				case 's':
					g.Spread()
				case 'w':
					f.advance(waits[0])
					waits = waits[1:]
				}
				if got := g.Current(); got != c.cur[i] || f.cur != got {
					t.Fatalf("after %q: Current() = %d, runtime %d; want %d", c.ops[:i+1], got, f.cur, c.cur[i])
				}
			}
			if !slices.Equal(f.sets, c.sets) {
				t.Errorf("applied %v, want %v", f.sets, c.sets)
			}
			f.advance(10 * spreadHold)
			if len(f.timers) != 0 {
				t.Errorf("%d timers left after every hold passed", len(f.timers))
			}
		})
	}
}

func TestGovernorSpreadConcurrent(t *testing.T) {
	f := &fakeRuntime{def: 2}
	g := f.governor()
	done := g.Opened()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 100 {
				g.Spread()
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			f.advance(spreadHold / 10)
		}
	})
	wg.Wait()
	f.advance(2 * spreadHold)
	if got := g.Current(); got != 1 || f.cur != 1 {
		t.Fatalf("a hold after the last Spread: Current() = %d, runtime %d; want 1", got, f.cur)
	}
	done()
	if got := g.Current(); got != 2 {
		t.Fatalf("no connection: Current() = %d, want 2", got)
	}
}

func TestGovernorCloseTwice(t *testing.T) {
	f := &fakeRuntime{def: 4}
	g := f.governor()
	a := g.Opened()
	b := g.Opened()
	a()
	a() // a second call must not count another connection closed
	if got := g.Current(); got != 1 {
		t.Fatalf("Current() = %d with one connection open, want 1", got)
	}
	b()
	if got := g.Current(); got != 4 {
		t.Fatalf("Current() = %d with none open, want 4", got)
	}
}

func TestGovernorConcurrent(t *testing.T) {
	f := &fakeRuntime{def: 3}
	g := f.governor()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for range 20 {
				done := g.Opened()
				if n := g.Current(); n < 1 || n > 3 {
					t.Errorf("Current() = %d, outside 1..3", n)
				}
				done()
			}
		})
	}
	wg.Wait()
	if got := g.Current(); got != 3 || f.cur != 3 {
		t.Fatalf("after every connection closed: Current() = %d, runtime %d; want 3", got, f.cur)
	}
}

func TestNilGovernor(t *testing.T) {
	var g *Governor
	g.Opened()()
	g.Spread()
	if got := g.Current(); got != runtime.GOMAXPROCS(0) {
		t.Fatalf("nil Current() = %d, want GOMAXPROCS %d", got, runtime.GOMAXPROCS(0))
	}
}

func TestNew(t *testing.T) {
	old := runtime.GOMAXPROCS(0)
	defer runtime.SetDefaultGOMAXPROCS()
	t.Setenv("GOMAXPROCS", "")

	g, err := New("3", nil)
	if err != nil || g != nil {
		t.Fatalf(`New("3") = %v, %v; want nil, nil`, g, err)
	}
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Fatalf(`after New("3"), GOMAXPROCS = %d, want 3`, got)
	}
	runtime.GOMAXPROCS(old)

	if _, err := New("none", nil); err == nil {
		t.Fatal(`New("none") succeeded`)
	}

	g, err = New("auto", nil)
	if err != nil || g == nil {
		t.Fatalf(`New("auto") = %v, %v; want a Governor`, g, err)
	}
	done := g.Opened()
	if got, want := runtime.GOMAXPROCS(0), Want(1, old, false); got != want {
		t.Errorf("one connection open: GOMAXPROCS = %d, want %d", got, want)
	}
	done()
	if got, want := runtime.GOMAXPROCS(0), g.Current(); got != want {
		t.Errorf("none open: GOMAXPROCS = %d, the Governor says %d", got, want)
	}

	t.Setenv("GOMAXPROCS", "2")
	if g, err := New("auto", nil); err != nil || g != nil {
		t.Fatalf(`New("auto") with GOMAXPROCS set = %v, %v; want nil, nil`, g, err)
	}
}
