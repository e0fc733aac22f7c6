package bitmap

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// checkFlushBeforeClears fails unless every clear event follows a flush
// with no mark or clear in between, i.e. each batch of clears was preceded
// by its own Flush.
func checkFlushBeforeClears(t *testing.T, events []event) {
	t.Helper()
	flushed := false
	for _, ev := range events {
		switch ev.kind {
		case "flush":
			flushed = true
		case "clear":
			if !flushed {
				t.Fatalf("clear of %v without a flush before it; events %+v", ev.regions, events)
			}
			flushed = false
		}
	}
}

func TestLazyClear(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(h *harness) (finish func())
		ticks     int      // clearer ticks after setup (4 = ClearDelay)
		wantDirty []uint64 // after the ticks
		wantFlush int64
	}{
		{
			name:      "idle region clears after ClearDelay",
			setup:     func(h *harness) func() { h.write(rs64k, 10); return nil },
			ticks:     4,
			wantDirty: nil,
			wantFlush: 1,
		},
		{
			name:      "not before ClearDelay",
			setup:     func(h *harness) func() { h.write(rs64k, 10); return nil },
			ticks:     3,
			wantDirty: regions(1),
			wantFlush: 0,
		},
		{
			name: "one flush and one batch for many regions",
			setup: func(h *harness) func() {
				h.write(0, 5*rs64k)
				h.write(10*rs64k, 1)
				return nil
			},
			ticks:     4,
			wantDirty: nil,
			wantFlush: 1,
		},
		{
			name: "a region with a write in flight never clears",
			setup: func(h *harness) func() {
				h.write(0, 1)
				end, err := h.b.StartWrite(2*rs64k-1, 2)
				if err != nil {
					h.t.Fatal(err)
				}
				return end
			},
			ticks:     40,
			wantDirty: regions(1, 2),
			wantFlush: 1,
		},
		{
			name: "a new write restarts the idle time",
			setup: func(h *harness) func() {
				h.write(0, 1)
				h.tick()
				h.tick()
				h.write(0, 1)
				return nil
			},
			ticks:     3,
			wantDirty: regions(0),
			wantFlush: 0,
		},
		{
			name: "degraded: nothing clears, nothing flushes",
			setup: func(h *harness) func() {
				h.write(0, 3*rs64k)
				h.b.SetDegraded(true)
				return nil
			},
			ticks:     40,
			wantDirty: regions(0, 1, 2),
			wantFlush: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			finish := tc.setup(h)
			for range tc.ticks {
				h.tick()
			}
			if got := h.stored(); !slices.Equal(got, tc.wantDirty) {
				t.Fatalf("store holds %v, want %v", got, tc.wantDirty)
			}
			h.checkConsistent()
			if n := h.flushes.Load(); n != tc.wantFlush {
				t.Fatalf("%d flushes, want %d", n, tc.wantFlush)
			}
			checkFlushBeforeClears(t, h.takeEvents())
			if finish != nil {
				finish()
			}
			// Whatever was held back clears once idle and not degraded.
			h.b.SetDegraded(false)
			h.idle()
			if got := h.stored(); len(got) != 0 {
				t.Fatalf("after the writes ended and %v idle, store holds %v", h.cfg.ClearDelay, got)
			}
			h.checkConsistent()
			checkFlushBeforeClears(t, h.takeEvents())
		})
	}
}

