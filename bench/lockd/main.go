// Command lockd-bench compares lockd's exclusive lock+unlock with a peer
// lock service on loopback, in one run: etcd's concurrency.Mutex against an
// embedded single-node etcd, and lockd with three nodes talking over the
// real transport (mutual TLS).
//
// Two cases per system:
//   - uncontended: one client locks and unlocks one resource in a loop;
//   - contended: 8 clients, each locking and unlocking a random one of 16
//     resources in a loop.
//
// Each case runs for -duration after a short warm-up and reports
// operations per second (one operation = lock + unlock) and the p50 and
// p99 latency of an operation. It is a separate module so etcd's
// dependency tree stays out of ddraid's go.mod; run it with
// `make bench-lockd`.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Locker is one client of a lock service: it takes and releases an
// exclusive lock on a named resource.
type Locker interface {
	// Lock blocks until the client holds resource exclusively, and
	// returns the function that releases it.
	Lock(ctx context.Context, resource string) (unlock func(context.Context) error, err error)
}

// System is a lock service under test.
type System interface {
	Name() string
	// Client returns the i-th client; clients are independent (their
	// own session or node) so that they contend like separate processes.
	Client(ctx context.Context, i int) (Locker, error)
	Close() error
}

// result is one measured case.
type result struct {
	system, kase string
	ops          int
	elapsed      time.Duration
	p50, p99     time.Duration
	err          error
}

func (r result) opsPerSec() float64 { return float64(r.ops) / r.elapsed.Seconds() }

type benchCase struct {
	name      string
	clients   int
	resources int
}

var cases = []benchCase{
	{"uncontended", 1, 1},
	{"contended 8c/16r", 8, 16},
}

func main() {
	duration := flag.Duration("duration", 5*time.Second, "measuring time per case")
	warmup := flag.Duration("warmup", time.Second, "warm-up time per case (not measured)")
	systems := flag.String("systems", "etcd,etcd-nofsync,lockd", "comma-separated systems to run: etcd, etcd-nofsync, lockd")
	verbose := flag.Bool("v", false, "log the systems' own messages")
	flag.Parse()

	level := slog.LevelError + 4
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx := context.Background()
	var results []result
	var notes []string
	for _, name := range strings.Split(*systems, ",") {
		sys, err := startSystem(ctx, strings.TrimSpace(name), log)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s: not run: %v", name, err))
			continue
		}
		for _, c := range cases {
			fmt.Fprintf(os.Stderr, "running %s, %s...\n", sys.Name(), c.name)
			results = append(results, run(ctx, sys, c, *warmup, *duration))
		}
		if err := sys.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: close: %v\n", sys.Name(), err)
		}
	}
	printTable(os.Stdout, results, *duration)
	for _, n := range notes {
		fmt.Println(n)
	}
}

func startSystem(ctx context.Context, name string, log *slog.Logger) (System, error) {
	switch name {
	case "etcd":
		return startEtcd(ctx, false)
	case "etcd-nofsync":
		return startEtcd(ctx, true)
	case "lockd":
		return startLockd(ctx, log)
	}
	return nil, fmt.Errorf("unknown system %q", name)
}

// run measures one case: every client loops lock+unlock on a random
// resource of the case until the time is up.
func run(ctx context.Context, sys System, c benchCase, warmup, duration time.Duration) result {
	res := result{system: sys.Name(), kase: c.name}
	lockers := make([]Locker, c.clients)
	for i := range lockers {
		l, err := sys.Client(ctx, i)
		if err != nil {
			res.err = fmt.Errorf("client %d: %w", i, err)
			return res
		}
		lockers[i] = l
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		lats  []time.Duration
		first error
	)
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(duration)
	for i, l := range lockers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			var mine []time.Duration
			for {
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				r := fmt.Sprintf("res-%d", rng.IntN(c.resources))
				opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				unlock, err := l.Lock(opCtx, r)
				if err == nil {
					err = unlock(opCtx)
				}
				cancel()
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("client %d, %s: %w", i, r, err)
					}
					mu.Unlock()
					return
				}
				if t0.After(measureFrom) {
					mine = append(mine, time.Since(t0))
				}
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(measureFrom)
	res.ops = len(lats)
	res.err = first
	slices.Sort(lats)
	res.p50 = percentile(lats, 0.50)
	res.p99 = percentile(lats, 0.99)
	return res
}

// percentile returns the q-quantile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func printTable(w *os.File, rs []result, duration time.Duration) {
	fmt.Fprintf(w, "lock+unlock of an exclusive lock on loopback, %v per case\n", duration)
	fmt.Fprintf(w, "%-18s %-14s %10s %10s %10s\n", "case", "system", "ops/s", "p50", "p99")
	for _, r := range rs {
		if r.err != nil {
			fmt.Fprintf(w, "%-18s %-14s failed: %v\n", r.kase, r.system, r.err)
			continue
		}
		fmt.Fprintf(w, "%-18s %-14s %10.0f %10s %10s\n", r.kase, r.system, r.opsPerSec(), fmtDur(r.p50), fmtDur(r.p99))
	}
	by := map[[2]string]result{}
	for _, r := range rs {
		if r.err == nil && r.ops > 0 {
			by[[2]string{r.kase, r.system}] = r
		}
	}
	header := false
	for _, c := range cases {
		l, ok := by[[2]string{c.name, "lockd"}]
		if !ok {
			continue
		}
		for _, peer := range []string{"etcd", "etcd-nofsync"} {
			e, ok := by[[2]string{c.name, peer}]
			if !ok {
				continue
			}
			if !header {
				fmt.Fprintf(w, "\n%-18s %-14s %12s %12s\n", "case", "lockd vs", "throughput", "p99 latency")
				header = true
			}
			fmt.Fprintf(w, "%-18s %-14s %11.1fx %11.2fx\n", c.name, peer, l.opsPerSec()/e.opsPerSec(), float64(l.p99)/float64(e.p99))
		}
	}
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}
