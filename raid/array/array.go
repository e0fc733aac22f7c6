package array

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddraid/ddraid/bitmap"
	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// Options configure Open.
type Options struct {
	StateDir string
	Name     string
	// Direct opens members with O_DIRECT.
	Direct bool
	// Wrap wraps each member below the counters (latency or fault
	// injection for benchmarks and drills).
	Wrap func(role int, dev blockdev.Device) blockdev.Device
	// Throttle bounds background jobs; zero value: resync.DefaultThrottle.
	Throttle resync.Throttle
	// ClearDelay is how long a bitmap region stays marked after its last
	// write; 0: 5 s.
	ClearDelay time.Duration
	// Remote configures members given as NBD URIs (nbd://…): how long one
	// may stay unreachable before it fails, the reconnect backoff. The
	// zero value takes the defaults of package remote.
	Remote remote.Config
	// Writer is this node's slot and fencing epoch, sent to agent members
	// (HOST:/PATH).
	Writer raid.Writer
	// OnSpread is the engine's raid.Config.OnSpread (large requests that
	// run their member requests in parallel; internal/procs). Optional.
	OnSpread func()
	// Gate, if set, admits every write, trim and zero before the bitmap
	// (cluster mode: cluster/coord.WriteGate; see cluster.go).
	Gate WriteGate
	// MemberFailed, if set, records a member failure instead of the local
	// superblock update (cluster mode: cluster/coord's
	// Coordinator.MemberFailed records it with every writer). It is called
	// synchronously from the IO that saw the error; no spare is taken.
	MemberFailed func(role int, err error) error
	// MemberFailing, if set, is called before the engine lets any IO see
	// a member failure that MemberFailed will then record (raid.Config's
	// BeforeFail); cluster mode holds the acknowledgement of writes there
	// (cluster/coord's Coordinator.MemberFailing). It must be quick.
	MemberFailing func(role int, err error)
	// Cluster, if set, makes every superblock change of this array a
	// cluster-wide one (see Cluster in cluster.go); the initial sync and
	// rebuilds are then the cluster's jobs, not this array's.
	Cluster Cluster
	Logger  *slog.Logger
}

// Array is an assembled, running array.
type Array struct {
	opts  Options
	log   *slog.Logger
	asm   *raid.Assembled
	eng   blockdev.Device // the raid engine
	sync  raid.Syncer     // nil for linear
	front blockdev.Device // what is served: fg, in front of the bitmap and the engine
	fg    *blockdev.Stats // foreground IO counters

	swaps []*blockdev.Swap
	stats []*blockdev.Stats
	store *bitmap.Store // shared with the state directory's other arrays
	// storeDir is the store's directory, its key in stores.
	storeDir string
	bm       *bitmap.Bitmap

	// updMu serialises superblock updates; bg counts the goroutines that
	// record member failures.
	updMu sync.Mutex
	bg    sync.WaitGroup

	// fenced is set once a member host refused this node's epoch (see
	// fence.go); clearers are the agent members' clear forwarders by role.
	fenced   atomic.Bool
	clrMu    sync.Mutex
	clearers []raid.MemberClearer

	mu      sync.Mutex
	sb      *meta.Array // latest superblock
	jobs    []queued
	current *resync.Progress
	last    *resync.Progress // the last finished job
	// replacing holds the roles a Replace is copying.
	replacing map[int]bool
	// recMu orders startRecovery against the end of a rebuild; rebuilds
	// counts the rebuilds started per role, so that only the latest one
	// may make its role active (an earlier one, still running when the
	// role was failed and given a device again, did not write all of it).
	recMu    sync.Mutex
	rebuilds map[int]uint64
	// trustAfterRecovery is set when the array started degraded with
	// dirty regions and no redundancy left among its live members to
	// resync them with: the rebuild that makes it whole again also makes
	// its redundancy match, and read balancing may start then.
	trustAfterRecovery bool
	wake               chan struct{}
	ctx                context.Context
	cancel             context.CancelFunc
	done               chan struct{}
}

// queued is a job waiting for the worker.
type queued struct {
	job    resync.Job
	finish func(p resync.Progress, err error)
}

