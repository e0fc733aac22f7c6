// Package procs sets how many CPUs run the process's Go code at once
// (GOMAXPROCS) from the number of NBD client connections it serves and
// from whether its requests spread their work over several goroutines.
//
// Each connection reads its requests on one goroutine and, while the
// device answers at memory speed, runs them there too (blockdev/nbd,
// inline requests). A connection's work is then one thread's work, and a
// second P with nothing to run only adds scheduler wake-ups: each time the
// reader waits for its socket and is woken again, the runtime starts an
// idle thread spinning to look for work. On two CPUs shared with the client
// (fio), one P served a single connection's 4 KiB random writes at 1.14 to
// 1.31 times the rate of two Ps (linear and raid35 arrays on tmpfs), and
// its 4 KiB random reads at 1.01 to 1.16; a device with 1 ms of latency,
// and resync and rebuild speed were the same within noise
// (docs/benchmarks.md).
// So while n connections are open the process runs on min(n, default) Ps,
// and on the runtime's default (the CPU count, or the cgroup's limit)
// while none is.
//
// Large requests are different. A raid35 or mirror request copies each
// member's part on a goroutine of its own (raid, fanout), and on one P
// those copies take turns. And any member syscall long enough to span a
// sysmon tick, even a linear array's one, has its P taken: sysmon leaves a
// P in a syscall alone only while another P is idle, so on a single P it
// hands that P to another thread at every tick and keeps ticking at its
// fastest. One connection's 1 MiB requests ran faster on two Ps than on
// one: to a raid35 x5 on tmpfs 1.14 to 1.28 times, to a linear array on
// one tmpfs file 1.14 (writes) and 1.16 (reads) times (medians of seven to
// eleven 3 s runs). Every request that moves more than 64 KiB to a member
// calls Spread, and for spreadHold after the last one the process runs on
// the default, whatever the connections; background jobs (resync,
// rebuild, check) read and write through the same engines and count too.
package procs

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// spreadHold is how long after the last Spread the process keeps the
// default: long enough that a stream of large requests changes the setting
// (a stop-the-world) once, not once per request.
const spreadHold = time.Second

// Want returns the GOMAXPROCS for conns open connections when the
// runtime's default is def and wide reports recent spread work: def with
// no connection or with wide set, one P per connection up to def
// otherwise.
func Want(conns, def int, wide bool) int {
	if conns <= 0 || wide || def < 1 {
		return def
	}
	return min(conns, def)
}

// Governor keeps GOMAXPROCS at Want(open connections, default, spread
// work within spreadHold). A nil Governor does nothing, so callers need not
// check.
type Governor struct {
	mu     sync.Mutex
	conns  int
	wide   bool // Spread was called within spreadHold
	def    int  // the runtime's default, as last seen while it applied
	cur    int  // the setting now
	pinned bool // cur was set by us, which stops the runtime's own updates
	set    func(n int)
	log    *slog.Logger

	spreadAt atomic.Int64 // now() at the last Spread
	widened  atomic.Bool  // wide, for Spread's check without the lock
	now      func() int64 // ns on a monotonic clock
	after    func(d time.Duration, f func())
}

// New returns a Governor that changes the runtime's setting, or nil when
// the setting is fixed: spec is a number (it is applied here), or spec is
// "auto" but the GOMAXPROCS environment variable is set (the operator's
// value stands). spec is what --cpus takes: "auto" or a positive number.
func New(spec string, log *slog.Logger) (*Governor, error) {
	n, auto, err := Parse(spec)
	if err != nil {
		return nil, err
	}
	if !auto {
		runtime.GOMAXPROCS(n)
		return nil, nil
	}
	if os.Getenv("GOMAXPROCS") != "" {
		return nil, nil
	}
	def := runtime.GOMAXPROCS(0)
	return newGovernor(def, func(n int) {
		if n == 0 {
			runtime.SetDefaultGOMAXPROCS()
		} else {
			runtime.GOMAXPROCS(n)
		}
	}, func() int { return runtime.GOMAXPROCS(0) }, log), nil
}

// newGovernor returns a Governor starting at the default def. set(n)
// applies n, set(0) the runtime's default, after which current reports
// what that default is.
func newGovernor(def int, set func(n int), current func() int, log *slog.Logger) *Governor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	g := &Governor{def: def, cur: def, log: log,
		now:   func() int64 { return int64(time.Since(start)) },
		after: func(d time.Duration, f func()) { time.AfterFunc(d, f) },
	}
	g.set = func(n int) {
		set(n)
		if n == 0 {
			g.def = current()
			g.cur, g.pinned = g.def, false
		} else {
			g.cur, g.pinned = n, true
		}
	}
	return g
}

// Parse reads a --cpus value: "auto", or a positive number of CPUs.
func Parse(spec string) (n int, auto bool, err error) {
	s := strings.TrimSpace(spec)
	if s == "" || strings.EqualFold(s, "auto") {
		return 0, true, nil
	}
	n, err = strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, false, fmt.Errorf("--cpus %q: want auto or a number of CPUs (at least 1)", spec)
	}
	return n, false, nil
}

// Opened records a client connection that started serving requests; call
// the function it returns once when the connection ends.
func (g *Governor) Opened() (closed func()) {
	if g == nil {
		return func() {}
	}
	g.add(1)
	var once sync.Once
	return func() { once.Do(func() { g.add(-1) }) }
}

// Hook returns Opened as an nbd.Config.OnTransmission, or nil for a nil
// Governor: a fixed setting has nothing to count.
func (g *Governor) Hook() func() (closed func()) {
	if g == nil {
		return nil
	}
	return g.Opened
}

// SpreadHook returns Spread as a raid.Config.OnSpread, or nil for a nil
// Governor.
func (g *Governor) SpreadHook() func() {
	if g == nil {
		return nil
	}
	return g.Spread
}

// Current returns the setting the Governor last applied.
func (g *Governor) Current() int {
	if g == nil {
		return runtime.GOMAXPROCS(0)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cur
}

// Spread records a request that runs its work on several goroutines at
// once (raid.Config.OnSpread): the process runs on the default until
// spreadHold has passed without another. Only the first call of a stream
// takes the lock; the rest store the time.
func (g *Governor) Spread() {
	if g == nil {
		return
	}
	g.spreadAt.Store(g.now())
	if g.widened.Load() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.wide {
		return
	}
	g.wide = true
	g.widened.Store(true)
	g.apply()
	g.after(spreadHold, g.narrow)
}

// narrow ends the spread setting once spreadHold has passed since the last
// Spread, and otherwise looks again when it will have. A Spread that
// races with the end finds widened still set and does not widen again; the
// next one does.
func (g *Governor) narrow() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if left := spreadHold - time.Duration(g.now()-g.spreadAt.Load()); left > 0 {
		g.after(left, g.narrow)
		return
	}
	g.wide = false
	g.widened.Store(false)
	g.apply()
}

func (g *Governor) add(d int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conns += d
	g.apply()
}

// apply sets what Want asks for. g.mu is held.
func (g *Governor) apply() {
	busy := g.conns > 0 || g.wide
	switch want := Want(g.conns, g.def, g.wide); {
	case !busy && g.pinned:
		g.set(0) // back to the default, and to the runtime's updates of it
	case busy && want != g.cur:
		g.set(want)
	default:
		return
	}
	g.log.Debug("GOMAXPROCS follows the client connections and large requests", "connections", g.conns, "spread", g.wide, "gomaxprocs", g.cur)
}
