package bitmap

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"slices"
	"sync"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// Region sizes and the default clear delay.
const (
	// DefaultRegionSize is the default number of bytes one mark covers.
	DefaultRegionSize = 4 << 20
	// MinRegionSize is the smallest region size.
	MinRegionSize = 64 << 10
	// MaxRegionSize is the largest region size.
	MaxRegionSize = 1 << 40
	// DefaultClearDelay is how long a region stays marked after its last
	// write by default.
	DefaultClearDelay = 5 * time.Second
)

// Config configures a Bitmap. DefaultConfig gives the defaults; zero fields
// of a Config passed to New take them, except Flush, which is required.
type Config struct {
	// RegionSize is the number of bytes of the array one mark covers: a
	// power of two from MinRegionSize (64 KiB) to MaxRegionSize. Default
	// DefaultRegionSize (4 MiB). It is fixed for the life of an array: the
	// store records it, and New refuses marks made with another size
	// (ErrGeometry).
	RegionSize int64
	// ClearDelay is how long a region must be idle (no write in flight
	// and none ended within ClearDelay) before the clearer removes its
	// mark. Default DefaultClearDelay (5 s); must be positive. The clearer
	// looks every ClearDelay/4, so a mark goes between 1 and 1.25
	// ClearDelay after the last write to its region ended.
	ClearDelay time.Duration
	// Clock is the time source for last-use stamps and the clearer's
	// ticks. Default RealClock().
	Clock Clock
	// Flush makes every member write that returned before the call
	// durable (the array's Flush). It is called once before each batch of
	// clears, because a mark may only go once the data it protects is on
	// stable storage; when it fails nothing is cleared. Required.
	Flush func() error
	// Logger receives warnings (a failed clear). Default slog.Default().
	Logger *slog.Logger
	// ManualClear turns the clearer off: marks go only through
	// ClearRegions (and Shutdown). A member host uses it: it clears a
	// writer's marks only when the writer asks.
	ManualClear bool
	// OnClear, if set, is called with the regions whose marks a clear
	// (the clearer, ClearRegions or Shutdown) has just removed from the
	// store, after the store commit and outside the Bitmap's lock. The
	// array uses it to forward clears to its member hosts. It must not
	// call back into the Bitmap.
	OnClear func(regions []uint64)
}

// DefaultConfig returns a Config with every default filled in and no
// Flush.
func DefaultConfig() Config {
	return Config{
		RegionSize: DefaultRegionSize,
		ClearDelay: DefaultClearDelay,
		Clock:      RealClock(),
		Logger:     slog.Default(),
	}
}

func (c *Config) validate() error {
	def := DefaultConfig()
	if c.RegionSize == 0 {
		c.RegionSize = def.RegionSize
	}
	if c.ClearDelay == 0 {
		c.ClearDelay = def.ClearDelay
	}
	if c.Clock == nil {
		c.Clock = def.Clock
	}
	if c.Logger == nil {
		c.Logger = def.Logger
	}
	switch {
	case !validRegionSize(c.RegionSize):
		return fmt.Errorf("bitmap: region size %d is not a power of two from %d to %d", c.RegionSize, MinRegionSize, int64(MaxRegionSize))
	case c.ClearDelay < 0:
		return fmt.Errorf("bitmap: negative clear delay %v", c.ClearDelay)
	case c.Flush == nil:
		return errors.New("bitmap: Config.Flush is required")
	}
	return nil
}

// Stats are a Bitmap's counters, for status and metrics.
type Stats struct {
	// Regions is the number of regions of the array.
	Regions uint64
	// Dirty is the number of regions marked on stable storage.
	Dirty int
	// Pinned is the number of dirty regions kept until ClearRegions
	// clears them: those found at New and those added by MarkForResync.
	Pinned int
	// InFlight is the number of writes between StartWrite and their end.
	InFlight int
	// Degraded reports SetDegraded(true).
	Degraded bool
	// Marks and Clears count regions marked and cleared since New.
	Marks, Clears uint64
	// MarkSyncs counts group commits: store batches that marked regions,
	// each with one sync (more only for a batch bigger than a badger
	// transaction; see StoreConfig.MemTableSize). ClearSyncs counts the
	// same for clears.
	MarkSyncs, ClearSyncs uint64
	// Flushes counts calls of Config.Flush made before clearing.
	Flushes uint64
}

