package bitmap

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

func TestConfigValidate(t *testing.T) {
	flush := func() error { return nil }
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Flush: flush}, true},
		{"64 KiB", Config{RegionSize: 64 << 10, Flush: flush}, true},
		{"1 TiB", Config{RegionSize: 1 << 40, Flush: flush}, true},
		{"not a power of two", Config{RegionSize: 3 << 20, Flush: flush}, false},
		{"too small", Config{RegionSize: 32 << 10, Flush: flush}, false},
		{"too big", Config{RegionSize: 1 << 41, Flush: flush}, false},
		{"negative region", Config{RegionSize: -4096, Flush: flush}, false},
		{"negative delay", Config{ClearDelay: -time.Second, Flush: flush}, false},
		{"no flush", Config{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			err := cfg.validate()
			if tc.ok != (err == nil) {
				t.Fatalf("validate = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && (cfg.RegionSize == 0 || cfg.ClearDelay == 0 || cfg.Clock == nil || cfg.Logger == nil) {
				t.Fatalf("defaults not filled in: %+v", cfg)
			}
		})
	}
	if d := DefaultConfig(); d.RegionSize != 4<<20 || d.ClearDelay != 5*time.Second {
		t.Fatalf("DefaultConfig = %+v", d)
	}
}

func TestNewRejects(t *testing.T) {
	store, _ := openStore(t)
	cfg := Config{Flush: func() error { return nil }, Logger: quietLogger()}
	for _, tc := range []struct {
		name  string
		array string
		slot  int
		size  int64
	}{
		{"bad array name", "a/b", 0, 1 << 30},
		{"negative slot", "a", -1, 1 << 30},
		{"zero size", "a", 0, 0},
		{"negative size", "a", 0, -5},
	} {
		if b, err := New(store, tc.array, tc.slot, tc.size, cfg); err == nil {
			b.Close()
			t.Errorf("%s: New accepted", tc.name)
		}
	}
}

// Group commit, deterministically: while the first mark's sync is held,
// every other writer queues; all of them then share the second sync.
func TestGroupCommitShared(t *testing.T) {
	const writers = 32
	var waiting atomic.Int32
	allWaiting := make(chan struct{})
	h := newHarness(t, withHooks(func(hk *hooks) {
		hk.waiting = func() {
			if waiting.Add(1) == writers {
				close(allWaiting)
			}
		}
	}))
	first := true
	h.store.afterSync = func(del bool, keys [][]byte) {
		if first {
			first = false
			<-allWaiting
		}
		h.recordSync(del, keys)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			end, err := h.b.StartWrite(int64(i%17)*rs64k, 1)
			if err != nil {
				errs <- err
				return
			}
			end()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := h.b.Stats()
	if st.MarkSyncs != 2 || st.Dirty != 17 || st.Marks != 17 {
		t.Fatalf("%d writers on 17 regions: %+v; want 2 mark syncs, 17 marks", writers, st)
	}
	h.checkConsistent()
}

// Group commit under free-running concurrency: many writers on distinct
// regions need far fewer syncs than writes.
func TestGroupCommitConcurrent(t *testing.T) {
	const writers = 256
	h := newHarness(t, withSize(writers*rs64k))
	start := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range writers {
		wg.Go(func() {
			<-start
			end, err := h.b.StartWrite(int64(i)*rs64k+100, 4096)
			if err != nil {
				failed.Add(1)
				return
			}
			if !h.isSynced(uint64(i)) {
				failed.Add(1)
			}
			end()
		})
	}
	close(start)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d writers failed or returned before their mark was synced", failed.Load())
	}
	st := h.b.Stats()
	t.Logf("%d writers on distinct regions: %d mark syncs", writers, st.MarkSyncs)
	if st.Marks != writers || st.MarkSyncs > writers/4 {
		t.Fatalf("%+v: want %d marks in at most %d syncs", st, writers, writers/4)
	}
}