// Open assembles the named array and starts its background work.
func Open(o Options) (*Array, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Throttle == (resync.Throttle{}) {
		o.Throttle = resync.DefaultThrottle()
	}
	if err := o.Throttle.Validate(); err != nil {
		return nil, err
	}
	a := &Array{opts: o, log: o.Logger.With("array", o.Name), wake: make(chan struct{}, 1), done: make(chan struct{}), replacing: map[int]bool{}, rebuilds: map[int]uint64{}}
	var mu sync.Mutex
	asm, err := raid.Assemble(o.StateDir, o.Name, raid.AssembleOptions{
		Direct:     o.Direct,
		Remote:     o.Remote,
		Writer:     o.Writer,
		OnFail:     a.onFail,
		BeforeFail: a.beforeFail,
		OnSpread:   o.OnSpread,
		Wrap: func(role int, dev blockdev.Device) blockdev.Device {
			mu.Lock()
			defer mu.Unlock()
			return a.wrapMember(role, dev)
		},
	})
	if err != nil {
		return nil, err
	}
	a.asm, a.eng, a.sb = asm, asm.Device(), asm.Array
	for len(a.swaps) < len(a.sb.Members) {
		a.swaps = append(a.swaps, nil)
		a.stats = append(a.stats, nil)
	}
	a.sync, _ = a.eng.(raid.Syncer)
	a.ctx, a.cancel = context.WithCancel(context.Background())
	if err := a.openBitmap(); err != nil {
		asm.Close()
		return nil, err
	}
	a.front = gateWrap(a.front, o.Gate)
	// Foreground IO is counted where it enters: the member counters also
	// see the jobs' own IO, which is not a reason for a job to yield.
	a.front = &frontGate{dev: a.front, a: a}
	a.fg = blockdev.NewStats(a.front)
	a.front = a.fg
	a.resume()
	go a.worker()
	return a, nil
}

// wrapMember puts the counters and the swap in front of a member.
func (a *Array) wrapMember(role int, dev blockdev.Device) blockdev.Device {
	for len(a.swaps) <= role {
		a.swaps = append(a.swaps, nil)
		a.stats = append(a.stats, nil)
	}
	dev = a.guard(role, dev)
	if a.opts.Wrap != nil {
		dev = a.opts.Wrap(role, dev)
	}
	a.stats[role] = blockdev.NewStats(dev)
	a.swaps[role] = blockdev.NewSwap(a.stats[role])
	return a.swaps[role]
}

// openBitmap opens the bitmap store (a corrupt store is set aside and
// replaced, and the whole array resynced) and puts the bitmap in front of
// the engine. Linear arrays have no redundancy and no bitmap.
func (a *Array) openBitmap() error {
	if a.sync == nil {
		a.front = a.eng
		return nil
	}
	store, err := a.openStore()
	if err != nil {
		return fmt.Errorf("bitmap: %w", err)
	}
	region := a.sb.RegionSize
	if region == 0 {
		region = raid.DefaultRegionSize
	}
	bm, err := bitmap.New(store, a.sb.UUID.String(), 0, a.eng.Size(), bitmap.Config{
		RegionSize: region, ClearDelay: a.opts.ClearDelay, Flush: a.eng.Flush, Logger: a.log,
		OnClear: a.forwardClears,
	})
	if err != nil {
		releaseStore(a.storeDir)
		return fmt.Errorf("bitmap: %w", err)
	}
	a.store, a.bm = store, bm
	a.bm.SetDegraded(a.degraded())
	a.front = bitmap.NewDevice(a.eng, bm)
	return nil
}

// stores holds the bitmap stores open in this process, by directory.
// The arrays of one state directory share its store: badger locks its
// directory, so it can be open only once per process.
var stores = struct {
	sync.Mutex
	m map[string]*sharedStore
}{m: map[string]*sharedStore{}}

type sharedStore struct {
	store *bitmap.Store
	refs  int
}

// openStore returns the state directory's bitmap store, opening it for
// the first array that needs it.
func (a *Array) openStore() (*bitmap.Store, error) {
	dir, err := filepath.Abs(bitmap.Dir(a.opts.StateDir))
	if err != nil {
		return nil, err
	}
	stores.Lock()
	defer stores.Unlock()
	if s := stores.m[dir]; s != nil {
		s.refs++
		a.storeDir = dir
		return s.store, nil
	}
	store, err := bitmap.OpenStore(dir, bitmap.StoreConfig{})
	if errors.Is(err, bitmap.ErrCorrupt) {
		aside := fmt.Sprintf("%s.corrupt-%d", dir, time.Now().Unix())
		a.log.Warn("bitmap store is corrupt; set aside, every array of the state directory whose marks it held will be resynced in full", "dir", dir, "moved_to", aside, "err", err)
		// Record the full syncs before the marks go, so that neither a
		// stop during a sync nor an array opened later forgets one.
		if merr := a.syncAll(); merr != nil {
			return nil, fmt.Errorf("record the full resync a corrupt bitmap store needs: %w", merr)
		}
		if rerr := os.Rename(dir, aside); rerr != nil {
			return nil, fmt.Errorf("set aside corrupt bitmap store: %w", rerr)
		}
		store, err = bitmap.OpenStore(dir, bitmap.StoreConfig{})
	}
	if err != nil {
		return nil, err
	}
	stores.m[dir] = &sharedStore{store: store, refs: 1}
	a.storeDir = dir
	return store, nil
}

