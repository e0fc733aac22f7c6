package coord

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// Local is the array on this node as the coordinator needs it
// (raid/array in production, a model array in tests).
type Local interface {
	// Superblock returns the current superblock.
	Superblock() meta.Array
	// ApplySuperblock stores sb durably (pebble) and makes the running
	// array follow it. An error refuses the update.
	ApplySuperblock(sb *meta.Array) error
	// CanOpen checks that this node can open the member spec (NEWDISK).
	CanOpen(ctx context.Context, spec string) error
	// Resync makes [off, off+length) of the array consistent from its data
	// (raid.Syncer.Resync).
	Resync(ctx context.Context, off, length int64) error
	// Recover rebuilds member role's part of [off, off+length) from the
	// other members (raid.Syncer.Recover); the member is recovering on
	// every writer.
	Recover(ctx context.Context, role int, off, length int64) error
	// MemberHosts returns the hosts of the array's members in use; an
	// error when a member in use has no host that can fence and keep
	// marks.
	MemberHosts() ([]MemberHost, error)
}

// Config configures a Coordinator. Zero fields take the defaults named.
type Config struct {
	// Node is this node's name. Required.
	Node lockd.NodeID
	// Lockd is this node's lock service. Required. The coordinator uses
	// the lockspace "array/<uuid>".
	Lockd *lockd.Node
	// Router carries messages to and from the other nodes. Required.
	Router *Router
	// Local is the array here. Required.
	Local Local
	// Gate is the array's write gate. Required.
	Gate *WriteGate
	// Slots is the number of writer slots (default: the superblock's,
	// meta.Array.SlotCount).
	Slots int
	// GroupRegions is the number of bitmap regions per resync lock group
	// (default 16).
	GroupRegions int
	// Timeout bounds every wait: a lock, a broadcast, a member host call
	// (default 30 s).
	Timeout time.Duration
	// Poll is how often the slot lock and the membership are checked
	// (default 250 ms).
	Poll time.Duration
	// RescanPolls is for how many polls after a membership change the
	// slots are probed for takeover (lockd purges a dead node's locks only
	// once its recovery finished) (default 40); ScanPolls is how often
	// they are probed otherwise (default 120).
	RescanPolls, ScanPolls int
	// Throttle bounds the speed of the jobs this node runs (its Max; the
	// zero value: no limit).
	Throttle resync.Throttle
	// CheckpointEvery is how often a running job (initial sync, rebuild)
	// records its progress in the superblock (default 5 s).
	CheckpointEvery time.Duration
	// OnSlotLost is called once when this node's slot lock is lost (the
	// majority purged it): the array must stop writing for good (its
	// fenced state). Optional.
	OnSlotLost func(err error)
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Node == "" || c.Lockd == nil || c.Router == nil || c.Local == nil || c.Gate == nil {
		return errors.New("coord: Node, Lockd, Router, Local and Gate are required")
	}
	if c.Slots != 0 {
		if err := meta.ValidateSlots(c.Slots); err != nil {
			return fmt.Errorf("coord: %w", err)
		}
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 5 * time.Second
	}
	if c.GroupRegions <= 0 {
		c.GroupRegions = 16
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Poll <= 0 {
		c.Poll = 250 * time.Millisecond
	}
	if c.RescanPolls <= 0 {
		c.RescanPolls = 40
	}
	if c.ScanPolls <= 0 {
		c.ScanPolls = 120
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Halt reasons of the write gate.
const (
	haltQuorum = "quorum"
	haltLost   = "slot-lost"
)

// haltMember is the halt reason of a member failure not yet recorded
// cluster-wide.
func haltMember(role int) string { return fmt.Sprintf("member-%d-failed", role) }

// Lock resources of an array's lockspace.
const (
	resToken = "token"
)

func slotResource(n uint32) string   { return fmt.Sprintf("slot/%d", n) }
func resyncResource(k uint64) string { return fmt.Sprintf("resync/%d", k) }

// lvbClean is the slot lock's value block when its last holder left no
// marks.
var lvbClean = []byte("clean")

// Errors of the coordinator.
var (
	// ErrNoSlot: every slot is held by a live writer.
	ErrNoSlot = errors.New("coord: no free writer slot")
	// ErrNotJoined: the operation needs this node to hold a slot.
	ErrNotJoined = errors.New("coord: not joined (no writer slot)")
	// ErrSlotLost: this node's slot lock was purged by the majority.
	ErrSlotLost = errors.New("coord: writer slot lost")
)

// Coordinator coordinates one array with the other writers of the
// cluster. All methods are safe for concurrent use.
type Coordinator struct {
	cfg Config
	log *slog.Logger
	// repeats quiets log lines retried every poll (repeats.go).
	repeats repeats
	uuid    string
	ls      *lockd.Lockspace

	mu          sync.Mutex
	slot        *lockd.Lock
	writer      raid.Writer
	lost        error
	lastErr     error
	live        []lockd.NodeID
	mine        map[uint32]Window // windows this node announced, by slot
	seq         uint64            // of this node's announcements
	takeovers   map[uint32]bool   // slots this node is taking over
	scanning    bool
	pendingFail map[int]pendingFailure // member failures not yet recorded cluster-wide, by role
	dirtySlot   bool                   // our slot's previous holder did not leave it clean
	started     bool
	trying      map[string]bool    // jobs whose lock this node is asking for or holds
	running     map[string]*jobRun // jobs running here

	stop chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// New makes the coordinator of the array Local holds and registers it
// with the router (from then on it answers the other nodes). Call Join to
// take a writer slot.
func New(cfg Config) (*Coordinator, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	sb := cfg.Local.Superblock()
	c := &Coordinator{
		cfg: cfg, uuid: sb.UUID.String(),
		mine: map[uint32]Window{}, takeovers: map[uint32]bool{}, pendingFail: map[int]pendingFailure{},
		trying: map[string]bool{}, running: map[string]*jobRun{},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	c.log = cfg.Logger.With("array", sb.Name, "node", cfg.Node)
	c.ls = cfg.Lockd.Lockspace("array/" + c.uuid)
	if err := cfg.Router.add(c); err != nil {
		return nil, err
	}
	return c, nil
}

// UUID returns the array's UUID as the coordinator names it.
func (c *Coordinator) UUID() string { return c.uuid }

// waitCtx bounds ctx by the configured timeout.
func (c *Coordinator) waitCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.Timeout)
}

// geometry returns the bitmap region size and the array size.
func (c *Coordinator) geometry() (regionSize, size int64) {
	sb := c.cfg.Local.Superblock()
	regionSize = sb.RegionSize
	if regionSize == 0 {
		regionSize = raid.DefaultRegionSize
	}
	return regionSize, sb.Size
}

// slots returns the number of writer slots: the configured one, or the
// superblock's (it may grow while the array runs).
func (c *Coordinator) slots() int {
	if c.cfg.Slots != 0 {
		return c.cfg.Slots
	}
	sb := c.cfg.Local.Superblock()
	return sb.SlotCount()
}

// Join takes a free writer slot: the first slot/N granted at once (EX,
// NOQUEUE), and fetches the windows other nodes announced before this node
// listened. The returned identity is what the array's member connections
// must carry. Open the array with it, then call Start before serving any
// write.
func (c *Coordinator) Join(ctx context.Context) (raid.Writer, error) {
	c.mu.Lock()
	if c.slot != nil {
		w := c.writer
		c.mu.Unlock()
		return w, nil
	}
	c.mu.Unlock()
	ctx, cancel := c.waitCtx(ctx)
	defer cancel()
	if err := c.fetchWindows(ctx); err != nil {
		return raid.Writer{}, fmt.Errorf("join %s: %w", c.uuid, err)
	}
	for {
		slots := c.slots()
		for n := range uint32(slots) {
			l, err := c.ls.Lock(ctx, slotResource(n), lockd.EX, lockd.NoQueue|lockd.ValBlk)
			if errors.Is(err, lockd.ErrAgain) {
				continue
			}
			if err != nil && ctx.Err() != nil && !errors.Is(err, lockd.ErrNoQuorum) {
				// The time ran out while asking: every slot tried so far was held.
				return raid.Writer{}, fmt.Errorf("join %s: %w: all %d held by live writers (%w)", c.uuid, ErrNoSlot, slots, context.Cause(ctx))
			}
			if err != nil {
				return raid.Writer{}, fmt.Errorf("join %s: take slot %d: %w", c.uuid, n, err)
			}
			tok, err := l.Token()
			if err != nil {
				c.unlock(l)
				return raid.Writer{}, fmt.Errorf("join %s: slot %d: %w", c.uuid, n, err)
			}
			lvb, _, valid := l.LVB()
			l.InvalidateLVB() // from now on only a clean Leave says "clean"
			w := raid.Writer{Slot: n, Epoch: tok.Epoch}
			c.mu.Lock()
			c.slot, c.writer = l, w
			c.dirtySlot = !valid || !isClean(lvb)
			c.mu.Unlock()
			c.log.Info("joined the array's writers", "slot", n, "epoch", tok.Epoch)
			return w, nil
		}
		select {
		case <-ctx.Done():
			return raid.Writer{}, fmt.Errorf("join %s: %w: all %d held by live writers (%w)", c.uuid, ErrNoSlot, slots, context.Cause(ctx))
		case <-time.After(c.cfg.Poll):
		}
	}
}

// Start resyncs what an earlier holder of this node's slot left marked
// (the slot is taken over by this node, exactly as a survivor would) and
// starts the coordinator's loop: the slot watch and the takeover of
// failed writers' slots. The array must serve no write before Start
// returns.
func (c *Coordinator) Start(ctx context.Context) error {
	c.mu.Lock()
	l, w, dirty, started := c.slot, c.writer, c.dirtySlot, c.started
	c.started = true
	c.mu.Unlock()
	if l == nil {
		return ErrNotJoined
	}
	if started {
		return nil
	}
	if dirty {
		ctx, cancel := c.waitCtx(ctx)
		defer cancel()
		if err := c.recoverSlot(ctx, w.Slot, l, w.Epoch); err != nil {
			c.mu.Lock()
			c.started = false
			c.mu.Unlock()
			return fmt.Errorf("start %s: marks left in slot %d: %w", c.uuid, w.Slot, err)
		}
		c.mu.Lock()
		c.dirtySlot = false
		c.mu.Unlock()
	}
	c.wg.Add(1)
	go c.run()
	return nil
}

// isClean reports whether a slot's value block says its holder left clean.
func isClean(lvb []byte) bool { return bytes.Equal(bytes.TrimRight(lvb, "\x00"), lvbClean) }

// fetchWindows asks every live node for the windows it announced and
// installs them (a writer must not write into a window announced before it
// listened). Nodes that do not answer are skipped: a resyncer that cannot
// answer is leaving, and its windows would be dropped anyway.
func (c *Coordinator) fetchWindows(ctx context.Context) error {
	replies, err := c.cfg.Router.m.Broadcast(ctx, cluster.Message{Type: TypeWindows, Array: c.uuid})
	if err != nil {
		c.log.Warn("some nodes did not report their resync windows", "err", err)
	}
	for from, b := range replies {
		ws, err := DecodeWindows(from, b)
		if err != nil {
			return fmt.Errorf("resync windows of %s: %w", from, err)
		}
		for _, w := range ws {
			if err := c.cfg.Gate.Install(ctx, w); err != nil {
				return err
			}
		}
	}
	return nil
}

// Writer returns this node's writer identity and whether it holds a slot.
func (c *Coordinator) Writer() (raid.Writer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writer, c.slot != nil && c.lost == nil
}

// unlock releases l, bounded by the timeout; errors are logged.
func (c *Coordinator) unlock(l *lockd.Lock) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	if err := l.Unlock(ctx); err != nil {
		c.log.Debug("release lock", "err", err)
	}
}

// run is the coordinator's loop: watch the slot lock, follow membership,
// scan for slots to take over, take up due jobs (jobs.go).
func (c *Coordinator) run() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.Poll)
	defer t.Stop()
	rescan := c.cfg.RescanPolls // the join itself is a change
	polls := 0
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if !c.watchSlot() {
			continue
		}
		if c.followMembers() {
			rescan = c.cfg.RescanPolls
		}
		polls++
		if rescan > 0 || polls%c.cfg.ScanPolls == 0 || c.failuresPending() {
			if rescan > 0 {
				rescan--
			}
			c.startScan()
		}
		c.startJobs()
	}
}