// A region already marked costs no store access.
func TestStartWriteOnDirtyRegionSkipsStore(t *testing.T) {
	h := newHarness(t)
	h.write(rs64k, 10)
	before := h.b.Stats()
	for i := range 100 {
		h.write(rs64k+int64(i)*100, 100)
	}
	after := h.b.Stats()
	if after.MarkSyncs != before.MarkSyncs || after.Marks != before.Marks {
		t.Fatalf("rewriting a dirty region synced: before %+v after %+v", before, after)
	}
}

// Once StartWrite returned, the mark survives closing and reopening the
// store, and it survives a crash: a copy of the directory taken at that
// moment (what a killed process leaves) holds it too.
func TestMarkDurable(t *testing.T) {
	h := newHarness(t)
	end, err := h.b.StartWrite(3*rs64k-1, 2)
	if err != nil {
		t.Fatal(err)
	}
	crash := t.TempDir() + "/crash"
	copyDir(t, h.dir, crash)
	end()

	cs, err := OpenStore(crash, StoreConfig{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("open crash copy: %v", err)
	}
	got, err := cs.Dirty(testArray, testSlot)
	cs.Close()
	if err != nil || !slices.Equal(got, regions(2, 3)) {
		t.Fatalf("crash copy holds %v, %v; want [2 3]", got, err)
	}

	if err := h.b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.store.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(h.dir, StoreConfig{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.Dirty(testArray, testSlot); err != nil || !slices.Equal(got, regions(2, 3)) {
		t.Fatalf("reopened store holds %v, %v; want [2 3]", got, err)
	}
}

// Marks found at New are pinned: the clearer leaves them, even after new
// writes to them ended long ago, until ClearRegions.
func TestLoadedMarksPinned(t *testing.T) {
	store, _ := openStore(t)
	if err := store.Mark(testArray, testSlot, regions(1, 5, 16)); err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	passes := make(chan struct{}, 1)
	cfg := Config{RegionSize: rs64k, ClearDelay: 4 * time.Second, Clock: clk, Flush: func() error { return nil }, Logger: quietLogger()}
	b, err := newBitmap(store, testArray, testSlot, testSize, cfg, hooks{afterPass: func() { passes <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := b.Dirty(); !slices.Equal(got, regions(1, 5, 16)) {
		t.Fatalf("loaded %v", got)
	}
	if st := b.Stats(); st.Dirty != 3 || st.Pinned != 3 || st.Marks != 0 {
		t.Fatalf("stats %+v", st)
	}
	end, err := b.StartWrite(5*rs64k, 10)
	if err != nil {
		t.Fatal(err)
	}
	end()
	for range 12 {
		clk.Advance(time.Second)
		<-passes
	}
	if got, _ := store.Dirty(testArray, testSlot); !slices.Equal(got, regions(1, 5, 16)) {
		t.Fatalf("pinned marks cleared: store holds %v", got)
	}
	if err := b.ClearRegions(regions(5, 16)); err != nil {
		t.Fatal(err)
	}
	if got, _ := store.Dirty(testArray, testSlot); !slices.Equal(got, regions(1)) {
		t.Fatalf("after ClearRegions store holds %v, want [1]", got)
	}
	if st := b.Stats(); st.Dirty != 1 || st.Pinned != 1 || st.Clears != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGeometryMismatch(t *testing.T) {
	store, _ := openStore(t)
	cfg := Config{RegionSize: rs64k, Flush: func() error { return nil }, Logger: quietLogger()}
	b, err := New(store, testArray, 0, testSize, cfg)
	if err != nil {
		t.Fatal(err)
	}
	end, err := b.StartWrite(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	end()
	b.Close()

	// Another region size while marks exist: refused.
	cfg2 := cfg
	cfg2.RegionSize = 2 * rs64k
	if b, err := New(store, testArray, 1, testSize, cfg2); !errors.Is(err, ErrGeometry) {
		if err == nil {
			b.Close()
		}
		t.Fatalf("New with another region size = %v, want ErrGeometry", err)
	}
	// A smaller array than the marks: refused.
	if err := store.Mark(testArray, 0, regions(16)); err != nil {
		t.Fatal(err)
	}
	if b, err := New(store, testArray, 0, 4*rs64k, cfg); !errors.Is(err, ErrGeometry) {
		if err == nil {
			b.Close()
		}
		t.Fatalf("New on a smaller array = %v, want ErrGeometry", err)
	}
	// Once the array's marks are dropped, any region size goes.
	if err := store.Drop(testArray); err != nil {
		t.Fatal(err)
	}
	b, err = New(store, testArray, 1, testSize, cfg2)
	if err != nil {
		t.Fatalf("New after Drop: %v", err)
	}
	b.Close()
	if rs, ok, err := store.regionSize(testArray); err != nil || !ok || rs != 2*rs64k {
		t.Fatalf("recorded region size %d %v %v", rs, ok, err)
	}
}

func TestSlotInUse(t *testing.T) {
	h := newHarness(t)
	if b, err := New(h.store, testArray, testSlot, testSize, h.cfg); !errors.Is(err, ErrInUse) {
		if err == nil {
			b.Close()
		}
		t.Fatalf("second New = %v, want ErrInUse", err)
	}
	other, err := New(h.store, testArray, testSlot+1, testSize, h.cfg)
	if err != nil {
		t.Fatalf("another slot: %v", err)
	}
	other.Close()
	h.b.Close()
	again, err := New(h.store, testArray, testSlot, testSize, h.cfg)
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	again.Close()
}

// A failed mark fails the write, leaves nothing in flight and is retried
// by the next write.
func TestMarkFailure(t *testing.T) {
	h := newHarness(t)
	h.write(0, 1)
	if err := h.store.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := h.b.StartWrite(4*rs64k, 10)
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "mark regions 4-4") {
		t.Fatalf("StartWrite on a closed store = %v", err)
	}
	st := h.b.Stats()
	if st.InFlight != 0 || st.Dirty != 1 {
		t.Fatalf("after a failed mark: %+v", st)
	}
	if got := h.b.Dirty(); !slices.Equal(got, regions(0)) {
		t.Fatalf("Dirty() = %v", got)
	}
	// Writes to the marked region still go ahead: no store access.
	h.write(10, 10)
}

func TestClosedBitmap(t *testing.T) {
	h := newHarness(t)
	h.write(0, 1)
	if err := h.b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := h.b.StartWrite(0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("StartWrite after Close = %v", err)
	}
	if err := h.b.ClearRegions(regions(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("ClearRegions after Close = %v", err)
	}
	if err := h.b.MarkForResync(regions(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("MarkForResync after Close = %v", err)
	}
	// Close keeps the marks.
	if got := h.stored(); !slices.Equal(got, regions(0)) {
		t.Fatalf("store after Close holds %v", got)
	}
}

// Close while writers wait for their mark: they fail with ErrClosed or
// succeed with a durable mark; none hangs.
func TestCloseWithWaitingWriters(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, withSize(64*rs64k))
	var once sync.Once
	h.store.afterSync = func(del bool, keys [][]byte) {
		once.Do(func() { <-release })
		h.recordSync(del, keys)
	}
	var wg sync.WaitGroup
	results := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			end, err := h.b.StartWrite(int64(i)*rs64k, 1)
			if err == nil {
				if !h.isSynced(uint64(i)) {
					err = errors.New("returned before its mark was synced")
				}
				end()
			}
			results <- err
		})
	}
	closed := make(chan error)
	go func() { closed <- h.b.Close() }()
	close(release)
	wg.Wait()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	close(results)
	for err := range results {
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Fatalf("writer: %v", err)
		}
	}
}

func TestMarkForResync(t *testing.T) {
	h := newHarness(t)
	if err := h.b.MarkForResync(regions(3, 3, 7)); err != nil {
		t.Fatal(err)
	}
	if got := h.stored(); !slices.Equal(got, regions(3, 7)) {
		t.Fatalf("store holds %v", got)
	}
	h.idle()
	h.idle()
	if got := h.stored(); !slices.Equal(got, regions(3, 7)) {
		t.Fatalf("clearer removed resync marks: %v", got)
	}
	if st := h.b.Stats(); st.Pinned != 2 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
	if err := h.b.MarkForResync(regions(17)); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("MarkForResync beyond the array = %v", err)
	}
	if err := h.b.ClearRegions(regions(0, 17)); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("ClearRegions beyond the array = %v", err)
	}
}