// Bitmap is the write-intent bitmap of one array for one node slot: the
// in-memory tracker of which regions have writes in flight, backed by the
// durable marks in a Store. It is safe for concurrent use.
type Bitmap struct {
	store    *Store
	array    string
	slot     int
	size     int64
	shift    uint
	nregions uint64
	cfg      Config
	log      *slog.Logger
	hooks    hooks

	mu       sync.Mutex
	regions  map[uint64]*region
	next     *batch   // the batch new marks join
	pending  []uint64 // regions queued in next
	spare    []uint64 // pending's previous backing array, for reuse
	degraded bool
	closed   bool
	st       Stats // counters; Regions, Dirty, Pinned, InFlight, Degraded kept live

	kick chan struct{} // wakes the committer; capacity 1
	stop chan struct{} // closed by Close
	bg   sync.WaitGroup
	ops  sync.WaitGroup // ClearRegions calls in progress
}

// region is the state of one region that is marked, being marked, or has
// writes in flight. A region absent from Bitmap.regions is clean.
//
// A writer may go ahead when durable && batch == nil. With batch != nil a
// mark (durable false) or a clear (durable true) of the region is being
// committed and the writer waits for batch.done; with !durable && batch ==
// nil the writer queues a mark.
type region struct {
	inflight int32     // writes between StartWrite and end
	durable  bool      // the mark is on stable storage
	pinned   bool      // kept until ClearRegions (implies durable)
	gen      uint64    // bumped by every StartWrite
	batch    *batch    // mark or clear in progress
	last     time.Time // when the last write ended
	end      func()    // ends a write of this region alone; made once
}