// syncAll records in the superblock of every redundant array of the state
// directory that it needs a full sync (the initial sync, resumable), as
// after a create on disks that held data.
//
// In cluster mode it leaves alone the arrays whose members in use are all
// hosted by ddraid agents. Their writers' marks that count are kept per
// writer slot at the member hosts, and a writer resyncs them when it takes
// a slot over (cluster/coord); the store here only paces the clears. And a
// superblock changed here alone, outside the cluster's token, would carry
// an event number that another writer may also give to a different
// change.
func (a *Array) syncAll() error {
	return meta.View(a.opts.StateDir, func(s *meta.Store) error {
		names, err := s.List()
		if err != nil {
			return err
		}
		for _, n := range names {
			sb, err := s.Get(n)
			if err != nil {
				if n == a.opts.Name {
					return err
				}
				a.log.Error("cannot record a full resync", "other_array", n, "err", err)
				continue
			}
			if sb.Level == string(raid.LevelLinear) {
				continue
			}
			if a.opts.Cluster != nil && marksAtHosts(sb) {
				a.log.Warn("bitmap store lost: the array's marks are kept at its member hosts; no full resync", "array_in_state_dir", n)
				continue
			}
			sb.InitialSync, sb.SyncedTo = true, 0
			sb.Events++
			if err := s.Put(sb); err != nil {
				return err
			}
			if n == a.opts.Name {
				a.mu.Lock()
				a.sb = sb
				a.mu.Unlock()
			}
		}
		return nil
	})
}

// marksAtHosts reports whether every member of sb in use (active or
// recovering) is hosted by a ddraid agent, which keeps each writer slot's
// marks: the members a cluster of writers can serve.
func marksAtHosts(sb *meta.Array) bool {
	for _, m := range sb.Members {
		if (m.State == meta.StateActive || m.State == meta.StateRecovering) && !raid.IsAgentMember(m.Path) {
			return false
		}
	}
	return true
}

// releaseStore drops an array's use of the store in dir and closes the
// store when no array uses it any more.
func releaseStore(dir string) error {
	stores.Lock()
	defer stores.Unlock()
	s := stores.m[dir]
	if s == nil {
		return nil
	}
	if s.refs--; s.refs > 0 {
		return nil
	}
	delete(stores.m, dir)
	return s.store.Close()
}

// Device returns the array as served: writes are marked in the bitmap
// before they reach the members.
func (a *Array) Device() blockdev.Device { return a.front }

// Name returns the array name.
func (a *Array) Name() string { return a.opts.Name }

// Superblock returns a copy of the current superblock.
func (a *Array) Superblock() meta.Array {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb := *a.sb
	sb.Members = append([]meta.Member(nil), a.sb.Members...)
	sb.Spares = append([]meta.Member(nil), a.sb.Spares...)
	return sb
}

// degraded reports whether any member is not active.
func (a *Array) degraded() bool {
	if a.sync == nil {
		return false
	}
	for _, s := range a.sync.MemberStates() {
		if s != raid.MemberActive {
			return true
		}
	}
	return false
}

// resume queues the work an earlier run left: resync of dirty regions,
// the initial sync, and recovery of members recorded as recovering.
func (a *Array) resume() {
	if a.sync == nil {
		return
	}
	sb := a.Superblock()
	cluster := a.opts.Cluster != nil
	for role, m := range sb.Members {
		if m.State != meta.StateRecovering {
			continue
		}
		if !cluster {
			if err := a.startRecovery(role, nil, false); err != nil {
				a.log.Error("cannot resume recovery", "role", role, "member", m.Path, "err", err)
			}
			continue
		}
		// Cluster mode: every writer writes the member; one writer
		// rebuilds it for all (a cluster job).
		if err := a.beginRecovery(role, nil); err != nil {
			a.log.Error("cannot open a member being rebuilt: failing it", "role", role, "member", m.Path, "err", err)
			a.failUnopened(role, err)
		}
	}
	if cluster {
		// The initial sync is a cluster job too, and this node's leftover
		// marks are at the member hosts under its former slot, which is
		// taken over.
		return
	}
	if sb.InitialSync {
		a.log.Info("initial sync pending", "from", sb.SyncedTo)
		a.queueSync(resync.Range{Off: sb.SyncedTo, Len: a.eng.Size() - sb.SyncedTo}, true)
		return
	}
	dirty := a.bm.Dirty()
	if len(dirty) == 0 {
		a.trustRedundancy(true) // a clean stop: parity matches everywhere
		return
	}
	if a.degraded() {
		if raid.Level(sb.Level) == raid.LevelMirror && a.activeMembers() >= 2 {
			// The live copies of a block whose write was in flight may
			// differ: make them match now. The regions stay dirty for
			// the lost member's rebuild.
			a.log.Info("unclean stop while degraded: resyncing dirty regions on the live copies", "regions", len(dirty))
			a.queueDegradedResync(dirty)
			return
		}
		a.mu.Lock()
		a.trustAfterRecovery = true
		a.mu.Unlock()
		a.log.Warn("unclean stop while degraded: dirty regions wait for recovery", "regions", len(dirty))
		return
	}
	a.log.Info("unclean stop: resyncing dirty regions", "regions", len(dirty))
	a.queueDirtyResync(dirty)
}