// Each way a write can race a clear keeps the write's mark on stable
// storage for as long as the write is in flight.
func TestWriteRacingClear(t *testing.T) {
	t.Run("write starts and ends during the flush", func(t *testing.T) {
		h := newHarness(t)
		h.write(rs64k, 1)
		h.mu.Lock()
		h.onFlush = func() { h.write(rs64k+5, 1) }
		h.mu.Unlock()
		h.idle()
		if got := h.stored(); !slices.Equal(got, regions(1)) {
			t.Fatalf("a region written during the flush was cleared: store holds %v", got)
		}
		h.mu.Lock()
		h.onFlush = nil
		h.mu.Unlock()
		h.idle()
		if got := h.stored(); len(got) != 0 {
			t.Fatalf("store holds %v after idling again", got)
		}
	})
	t.Run("write starts during the flush and stays in flight", func(t *testing.T) {
		h := newHarness(t)
		h.write(rs64k, 1)
		var end func()
		h.mu.Lock()
		h.onFlush = func() {
			if end == nil {
				var err error
				if end, err = h.b.StartWrite(rs64k, 1); err != nil {
					t.Error(err)
				}
			}
		}
		h.mu.Unlock()
		h.idle()
		h.idle()
		if got := h.stored(); !slices.Equal(got, regions(1)) {
			t.Fatalf("a region with a write in flight was cleared: store holds %v", got)
		}
		end()
		h.idle()
		if got := h.stored(); len(got) != 0 {
			t.Fatalf("store holds %v after the write ended and idled", got)
		}
	})
	t.Run("write arrives while the store clears", func(t *testing.T) {
		var armed atomic.Bool
		var once sync.Once
		gotWaiting := make(chan struct{})
		var h *harness
		writeDone := make(chan error, 1)
		h = newHarness(t, withHooks(func(hk *hooks) {
			hk.waiting = func() {
				if armed.Load() {
					once.Do(func() { close(gotWaiting) })
				}
			}
			hk.beforeClear = func() {
				if !armed.CompareAndSwap(false, true) {
					return
				}
				go func() {
					end, err := h.b.StartWrite(rs64k+100, 1)
					if err == nil {
						if !h.isSynced(1) {
							err = errors.New("StartWrite returned before the region was marked again")
						}
						end()
					}
					writeDone <- err
				}()
				<-gotWaiting // the write waits for this clear
			}
		}))
		h.write(rs64k, 1)
		h.idle()
		if err := <-writeDone; err != nil {
			t.Fatal(err)
		}
		events := h.takeEvents()
		kinds := make([]string, 0, len(events))
		for _, ev := range events {
			kinds = append(kinds, ev.kind)
		}
		if want := []string{"mark", "flush", "clear", "mark"}; !slices.Equal(kinds, want) {
			t.Fatalf("events %v, want %v", kinds, want)
		}
		if got := h.stored(); !slices.Equal(got, regions(1)) {
			t.Fatalf("store holds %v, want the re-marked region 1", got)
		}
		h.checkConsistent()
		if st := h.b.Stats(); st.Marks != 2 || st.Clears != 1 || st.Dirty != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("array degrades during the flush", func(t *testing.T) {
		h := newHarness(t)
		h.write(rs64k, 1)
		h.mu.Lock()
		h.onFlush = func() { h.b.SetDegraded(true) }
		h.mu.Unlock()
		h.idle()
		if got := h.stored(); !slices.Equal(got, regions(1)) {
			t.Fatalf("cleared although the array degraded during the flush: %v", got)
		}
	})
}

// syncBuffer is a bytes.Buffer for a logger written from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFlushFailureKeepsMarks(t *testing.T) {
	var logs syncBuffer
	h := newHarness(t, withConfig(func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) }))
	h.write(0, 2*rs64k)
	h.mu.Lock()
	h.flushErr = errors.New("member m1: EIO")
	h.mu.Unlock()
	h.idle()
	h.idle()
	if got := h.stored(); !slices.Equal(got, regions(0, 1)) {
		t.Fatalf("cleared after a failed flush: %v", got)
	}
	if !strings.Contains(logs.String(), "member m1: EIO") {
		t.Fatalf("failed flush not logged: %q", logs.String())
	}
	h.mu.Lock()
	h.flushErr = nil
	h.mu.Unlock()
	h.tick()
	if got := h.stored(); len(got) != 0 {
		t.Fatalf("store holds %v once flush works again", got)
	}
}