// batch is one store commit that waiters wait for.
type batch struct {
	done chan struct{}
	err  error // set before done is closed; mark batches only
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

// hooks let tests observe and interleave with the background work.
type hooks struct {
	afterPass   func() // after every clearer tick
	beforeClear func() // after the post-flush re-check, before the store clear
	waiting     func() // before StartWrite blocks on a batch
}

// New returns the bitmap of (array, slot) for an array of arraySize bytes,
// loading the marks the store holds for it. Loaded marks are pinned: they
// stay until the caller resyncs the regions and calls ClearRegions, and the
// clearer never removes them. Marks beyond the end of the array, or made
// with another region size, fail with ErrGeometry. Only one Bitmap per
// (array, slot) may be open on a Store (ErrInUse). New starts two
// goroutines (committer and clearer) that Close stops.
func New(store *Store, array string, slot int, arraySize int64, cfg Config) (*Bitmap, error) {
	return newBitmap(store, array, slot, arraySize, cfg, hooks{})
}

func newBitmap(store *Store, array string, slot int, arraySize int64, cfg Config, h hooks) (*Bitmap, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := checkKey(array, slot); err != nil {
		return nil, err
	}
	if arraySize <= 0 {
		return nil, fmt.Errorf("bitmap: array %s: size %d is not positive", array, arraySize)
	}
	if err := store.claim(array, slot); err != nil {
		return nil, err
	}
	b, err := load(store, array, slot, arraySize, cfg, h)
	if err != nil {
		store.release(array, slot)
		return nil, err
	}
	b.bg.Add(1)
	go b.commitLoop()
	if !cfg.ManualClear {
		ticker := cfg.Clock.NewTicker(max(cfg.ClearDelay/4, time.Millisecond))
		b.bg.Add(1)
		go b.clearLoop(ticker)
	}
	return b, nil
}

func load(store *Store, array string, slot int, arraySize int64, cfg Config, h hooks) (*Bitmap, error) {
	rs, ok, err := store.regionSize(array)
	if err != nil {
		return nil, err
	}
	if !ok || rs != cfg.RegionSize {
		if ok {
			slots, err := store.Slots(array)
			if err != nil {
				return nil, err
			}
			if len(slots) > 0 {
				return nil, fmt.Errorf("bitmap: array %s: marks of slots %v were made with %d-byte regions, not %d: %w", array, slots, rs, cfg.RegionSize, ErrGeometry)
			}
		}
		if err := store.setRegionSize(array, cfg.RegionSize); err != nil {
			return nil, err
		}
	}
	dirty, err := store.Dirty(array, slot)
	if err != nil {
		return nil, err
	}
	shift := uint(bits.TrailingZeros64(uint64(cfg.RegionSize)))
	b := &Bitmap{
		store:    store,
		array:    array,
		slot:     slot,
		size:     arraySize,
		shift:    shift,
		nregions: uint64((arraySize-1)>>shift) + 1,
		cfg:      cfg,
		log:      cfg.Logger.With("array", array, "slot", slot),
		hooks:    h,
		regions:  make(map[uint64]*region, len(dirty)),
		next:     newBatch(),
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}
	b.st.Regions = b.nregions
	now := cfg.Clock.Now()
	for _, r := range dirty {
		if r >= b.nregions {
			return nil, fmt.Errorf("bitmap: array %s slot %d: mark of region %d beyond the array's %d regions: %w", array, slot, r, b.nregions, ErrGeometry)
		}
		st := b.newRegion()
		st.durable, st.pinned, st.last = true, true, now
		b.regions[r] = st
	}
	b.st.Dirty, b.st.Pinned = len(dirty), len(dirty)
	return b, nil
}

func (b *Bitmap) newRegion() *region {
	st := &region{}
	st.end = func() { b.endOne(st) }
	return st
}

// RegionSize returns the number of bytes one region covers.
func (b *Bitmap) RegionSize() int64 { return b.cfg.RegionSize }

// NumRegions returns the number of regions of the array; the last one may
// be partial.
func (b *Bitmap) NumRegions() uint64 { return b.nregions }

// Region returns the region holding byte off (off >= 0).
func (b *Bitmap) Region(off int64) uint64 { return uint64(off) >> b.shift }

// RegionRange returns the byte range of region r: the last region ends at
// the end of the array, and a region beyond it has length 0.
func (b *Bitmap) RegionRange(r uint64) (off, length int64) {
	if r >= b.nregions {
		return b.size, 0
	}
	off = int64(r << b.shift)
	return off, min(b.cfg.RegionSize, b.size-off)
}

// RegionsOf returns the regions an IO of length bytes at off touches:
// first, first+1, ..., first+n-1. A zero-length IO touches none (n = 0).
// The range is not checked against the array size.
func (b *Bitmap) RegionsOf(off, length int64) (first, n uint64) {
	if length <= 0 {
		return uint64(off) >> b.shift, 0
	}
	first = uint64(off) >> b.shift
	return first, (uint64(off+length-1) >> b.shift) - first + 1
}

// span is a set of regions: a run first..first+n-1, or a list.
type span struct {
	first, n uint64
	list     []uint64
}

func (s span) at(i uint64) uint64 {
	if s.list != nil {
		return s.list[i]
	}
	return s.first + i
}

func noEnd() {}

// StartWrite must be called before a write of length bytes at off is sent
// to any member. It returns once every region the write touches is
// durably marked: at once when they all are already (no store access, no
// allocation for a write within one region), otherwise after the group
// commit that marks them, which it shares with every StartWrite waiting at
// the same time. The caller must call end exactly once when the write has
// returned (successfully or not); until then the regions are not cleared.
//
// A range beyond the array fails with blockdev.ErrOutOfRange; a store
// failure fails the call and leaves no write accounted. A zero-length
// write marks nothing.
func (b *Bitmap) StartWrite(off, length int64) (end func(), err error) {
	if err := blockdev.CheckRange(off, length, b.size); err != nil {
		return nil, fmt.Errorf("bitmap %s: start write: %w", b.array, err)
	}
	if length == 0 {
		return noEnd, nil
	}
	first, n := b.RegionsOf(off, length)
	sp := span{first: first, n: n}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("bitmap %s: start write: %w", b.array, ErrClosed)
	}
	var st *region
	for i := range sp.n {
		st = b.acquire(sp.at(i))
	}
	b.st.InFlight++
	if err := b.waitDurable(sp); err != nil {
		b.releaseSpan(sp)
		b.st.InFlight--
		b.mu.Unlock()
		return nil, fmt.Errorf("bitmap %s: mark regions %d-%d before writing %d bytes at %d: %w", b.array, first, first+n-1, length, off, err)
	}
	b.mu.Unlock()
	if n == 1 {
		return st.end, nil
	}
	return func() { b.endSpan(first, n) }, nil
}

// acquire counts a write on region r, creating its state. Called under mu.
func (b *Bitmap) acquire(r uint64) *region {
	st := b.regions[r]
	if st == nil {
		st = b.newRegion()
		b.regions[r] = st
	}
	st.inflight++
	st.gen++
	return st
}

