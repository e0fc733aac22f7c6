package bitmap

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// TestBitmapMatchesModel runs random sequences of writes starting and
// ending, clock ticks, degraded flips, resync clears and resync marks
// against a map-based model. After every step: the bitmap's dirty set
// equals the model's and the store's, and covers every region of every
// write that has not ended.
func TestBitmapMatchesModel(t *testing.T) {
	store, _ := openStore(t)
	n := 0
	rapid.Check(t, func(rt *rapid.T) {
		n++
		m := newModel(rt, store, fmt.Sprintf("model%d", n))
		defer m.close()
		rt.Repeat(map[string]func(*rapid.T){
			"start":         m.start,
			"end":           m.end,
			"tick":          m.tick,
			"degraded":      m.degraded,
			"clearRegions":  m.clearRegions,
			"markForResync": m.markForResync,
			"":              m.check,
		})
	})
}

const (
	modelRegions = 9
	modelSize    = (modelRegions-1)*rs64k + 4096
	modelDelay   = 4 * time.Second
	modelTick    = modelDelay / 4
)

type modelWrite struct {
	first, n uint64
	end      func()
}

type model struct {
	store  *Store
	array  string
	clk    *fakeClock
	passes chan struct{}
	b      *Bitmap

	now      time.Time
	dirty    map[uint64]bool
	pinned   map[uint64]bool
	active   map[uint64]int
	last     map[uint64]time.Time
	writes   []modelWrite
	isDegrad bool
}

func newModel(rt *rapid.T, store *Store, array string) *model {
	m := &model{
		store:  store,
		array:  array,
		clk:    newFakeClock(),
		passes: make(chan struct{}, 1),
		dirty:  make(map[uint64]bool),
		pinned: make(map[uint64]bool),
		active: make(map[uint64]int),
		last:   make(map[uint64]time.Time),
	}
	m.now = m.clk.Now()
	// Marks left by an earlier run are loaded pinned.
	initial := rapid.SliceOfDistinct(rapid.Uint64Range(0, modelRegions-1), rapid.ID[uint64]).Draw(rt, "initial")
	if err := store.Mark(array, 0, initial); err != nil {
		rt.Fatal(err)
	}
	for _, r := range initial {
		m.dirty[r], m.pinned[r] = true, true
	}
	cfg := Config{
		RegionSize: rs64k,
		ClearDelay: modelDelay,
		Clock:      m.clk,
		Flush:      func() error { return nil },
		Logger:     quietLogger(),
	}
	b, err := newBitmap(store, array, 0, modelSize, cfg, hooks{afterPass: func() { m.passes <- struct{}{} }})
	if err != nil {
		rt.Fatal(err)
	}
	m.b = b
	return m
}

func (m *model) close() {
	for _, w := range m.writes {
		w.end()
	}
	_ = m.b.Close()
}

func (m *model) start(rt *rapid.T) {
	off := rapid.Int64Range(0, modelSize-1).Draw(rt, "off")
	length := rapid.Int64Range(0, min(3*rs64k, modelSize-off)).Draw(rt, "length")
	end, err := m.b.StartWrite(off, length)
	if err != nil {
		rt.Fatalf("StartWrite(%d, %d): %v", off, length, err)
	}
	first, n := m.b.RegionsOf(off, length)
	for r := first; r < first+n; r++ {
		m.dirty[r] = true
		m.active[r]++
	}
	m.writes = append(m.writes, modelWrite{first, n, end})
}

func (m *model) end(rt *rapid.T) {
	if len(m.writes) == 0 {
		return // nothing in flight: ending a write is a no-op step
	}
	i := rapid.IntRange(0, len(m.writes)-1).Draw(rt, "write")
	w := m.writes[i]
	m.writes = slices.Delete(m.writes, i, i+1)
	w.end()
	for r := w.first; r < w.first+w.n; r++ {
		m.active[r]--
		m.last[r] = m.now
	}
}

func (m *model) tick(rt *rapid.T) {
	m.clk.Advance(modelTick)
	m.now = m.now.Add(modelTick)
	select {
	case <-m.passes:
	case <-time.After(10 * time.Second):
		rt.Fatal("clearer pass did not run")
	}
	if m.isDegrad {
		return
	}
	for r := range m.dirty {
		if m.active[r] == 0 && !m.pinned[r] && m.now.Sub(m.last[r]) >= modelDelay {
			delete(m.dirty, r)
		}
	}
}

func (m *model) degraded(rt *rapid.T) {
	m.isDegrad = rapid.Bool().Draw(rt, "degraded")
	m.b.SetDegraded(m.isDegrad)
}

func (m *model) clearRegions(rt *rapid.T) {
	rs := rapid.SliceOf(rapid.Uint64Range(0, modelRegions-1)).Draw(rt, "regions")
	err := m.b.ClearRegions(rs)
	if m.isDegrad {
		if !errors.Is(err, ErrDegraded) {
			rt.Fatalf("ClearRegions while degraded = %v, want ErrDegraded", err)
		}
		return
	}
	if err != nil {
		rt.Fatalf("ClearRegions(%v): %v", rs, err)
	}
	for _, r := range rs {
		if !m.dirty[r] {
			continue
		}
		delete(m.pinned, r)
		if m.active[r] == 0 {
			delete(m.dirty, r)
		}
	}
}

func (m *model) markForResync(rt *rapid.T) {
	rs := rapid.SliceOf(rapid.Uint64Range(0, modelRegions-1)).Draw(rt, "regions")
	if err := m.b.MarkForResync(rs); err != nil {
		rt.Fatalf("MarkForResync(%v): %v", rs, err)
	}
	for _, r := range rs {
		m.dirty[r], m.pinned[r] = true, true
		if m.active[r] == 0 && m.last[r].IsZero() {
			m.last[r] = m.now
		}
	}
}

func (m *model) check(rt *rapid.T) {
	want := slices.Sorted(maps.Keys(m.dirty))
	got := m.b.Dirty()
	if !slices.Equal(got, want) {
		rt.Fatalf("Dirty() = %v, model %v", got, want)
	}
	disk, err := m.store.Dirty(m.array, 0)
	if err != nil {
		rt.Fatal(err)
	}
	if !slices.Equal(disk, want) {
		rt.Fatalf("store holds %v, model %v", disk, want)
	}
	for _, w := range m.writes {
		for r := w.first; r < w.first+w.n; r++ {
			if !slices.Contains(got, r) {
				rt.Fatalf("region %d has a write in flight but is not dirty (%v)", r, got)
			}
		}
	}
	inFlight := 0 // zero-length writes touch nothing and are not counted
	for _, w := range m.writes {
		if w.n > 0 {
			inFlight++
		}
	}
	st := m.b.Stats()
	if st.Dirty != len(want) || st.InFlight != inFlight || st.Pinned != len(m.pinned) || st.Degraded != m.isDegrad {
		rt.Fatalf("stats %+v; model dirty %d, writes %d, pinned %d, degraded %v", st, len(want), inFlight, len(m.pinned), m.isDegrad)
	}
}