// A clear whose store batch fails forgets the regions in memory (their
// marks may be half gone) and logs it.
func TestClearStoreFailure(t *testing.T) {
	var logs syncBuffer
	var h *harness
	h = newHarness(t,
		withConfig(func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) }),
		withHooks(func(hk *hooks) { hk.beforeClear = func() { _ = h.store.Close() } }))
	h.write(0, 1)
	h.idle()
	if st := h.b.Stats(); st.Dirty != 0 || st.Clears != 0 {
		t.Fatalf("stats after a failed clear: %+v", st)
	}
	if !strings.Contains(logs.String(), "clearing idle regions failed") {
		t.Fatalf("failed clear not logged: %q", logs.String())
	}
	// The region is marked again by the next write, which fails here
	// because the store is gone.
	if _, err := h.b.StartWrite(0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("StartWrite = %v, want ErrClosed from the store", err)
	}
}

func TestClearRegions(t *testing.T) {
	h := newHarness(t)
	if err := h.b.MarkForResync(regions(0, 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	end, err := h.b.StartWrite(2*rs64k, 10) // region 2 busy
	if err != nil {
		t.Fatal(err)
	}
	h.takeEvents()

	if err := h.b.ClearRegions(regions(0, 2, 5)); err != nil {
		t.Fatal(err)
	}
	events := h.takeEvents()
	checkFlushBeforeClears(t, events)
	if len(events) != 2 || !slices.Equal(events[1].regions, regions(0)) {
		t.Fatalf("events %+v, want a flush and a clear of [0]", events)
	}
	if got := h.stored(); !slices.Equal(got, regions(1, 2, 3)) {
		t.Fatalf("store holds %v, want [1 2 3]", got)
	}
	if st := h.b.Stats(); st.Pinned != 2 {
		t.Fatalf("pinned %d, want 2 (region 2 unpinned although busy)", st.Pinned)
	}
	// The busy region, now unpinned, goes lazily once its write ends.
	end()
	h.idle()
	if got := h.stored(); !slices.Equal(got, regions(1, 3)) {
		t.Fatalf("store holds %v, want [1 3]", got)
	}

	// Degraded: refused, pins kept.
	h.b.SetDegraded(true)
	if err := h.b.ClearRegions(regions(1, 3)); !errors.Is(err, ErrDegraded) {
		t.Fatalf("ClearRegions while degraded = %v", err)
	}
	if st := h.b.Stats(); st.Pinned != 2 || st.Dirty != 2 {
		t.Fatalf("stats %+v", st)
	}
	h.b.SetDegraded(false)

	// A failing flush clears nothing and says why.
	h.mu.Lock()
	h.flushErr = errors.New("flush failed")
	h.mu.Unlock()
	if err := h.b.ClearRegions(regions(1, 3)); err == nil || !strings.Contains(err.Error(), "flush failed") {
		t.Fatalf("ClearRegions with a failing flush = %v", err)
	}
	if got := h.stored(); !slices.Equal(got, regions(1, 3)) {
		t.Fatalf("store holds %v, want [1 3]", got)
	}
}

func TestShutdown(t *testing.T) {
	tests := []struct {
		name      string
		degraded  bool
		flushErr  error
		wantKept  []uint64
		wantErr   bool
		wantFlush int64
	}{
		{"clears what is not pinned or busy", false, nil, regions(2, 5), false, 1},
		{"degraded keeps everything", true, nil, regions(0, 1, 2, 5), false, 0},
		{"failed flush keeps everything", false, errors.New("EIO"), regions(0, 1, 2, 5), true, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.write(0, 2*rs64k)                                   // regions 0, 1: idle
			if err := h.b.MarkForResync(regions(5)); err != nil { // pinned
				t.Fatal(err)
			}
			end, err := h.b.StartWrite(2*rs64k, 1) // region 2: busy
			if err != nil {
				t.Fatal(err)
			}
			h.b.SetDegraded(tc.degraded)
			h.mu.Lock()
			h.flushErr = tc.flushErr
			h.mu.Unlock()
			err = h.b.Shutdown()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Shutdown = %v, want error %v", err, tc.wantErr)
			}
			end()
			if got := h.stored(); !slices.Equal(got, tc.wantKept) {
				t.Fatalf("store keeps %v, want %v", got, tc.wantKept)
			}
			if n := h.flushes.Load(); n != tc.wantFlush {
				t.Fatalf("%d flushes, want %d", n, tc.wantFlush)
			}
			checkFlushBeforeClears(t, h.takeEvents())
			if _, err := h.b.StartWrite(0, 1); !errors.Is(err, ErrClosed) {
				t.Fatalf("StartWrite after Shutdown = %v", err)
			}
		})
	}
}