// watchSlot checks this node's slot lock: without quorum writes halt;
// when the lock was purged the array is fenced for good. It reports
// whether the slot is valid.
func (c *Coordinator) watchSlot() bool {
	c.mu.Lock()
	l, lost := c.slot, c.lost
	c.mu.Unlock()
	if l == nil || lost != nil {
		return false
	}
	_, err := l.Token()
	switch {
	case err == nil:
		if c.cfg.Gate.HaltedBy(haltQuorum) {
			c.log.Info("quorum regained; writes resume")
			c.cfg.Gate.Resume(haltQuorum)
		}
		return true
	case errors.Is(err, lockd.ErrNoQuorum):
		if !c.cfg.Gate.HaltedBy(haltQuorum) {
			c.log.Warn("no quorum: writes halt until it returns", "err", err)
		}
		c.cfg.Gate.Halt(haltQuorum, fmt.Errorf("no quorum: %w", err))
		return false
	default:
		err = fmt.Errorf("%w: %w", ErrSlotLost, err)
		c.mu.Lock()
		c.lost = err
		c.mu.Unlock()
		c.cfg.Gate.Halt(haltLost, err)
		c.log.Error("this node's writer slot was taken from it: the array stops writing", "err", err)
		if c.cfg.OnSlotLost != nil {
			c.cfg.OnSlotLost(err)
		}
		return false
	}
}