// releaseSpan undoes acquire after a failed mark. Called under mu.
func (b *Bitmap) releaseSpan(sp span) {
	for i := range sp.n {
		r := sp.at(i)
		st := b.regions[r]
		st.inflight--
		if st.inflight == 0 && !st.durable && st.batch == nil {
			delete(b.regions, r)
		}
	}
}

// waitDurable returns, with mu held as on entry, once every region of sp
// is durably marked and not being cleared. Regions without a mark join the
// committer's next batch.
func (b *Bitmap) waitDurable(sp span) error {
	for {
		var wait *batch
		queued := false
		for i := range sp.n {
			r := sp.at(i)
			st := b.regions[r]
			if st.durable && st.batch == nil {
				continue
			}
			if st.batch == nil {
				if b.closed {
					return ErrClosed
				}
				st.batch = b.next
				b.pending = append(b.pending, r)
				queued = true
			}
			if wait == nil {
				wait = st.batch
			}
		}
		if wait == nil {
			return nil
		}
		if queued {
			select {
			case b.kick <- struct{}{}:
			default:
			}
		}
		b.mu.Unlock()
		if b.hooks.waiting != nil {
			b.hooks.waiting()
		}
		<-wait.done
		b.mu.Lock()
		if wait.err != nil {
			return wait.err
		}
	}
}

// endOne ends a write within one region.
func (b *Bitmap) endOne(st *region) {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	b.endLocked(st, now)
	b.st.InFlight--
	b.mu.Unlock()
}

// endSpan ends a write over n regions from first.
func (b *Bitmap) endSpan(first, n uint64) {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	for r := first; r < first+n; r++ {
		b.endLocked(b.regions[r], now)
	}
	b.st.InFlight--
	b.mu.Unlock()
}

func (b *Bitmap) endLocked(st *region, now time.Time) {
	if st == nil || st.inflight <= 0 {
		panic("bitmap: write ended twice (end called more than once)")
	}
	st.inflight--
	if now.After(st.last) {
		st.last = now
	}
}

// commitLoop is the committer: it takes the pending marks as one batch,
// writes them with one store sync and releases every waiter of the batch.
func (b *Bitmap) commitLoop() {
	defer b.bg.Done()
	for {
		select {
		case <-b.kick:
			b.commit()
		case <-b.stop:
			b.mu.Lock()
			for _, r := range b.pending {
				b.regions[r].batch = nil
			}
			bt := b.next
			b.pending, b.next = nil, nil
			b.mu.Unlock()
			bt.err = ErrClosed
			close(bt.done)
			return
		}
	}
}

func (b *Bitmap) commit() {
	b.mu.Lock()
	if len(b.pending) == 0 {
		b.mu.Unlock()
		return
	}
	bt, regs := b.next, b.pending
	b.next, b.pending, b.spare = newBatch(), b.spare[:0], nil
	b.mu.Unlock()

	err := b.store.Mark(b.array, b.slot, regs)

	b.mu.Lock()
	for _, r := range regs {
		st := b.regions[r]
		st.batch = nil
		switch {
		case err == nil:
			st.durable = true
		case st.inflight == 0:
			// Its writers gave up waiting on another batch that failed.
			delete(b.regions, r)
		}
	}
	if err == nil {
		b.st.Dirty += len(regs)
		b.st.Marks += uint64(len(regs))
		b.st.MarkSyncs++
	}
	if b.spare == nil {
		b.spare = regs
	}
	b.mu.Unlock()
	bt.err = err
	close(bt.done)
}

// clearLoop is the clearer: every tick it clears the idle regions.
func (b *Bitmap) clearLoop(t Ticker) {
	defer b.bg.Done()
	defer t.Stop()
	for {
		select {
		case <-t.C():
			b.clearIdle()
			if b.hooks.afterPass != nil {
				b.hooks.afterPass()
			}
		case <-b.stop:
			return
		}
	}
}

// candidate is a region selected for clearing, with the generation it had
// when it was selected.
type candidate struct {
	r   uint64
	st  *region
	gen uint64
}

