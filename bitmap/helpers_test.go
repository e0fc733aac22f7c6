package bitmap

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told to. Its tickers behave
// like time.Ticker: a one-slot channel, ticks a slow reader misses are
// dropped.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	tickers []*fakeTicker
}

type fakeTicker struct {
	c      chan time.Time
	period time.Duration
	next   time.Time
	clk    *fakeClock
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTicker(d time.Duration) Ticker {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTicker{c: make(chan time.Time, 1), period: d, next: c.now.Add(d), clk: c}
	c.tickers = append(c.tickers, t)
	return t
}

// Advance moves the clock by d and delivers the ticks that became due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.tickers {
		if c.now.Before(t.next) {
			continue
		}
		select {
		case t.c <- c.now:
		default:
		}
		for !c.now.Before(t.next) {
			t.next = t.next.Add(t.period)
		}
	}
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }

func (t *fakeTicker) Stop() {
	c := t.clk
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tickers = slices.DeleteFunc(c.tickers, func(x *fakeTicker) bool { return x == t })
}

// event is one thing the harness saw happen, in order: a flush, or a
// synced store batch that marked or cleared regions.
type event struct {
	kind    string // "flush", "mark", "clear"
	regions []uint64
}

// harness is a Bitmap on a fresh store with a fake clock, a recording
// Flush and a record of every synced store batch.
type harness struct {
	t      testing.TB
	store  *Store
	dir    string
	clk    *fakeClock
	b      *Bitmap
	cfg    Config
	size   int64
	passes chan struct{}

	mu       sync.Mutex
	events   []event
	flushErr error
	onFlush  func() // runs inside Flush, after recording it
	synced   map[uint64]bool

	flushes atomic.Int64
}

const (
	testArray = "arr"
	testSlot  = 2
)

type harnessOpt func(*harness, *hooks)

// withSize sets the array size (default 1 MiB + 5 KiB: 17 regions of 64
// KiB, the last partial).
func withSize(size int64) harnessOpt {
	return func(h *harness, _ *hooks) { h.size = size }
}

// withConfig lets a test change the Bitmap's Config.
func withConfig(fn func(*Config)) harnessOpt {
	return func(h *harness, _ *hooks) { fn(&h.cfg) }
}

func withHooks(fn func(*hooks)) harnessOpt {
	return func(_ *harness, hk *hooks) { fn(hk) }
}

func newHarness(t testing.TB, opts ...harnessOpt) *harness {
	t.Helper()
	store, dir := openStore(t)
	h := &harness{
		t:      t,
		store:  store,
		dir:    dir,
		clk:    newFakeClock(),
		passes: make(chan struct{}, 1),
		synced: make(map[uint64]bool),
	}
	h.size = 1<<20 + 5<<10
	h.cfg = Config{
		RegionSize: MinRegionSize,
		ClearDelay: 4 * time.Second,
		Clock:      h.clk,
		Flush:      h.flush,
		Logger:     quietLogger(),
	}
	var hk hooks
	for _, o := range opts {
		o(h, &hk)
	}
	store.afterSync = h.recordSync
	hk.afterPass = func() { h.passes <- struct{}{} }
	b, err := newBitmap(store, testArray, testSlot, h.size, h.cfg, hk)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.b = b
	t.Cleanup(func() { _ = b.Close() })
	return h
}

func (h *harness) flush() error {
	h.flushes.Add(1)
	h.mu.Lock()
	h.events = append(h.events, event{kind: "flush"})
	err, fn := h.flushErr, h.onFlush
	h.mu.Unlock()
	if fn != nil {
		fn()
	}
	return err
}

func (h *harness) recordSync(del bool, keys [][]byte) {
	ev := event{kind: "mark"}
	if del {
		ev.kind = "clear"
	}
	for _, k := range keys {
		d, err := decodeKey(k)
		if err != nil || d.Kind != kindDirty {
			continue
		}
		ev.regions = append(ev.regions, d.Region)
	}
	if len(ev.regions) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, ev)
	for _, r := range ev.regions {
		if del {
			delete(h.synced, r)
		} else {
			h.synced[r] = true
		}
	}
}

// isSynced reports whether region r's mark was written by a store batch
// whose sync has returned, and not cleared since.
func (h *harness) isSynced(r uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.synced[r]
}

func (h *harness) takeEvents() []event {
	h.mu.Lock()
	defer h.mu.Unlock()
	ev := h.events
	h.events = nil
	return ev
}

// tick advances the clock by one clearer period and waits for the pass it
// triggers to finish.
func (h *harness) tick() {
	h.t.Helper()
	h.clk.Advance(h.cfg.ClearDelay / 4)
	select {
	case <-h.passes:
	case <-time.After(10 * time.Second):
		h.t.Fatal("clearer pass did not run")
	}
}

// idle advances past ClearDelay, tick by tick.
func (h *harness) idle() {
	h.t.Helper()
	for range 4 {
		h.tick()
	}
}

// write starts and ends a write.
func (h *harness) write(off, length int64) {
	h.t.Helper()
	end, err := h.b.StartWrite(off, length)
	if err != nil {
		h.t.Fatalf("StartWrite(%d, %d): %v", off, length, err)
	}
	end()
}

// stored returns the regions the store holds for the harness's slot.
func (h *harness) stored() []uint64 {
	h.t.Helper()
	d, err := h.store.Dirty(testArray, testSlot)
	if err != nil {
		h.t.Fatalf("store Dirty: %v", err)
	}
	return d
}

// checkConsistent fails unless the bitmap's dirty set equals the store's.
func (h *harness) checkConsistent() {
	h.t.Helper()
	if mem, disk := h.b.Dirty(), h.stored(); !slices.Equal(mem, disk) {
		h.t.Fatalf("bitmap says dirty %v, store holds %v", mem, disk)
	}
}

func regions(rs ...uint64) []uint64 { return rs }

// copyDir copies the regular files of from into a new directory to, as a
// crash would leave them: whatever the store's process had written,
// synced or not, minus the lock.
func copyDir(t testing.TB, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o750); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		if err := copyFile(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