// onClearLog records Config.OnClear calls.
type onClearLog struct {
	mu    sync.Mutex
	calls [][]uint64
}

func (l *onClearLog) record(rs []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, slices.Clone(rs))
}

func (l *onClearLog) get() [][]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// TestManualClear: with ManualClear no clearer runs, so marks stay however
// long a region is idle, and go only through ClearRegions, which reports
// them to OnClear.
func TestManualClear(t *testing.T) {
	var log onClearLog
	h := newHarness(t, withConfig(func(c *Config) { c.ManualClear, c.OnClear = true, log.record }))
	h.clk.mu.Lock()
	tickers := len(h.clk.tickers)
	h.clk.mu.Unlock()
	if tickers != 0 {
		t.Fatalf("%d tickers with ManualClear, want none (no clearer)", tickers)
	}
	h.write(rs64k, 10)
	h.write(3*rs64k, 10)
	h.clk.Advance(100 * h.cfg.ClearDelay)
	if got := h.stored(); !slices.Equal(got, regions(1, 3)) {
		t.Fatalf("store holds %v, want [1 3]", got)
	}
	if err := h.b.ClearRegions(regions(3)); err != nil {
		t.Fatal(err)
	}
	if got := h.stored(); !slices.Equal(got, regions(1)) {
		t.Fatalf("store holds %v after ClearRegions([3]), want [1]", got)
	}
	checkFlushBeforeClears(t, h.takeEvents())
	if got := log.get(); len(got) != 1 || !slices.Equal(got[0], regions(3)) {
		t.Fatalf("OnClear calls %v, want [[3]]", got)
	}
}

// TestOnClear: the lazy clearer and Shutdown report what they cleared,
// after the store commit; failed clears report nothing.
func TestOnClear(t *testing.T) {
	var log onClearLog
	var h *harness
	h = newHarness(t, withConfig(func(c *Config) {
		c.OnClear = func(rs []uint64) {
			for _, r := range rs {
				if h.isSynced(r) {
					t.Errorf("OnClear(%v) before the clear of %d was synced", rs, r)
				}
			}
			log.record(rs)
		}
	}))
	h.write(0, 2*rs64k)
	h.idle()
	if got := log.get(); len(got) != 1 || !slices.Equal(got[0], regions(0, 1)) {
		t.Fatalf("OnClear calls %v after the lazy clear, want [[0 1]]", got)
	}
	h.mu.Lock()
	h.flushErr = errors.New("flush failed")
	h.mu.Unlock()
	h.write(4*rs64k, 1)
	h.idle()
	if got := log.get(); len(got) != 1 {
		t.Fatalf("OnClear called after a failed clear: %v", got)
	}
	h.mu.Lock()
	h.flushErr = nil
	h.mu.Unlock()
	if err := h.b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if got := log.get(); len(got) != 2 || !slices.Equal(got[1], regions(4)) {
		t.Fatalf("OnClear calls %v after Shutdown, want a second call [4]", got)
	}
}