// ranges turns region numbers into byte ranges of the array, merging
// neighbours.
func (a *Array) ranges(regions []uint64) []resync.Range {
	var out []resync.Range
	for _, r := range regions {
		off, n := a.bm.RegionRange(r)
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == off {
			out[k].Len += n
			continue
		}
		out = append(out, resync.Range{Off: off, Len: n})
	}
	return out
}

// regionsOf returns the region numbers a range covers.
func (a *Array) regionsOf(r resync.Range) []uint64 {
	var out []uint64
	for x := a.bm.Region(r.Off); x <= a.bm.Region(r.Off+r.Len-1); x++ {
		out = append(out, x)
	}
	return out
}

func (a *Array) queueDirtyResync(dirty []uint64) {
	a.enqueue(resync.Job{
		Kind: resync.KindResync, Array: a.sync, Ranges: a.ranges(dirty),
		// ClearRegions flushes the array before it clears.
		OnRangeDone: func(r resync.Range) error { return a.bm.ClearRegions(a.regionsOf(r)) },
	}, func(p resync.Progress, err error) {
		if err == nil {
			a.trustRedundancy(true)
			a.log.Info("resync done", "bytes", p.Done)
		}
	})
}

// queueDegradedResync resyncs the dirty regions of a degraded mirror
// among its live copies, keeping them dirty for the lost members' rebuild.
func (a *Array) queueDegradedResync(dirty []uint64) {
	a.enqueue(resync.Job{Kind: resync.KindResync, Array: a.sync, Ranges: a.ranges(dirty)},
		func(p resync.Progress, err error) {
			if err == nil {
				a.trustRedundancy(true)
				a.log.Info("resync of the live copies done", "bytes", p.Done)
			}
		})
}

// activeMembers counts the members in the active state.
func (a *Array) activeMembers() int {
	n := 0
	for _, s := range a.sync.MemberStates() {
		if s == raid.MemberActive {
			n++
		}
	}
	return n
}

// queueSync queues the initial (or full) sync of r, checkpointing progress
// in the superblock.
func (a *Array) queueSync(r resync.Range, initial bool) {
	lastSave := time.Now()
	a.enqueue(resync.Job{
		Kind: resync.KindResync, Array: a.sync, Ranges: []resync.Range{r}, Chunk: 4 << 20,
		OnProgress: func(p resync.Progress) {
			if !initial || time.Since(lastSave) < 5*time.Second || p.Finished {
				return
			}
			lastSave = time.Now()
			if err := a.eng.Flush(); err == nil {
				a.update(func(sb *meta.Array) error { sb.SyncedTo = r.Off + p.Done; return nil })
			}
		},
	}, func(p resync.Progress, err error) {
		if err != nil {
			if initial {
				a.eng.Flush()
				a.update(func(sb *meta.Array) error { sb.SyncedTo = r.Off + p.Done; return nil })
			}
			return
		}
		a.eng.Flush()
		a.update(func(sb *meta.Array) error { sb.InitialSync, sb.SyncedTo = false, 0; return nil })
		a.clearUnmarked(a.allRoles()) // the sync's writes were marked at agent members
		a.trustRedundancy(true)
		a.log.Info("sync done", "bytes", p.Done)
	})
}

// trustRedundancy tells a raid35 or mirror engine whether reads may use
// the array's redundancy: parity in place of a busy member, or the least
// busy copy of a mirror (raid.ReadBalancer). It does so only when this
// process is the array's only writer: not in cluster mode, and not with a
// writer slot or epoch of its own (--slot, --epoch), where other nodes may
// write the members too and this one cannot know which of their writes
// are half done.
func (a *Array) trustRedundancy(on bool) {
	t, ok := a.sync.(raid.ReadBalancer)
	if ok && a.opts.Cluster == nil && a.opts.Gate == nil && a.opts.Writer == (raid.Writer{}) {
		t.TrustRedundancy(on)
	}
}

