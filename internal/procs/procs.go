// Package procs sets how many CPUs run the process's Go code at once
// (GOMAXPROCS) from the number of NBD client connections it serves.
//
// Each connection reads its requests on one goroutine and, while the
// device answers at memory speed, runs them there too (blockdev/nbd,
// inline requests). A connection's work is then one thread's work, and a
// second P with nothing to run only adds scheduler wake-ups: each time the
// reader waits for its socket and is woken again, the runtime starts an
// idle thread spinning to look for work. On two CPUs shared with the client
// (fio), one P served a single connection's 4 KiB random writes at 1.14 to
// 1.31 times the rate of two Ps (linear and raid35 arrays on tmpfs), and
// its 4 KiB random reads at 1.01 to 1.16; 1 MiB requests, a device with
// 1 ms of latency, and resync and rebuild speed were the same within noise
// (docs/benchmarks.md).
// So while n connections are open the process runs on min(n, default) Ps,
// and on the runtime's default (the CPU count, or the cgroup's limit)
// while none is: background jobs (resync, rebuild, check) then have every
// CPU.
package procs

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// Want returns the GOMAXPROCS for conns open connections when the
// runtime's default is def: def with no connection, one P per connection
// up to def otherwise.
func Want(conns, def int) int {
	if conns <= 0 || def < 1 {
		return def
	}
	return min(conns, def)
}

// Governor keeps GOMAXPROCS at Want(open connections, default). A nil
// Governor does nothing, so callers need not check.
type Governor struct {
	mu     sync.Mutex
	conns  int
	def    int  // the runtime's default, as last seen while it applied
	cur    int  // the setting now
	pinned bool // cur was set by us, which stops the runtime's own updates
	set    func(n int)
	log    *slog.Logger
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
	g := &Governor{def: def, cur: def, log: log}
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

// Current returns the setting the Governor last applied.
func (g *Governor) Current() int {
	if g == nil {
		return runtime.GOMAXPROCS(0)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cur
}

func (g *Governor) add(d int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conns += d
	switch want := Want(g.conns, g.def); {
	case g.conns == 0 && g.pinned:
		g.set(0) // back to the default, and to the runtime's updates of it
	case g.conns > 0 && want != g.cur:
		g.set(want)
	default:
		return
	}
	g.log.Debug("GOMAXPROCS follows the client connections", "connections", g.conns, "gomaxprocs", g.cur)
}