// clearIdle clears the regions that are unpinned, have no write in flight
// and whose last write ended at least ClearDelay ago.
func (b *Bitmap) clearIdle() {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	if b.degraded || b.closed || b.st.Dirty == b.st.Pinned {
		b.mu.Unlock()
		return
	}
	var cands []candidate
	for r, st := range b.regions {
		if st.durable && st.batch == nil && !st.pinned && st.inflight == 0 && now.Sub(st.last) >= b.cfg.ClearDelay {
			cands = append(cands, candidate{r, st, st.gen})
		}
	}
	b.mu.Unlock()
	_, err := b.clear(cands)
	if err == nil || errors.Is(err, ErrDegraded) {
		return
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if !closed {
		b.log.Warn("bitmap: clearing idle regions failed", "err", err)
	}
}

// clear flushes the array, then clears those candidates that saw no write
// since they were selected, in one store batch. Writes arriving during the
// store batch wait for it and mark their region again. It returns how many
// regions it cleared.
func (b *Bitmap) clear(cands []candidate) (int, error) {
	if len(cands) == 0 {
		return 0, nil
	}
	b.mu.Lock()
	b.st.Flushes++
	b.mu.Unlock()
	if err := b.cfg.Flush(); err != nil {
		return 0, fmt.Errorf("flush before clearing: %w", err)
	}
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		return 0, ErrClosed
	case b.degraded:
		b.mu.Unlock()
		return 0, ErrDegraded
	}
	cb := newBatch()
	keep := cands[:0]
	regs := make([]uint64, 0, len(cands))
	for _, c := range cands {
		st := b.regions[c.r]
		if st != c.st || st.gen != c.gen || st.inflight != 0 || st.batch != nil || !st.durable || st.pinned {
			continue
		}
		st.batch = cb
		keep = append(keep, c)
		regs = append(regs, c.r)
	}
	b.mu.Unlock()
	slices.Sort(regs) // the store and OnClear see regions in order
	if len(keep) == 0 {
		return 0, nil
	}
	if b.hooks.beforeClear != nil {
		b.hooks.beforeClear()
	}

	err := b.store.Clear(b.array, b.slot, regs)

	// Whatever the outcome the regions are no longer known to be marked:
	// after a failure some marks may be gone. A region with waiting
	// writers is marked again by them; the others are forgotten (a mark
	// that survived a failed clear is only an extra resync).
	b.mu.Lock()
	for _, c := range keep {
		c.st.batch = nil
		c.st.durable = false
		if c.st.inflight == 0 {
			delete(b.regions, c.r)
		}
	}
	b.st.Dirty -= len(keep)
	if err == nil {
		b.st.Clears += uint64(len(keep))
		b.st.ClearSyncs++
	}
	b.mu.Unlock()
	close(cb.done)
	if err != nil {
		return 0, err
	}
	if b.cfg.OnClear != nil {
		b.cfg.OnClear(regs)
	}
	return len(keep), nil
}

// SetDegraded tells the bitmap whether the array is degraded. While it is,
// nothing is cleared, so a returning member needs only the dirty regions.
// Call SetDegraded(true) before the Flush that ignored the failed member
// returns (a clear re-checks the flag after its Flush), and
// SetDegraded(false) only once the array is whole again (after rebuild).
func (b *Bitmap) SetDegraded(degraded bool) {
	b.mu.Lock()
	b.degraded = degraded
	b.st.Degraded = degraded
	b.mu.Unlock()
}

// Dirty returns the regions durably marked, sorted. Regions whose mark is
// still being committed are not included.
func (b *Bitmap) Dirty() []uint64 {
	b.mu.Lock()
	out := make([]uint64, 0, b.st.Dirty)
	for r, st := range b.regions {
		if st.durable {
			out = append(out, r)
		}
	}
	b.mu.Unlock()
	slices.Sort(out)
	return out
}