// update changes the stored superblock and the in-memory copy together.
// Updates are serialised, so the in-memory copy never goes back to an
// older one.
func (a *Array) update(fn func(*meta.Array) error) error {
	return a.updateWhat("metadata", fn)
}

// updateWhat is update; what names the change (cluster mode logs it and
// puts it in errors). In cluster mode the change is made under the
// cluster's token and stored by every writer, this one through
// ApplySuperblock.
func (a *Array) updateWhat(what string, fn func(*meta.Array) error) error {
	if a.opts.Cluster != nil {
		err := a.opts.Cluster.Update(context.Background(), what, fn)
		if err != nil && !errors.Is(err, ErrNoChange) {
			a.log.Error("update metadata", "what", what, "err", err)
			return err
		}
		return nil
	}
	a.updMu.Lock()
	defer a.updMu.Unlock()
	sb, err := meta.Update(a.opts.StateDir, a.opts.Name, fn)
	if errors.Is(err, ErrNoChange) {
		return nil
	}
	if err != nil {
		a.log.Error("update metadata", "err", err)
		return err
	}
	a.mu.Lock()
	a.sb = sb
	a.mu.Unlock()
	return nil
}

// ErrNoChange abandons an update that has nothing to change.
var ErrNoChange = errors.New("no change")

// beforeFail tells the cluster of a member failure MemberFailed will
// record, before the engine lets any IO see it (raid.Config.BeforeFail).
func (a *Array) beforeFail(member int, err error) {
	if a.opts.MemberFailing == nil || a.fenced.Load() || errors.Is(err, remote.ErrFenced) || errors.Is(err, errFailedElsewhere) {
		return
	}
	a.opts.MemberFailing(member, err)
}

// onFail records a member failure reported by the engine.
func (a *Array) onFail(member int, err error) {
	if a.fenced.Load() || errors.Is(err, remote.ErrFenced) {
		// Not a member failure: this writer was fenced (fence.go).
		a.setFenced(err)
		return
	}
	a.log.Warn("member failed; array continues degraded", "member", member, "err", err)
	if a.bm != nil {
		a.bm.SetDegraded(true)
	}
	if a.opts.MemberFailed != nil {
		// Cluster mode: recorded with every writer before this IO returns
		// (the gate holds writes meanwhile). A failure another writer
		// recorded (ApplySuperblock) is recorded already.
		if !errors.Is(err, errFailedElsewhere) {
			if rerr := a.opts.MemberFailed(member, err); rerr != nil {
				a.log.Error("member failure not yet recorded by every writer; writes wait until it is", "member", member, "err", rerr)
			}
		}
		return
	}
	// Recording opens the metadata store; do it off the IO path. Close
	// waits for it.
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		a.recordFailure(member)
		a.useSpare()
	}()
}

// recordFailure marks a role failed in the superblock if the engine has
// it failed and the superblock still has it in use. By the time a
// recording runs, the role may have been removed, re-added or given a
// spare: then the superblock already says what the role holds now.
func (a *Array) recordFailure(role int) error {
	return a.update(func(sb *meta.Array) error {
		if role < 0 || role >= len(sb.Members) {
			return ErrNoChange
		}
		if st := a.sync.MemberStates()[role]; st != raid.MemberFailed && st != raid.MemberMissing {
			return ErrNoChange
		}
		m := &sb.Members[role]
		if m.State != meta.StateActive && m.State != meta.StateRecovering {
			return ErrNoChange
		}
		m.Fail()
		return nil
	})
}

// Close stops background jobs, flushes, and closes the array. The bitmap
// is cleared only when the array is healthy and nothing is left to sync.
func (a *Array) Close() error {
	a.cancel()
	<-a.done
	var errs []error
	if err := a.front.Flush(); err != nil {
		errs = append(errs, fmt.Errorf("flush: %w", err))
	}
	a.bg.Wait() // failure recordings
	if a.bm != nil {
		// Shutdown flushes and clears the idle marks of this run's writes.
		// Marks loaded at Open that no resync cleared stay, and so does
		// everything while the array is degraded.
		if len(errs) == 0 {
			if err := a.bm.Shutdown(); err != nil {
				errs = append(errs, fmt.Errorf("bitmap shutdown: %w", err))
			}
		}
		if err := a.bm.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := releaseStore(a.storeDir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := a.asm.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