// followMembers reports whether the membership changed since the last
// poll; when it did, the windows of every node no longer live are dropped
// (a resyncer that died: its windows would block writes for ever).
func (c *Coordinator) followMembers() bool {
	live := c.cfg.Router.m.Live()
	c.mu.Lock()
	old := c.live
	c.live = live
	c.mu.Unlock()
	if slices.Equal(old, live) {
		return false
	}
	for _, w := range c.cfg.Gate.Windows() {
		if !slices.Contains(live, w.Owner) {
			c.log.Info("dropping the resync windows of a node that left", "owner", w.Owner)
			c.cfg.Gate.DropOwner(w.Owner)
		}
	}
	return true
}

// startScan probes the other slots for takeover on its own goroutine,
// one scan at a time.
func (c *Coordinator) startScan() {
	c.mu.Lock()
	if c.scanning {
		c.mu.Unlock()
		return
	}
	c.scanning = true
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		var err error
		if c.failuresPending() {
			ctx, cancel := c.waitCtx(context.Background())
			err = c.recordFailures(ctx)
			cancel()
		}
		err = errors.Join(err, c.Scan(context.Background()))
		c.mu.Lock()
		c.scanning = false
		c.lastErr = err // a later scan that succeeds clears it
		c.mu.Unlock()
		if err != nil {
			lvl := slog.LevelWarn
			if c.repeats.quiet("scan", err.Error(), time.Now()) {
				lvl = slog.LevelDebug
			}
			c.log.Log(context.Background(), lvl, "takeover scan", "err", err)
		}
	}()
}