// ClearRegions is called by resync once it has made regions consistent.
// It unpins them and, after one Config.Flush, clears in one store batch
// those that are idle (no write in flight and none started since the
// call); a busy region keeps its mark and is cleared by the clearer once
// idle. Regions without a mark are ignored. While degraded it clears
// nothing and returns ErrDegraded (the regions stay pinned). A region
// beyond the array is an error and nothing is changed.
func (b *Bitmap) ClearRegions(regions []uint64) error {
	for _, r := range regions {
		if r >= b.nregions {
			return fmt.Errorf("bitmap %s: clear region %d of %d: %w", b.array, r, b.nregions, blockdev.ErrOutOfRange)
		}
	}
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		return fmt.Errorf("bitmap %s: clear regions: %w", b.array, ErrClosed)
	case b.degraded:
		b.mu.Unlock()
		return fmt.Errorf("bitmap %s: clear regions: %w", b.array, ErrDegraded)
	}
	b.ops.Add(1)
	defer b.ops.Done()
	var cands []candidate
	for _, r := range regions {
		st := b.regions[r]
		if st == nil {
			continue
		}
		if st.pinned {
			st.pinned = false
			b.st.Pinned--
		}
		if st.durable && st.batch == nil && st.inflight == 0 {
			cands = append(cands, candidate{r, st, st.gen})
		}
	}
	b.mu.Unlock()
	if _, err := b.clear(cands); err != nil {
		return fmt.Errorf("bitmap %s: clear %d regions: %w", b.array, len(cands), err)
	}
	return nil
}

// MarkForResync durably marks regions and pins them like the marks found
// at New, so they stay until ClearRegions. Use it when the dirty set comes
// from elsewhere: all regions after ErrCorrupt (so that a crash during the
// full resync does not forget it), or a failed node's slot on takeover. A
// region beyond the array is an error and nothing is changed.
func (b *Bitmap) MarkForResync(regions []uint64) error {
	if len(regions) == 0 {
		return nil
	}
	for _, r := range regions {
		if r >= b.nregions {
			return fmt.Errorf("bitmap %s: mark region %d of %d: %w", b.array, r, b.nregions, blockdev.ErrOutOfRange)
		}
	}
	sp := span{n: uint64(len(regions)), list: regions}
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("bitmap %s: mark for resync: %w", b.array, ErrClosed)
	}
	for i := range sp.n {
		b.acquire(sp.at(i))
	}
	if err := b.waitDurable(sp); err != nil {
		b.releaseSpan(sp)
		return fmt.Errorf("bitmap %s: mark %d regions for resync: %w", b.array, len(regions), err)
	}
	for i := range sp.n {
		st := b.regions[sp.at(i)]
		b.endLocked(st, now)
		if !st.pinned {
			st.pinned = true
			b.st.Pinned++
		}
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (b *Bitmap) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st
}

// Close stops the committer and the clearer and releases the slot. Marks
// stay as they are (use Shutdown for a clean stop). A StartWrite still
// waiting for its mark fails with ErrClosed. Close is idempotent.
func (b *Bitmap) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	b.bg.Wait()
	b.ops.Wait()
	b.store.release(b.array, b.slot)
	return nil
}

// Shutdown closes the bitmap for a clean stop, once IO to the array has
// stopped: unless the array is degraded, it calls Config.Flush and then
// clears, in one store batch, every mark that is not pinned and has no
// write in flight, so the next start resyncs only what still needs it.
// Pinned marks (not yet resynced) stay, and so does everything while
// degraded (a returning member needs those regions). When the flush or
// the clear fails the marks stay and the error is returned; the bitmap is
// closed in every case.
func (b *Bitmap) Shutdown() error {
	if err := b.Close(); err != nil {
		return err
	}
	b.mu.Lock()
	if b.degraded {
		b.mu.Unlock()
		return nil
	}
	var idle []uint64
	for r, st := range b.regions {
		if st.durable && st.batch == nil && !st.pinned && st.inflight == 0 {
			idle = append(idle, r)
		}
	}
	if len(idle) > 0 {
		b.st.Flushes++
	}
	b.mu.Unlock()
	if len(idle) == 0 {
		return nil
	}
	if err := b.cfg.Flush(); err != nil {
		return fmt.Errorf("bitmap %s: shutdown: flush before clearing %d regions: %w", b.array, len(idle), err)
	}
	slices.Sort(idle)
	if err := b.store.Clear(b.array, b.slot, idle); err != nil {
		return fmt.Errorf("bitmap %s: shutdown: %w", b.array, err)
	}
	b.mu.Lock()
	for _, r := range idle {
		if st := b.regions[r]; st.inflight == 0 {
			delete(b.regions, r)
		} else {
			st.durable = false
		}
	}
	b.st.Dirty -= len(idle)
	b.st.Clears += uint64(len(idle))
	b.st.ClearSyncs++
	b.mu.Unlock()
	if b.cfg.OnClear != nil {
		b.cfg.OnClear(idle)
	}
	return nil
}