// Leave releases this node's slot: clean (the array cleared every mark it
// made) lets the next holder skip the takeover. The loop stops.
func (c *Coordinator) Leave(ctx context.Context, clean bool) error {
	c.Close()
	c.mu.Lock()
	l := c.slot
	c.slot = nil
	c.mu.Unlock()
	if l == nil {
		return nil
	}
	if clean {
		l.SetLVB(lvbClean)
	}
	ctx, cancel := c.waitCtx(ctx)
	defer cancel()
	if err := l.Unlock(ctx); err != nil {
		return fmt.Errorf("leave %s: release the slot: %w", c.uuid, err)
	}
	return nil
}

// Close stops the coordinator's loop and unregisters it from the router.
// Locks are not released (a crash looks the same to the others).
func (c *Coordinator) Close() {
	c.once.Do(func() {
		c.cfg.Router.remove(c)
		close(c.stop)
		c.wg.Wait()
	})
}

// Status is the coordinator's state for `ddraid status`.
type Status struct {
	Node  lockd.NodeID `json:"node"`
	Slot  int          `json:"slot"` // -1: none
	Epoch uint64       `json:"epoch"`
	// Quorum: this node's lockd holds its quorum lease.
	Quorum bool `json:"quorum"`
	// Halted says why writes wait, if they do.
	Halted string `json:"halted,omitempty"`
	// Lost says why the slot was lost, if it was.
	Lost string `json:"lost,omitempty"`
	// Windows are the resync windows writes wait for.
	Windows []Window `json:"windows,omitempty"`
	// Takeovers are the slots this node is taking over.
	Takeovers []uint32 `json:"takeovers,omitempty"`
	// Jobs are the cluster jobs due (initial sync, rebuilds) and who runs
	// them.
	Jobs []JobStatus `json:"jobs,omitempty"`
	// Slots is the array's number of writer slots.
	Slots int `json:"slots"`
	// LastError is the last takeover scan's error (empty once a scan
	// succeeded).
	LastError string `json:"last_error,omitempty"`
}

// Status returns the coordinator's state.
func (c *Coordinator) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	sb := c.cfg.Local.Superblock()
	st := Status{Node: c.cfg.Node, Slot: -1, Quorum: c.cfg.Lockd.HasQuorum(), Windows: c.cfg.Gate.Windows(), Slots: sb.SlotCount()}
	if c.cfg.Slots != 0 {
		st.Slots = c.cfg.Slots
	}
	st.Jobs = c.jobStatus(sb, st.Windows)
	if c.slot != nil {
		st.Slot, st.Epoch = int(c.writer.Slot), c.writer.Epoch
	}
	if h := c.cfg.Gate.Halted(); h != nil {
		st.Halted = h.Error()
	}
	if c.lost != nil {
		st.Lost = c.lost.Error()
	}
	for s := range c.takeovers {
		st.Takeovers = append(st.Takeovers, s)
	}
	slices.Sort(st.Takeovers)
	if c.lastErr != nil {
		st.LastError = c.lastErr.Error()
	}
	return st
}
