package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/meta"
)

// A job is work over the whole array that one writer does for all of
// them: the initial sync ("sync"), or the rebuild of a member being
// recovered ("recover/R"). The superblock says which jobs are due
// (InitialSync; a member in state recovering) and how far each got
// (SyncedTo; Member.Rebuilt). Every writer's loop tries the job's lock
// "job/NAME" (EX, NOQUEUE); the one that gets it runs the job region by
// region, each under an announced window (writes there wait on every
// node), and checkpoints its progress in the superblock. When the runner
// dies its lock is purged and another writer's loop takes the job over
// from the last checkpoint (md's switch-recovery). The others show the
// job as REMOTE (its windows name the runner) or PENDING.
type job struct {
	Name string
	// Role is the member rebuilt; -1 for the initial sync.
	Role int
	// Member is the UUID of the device being rebuilt: a job for an older
	// device of the role must not finish a newer one.
	Member meta.UUID
	// From is the checkpoint: everything before it is done.
	From int64
	// DirtyOnly: a re-add, only the regions some writer marked are rebuilt.
	DirtyOnly bool
}

// jobSlotBase: a job's windows carry a slot number above every writer
// slot (meta.MaxSlots), jobSlotBase+1+role (the initial sync: +0).
const jobSlotBase = 1 << 31

// slot is the window slot of the job's windows.
func (j job) slot() uint32 { return jobSlotBase + uint32(j.Role+1) }

// scrubSlot is the window slot of a writer's scrub (`ddraid check`).
const scrubSlot = 1<<32 - 1

// jobOfSlot names the job of a window slot, or "" for a writer slot.
func jobOfSlot(slot uint32) string {
	if slot < jobSlotBase {
		return ""
	}
	if slot == scrubSlot {
		return "check"
	}
	if slot == jobSlotBase {
		return "sync"
	}
	return "recover/" + strconv.Itoa(int(slot-jobSlotBase-1))
}

// Job names the job whose window w is, or "" when w is a takeover's.
func (w Window) Job() string { return jobOfSlot(w.Slot) }

// jobsOf lists the jobs sb says are due.
func jobsOf(sb meta.Array) []job {
	var out []job
	if sb.InitialSync {
		out = append(out, job{Name: "sync", Role: -1, From: sb.SyncedTo})
	}
	for role, m := range sb.Members {
		if m.State == meta.StateRecovering {
			out = append(out, job{Name: "recover/" + strconv.Itoa(role), Role: role, Member: m.UUID, From: m.Rebuilt, DirtyOnly: m.DirtyOnly})
		}
	}
	return out
}

// ScrubWindow announces [lo, hi) as this node's scrub window: writes there
// wait on every writer, this one included, until the window moves or
// EndScrubWindow ends it. A check (and its repairs) inside it reads no
// block another writer is changing.
func (c *Coordinator) ScrubWindow(ctx context.Context, lo, hi int64) error {
	ctx, cancel := c.waitCtx(ctx)
	defer cancel()
	return c.announce(ctx, Window{Owner: c.cfg.Node, Slot: scrubSlot, Lo: lo, Hi: hi})
}

// EndScrubWindow ends this node's scrub window everywhere.
func (c *Coordinator) EndScrubWindow() { c.endWindow(scrubSlot) }

// jobResource is the lock of a job.
func jobResource(name string) string { return "job/" + name }

// jobRun is a job running on this node.
type jobRun struct {
	done, total int64
}

// JobStatus is a job as `ddraid status` shows it.
type JobStatus struct {
	Name string `json:"name"`
	// State: "running" (here), "remote" (Runner runs it), "pending"
	// (nobody right now: a writer's loop takes it soon).
	State  string       `json:"state"`
	Runner lockd.NodeID `json:"runner,omitempty"`
	// Done and Total: bytes of the array; Done is the runner's own count
	// here, the last checkpoint elsewhere.
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

// startJobs starts a goroutine per due job that is not running here; each
// tries the job's lock once and runs the job if it gets it.
func (c *Coordinator) startJobs() {
	jobs := jobsOf(c.cfg.Local.Superblock())
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range jobs {
		if c.trying[j.Name] {
			continue
		}
		c.trying[j.Name] = true
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			err := c.tryJob(j)
			c.mu.Lock()
			delete(c.trying, j.Name)
			c.mu.Unlock()
			if err != nil {
				c.log.Warn("job", "job", j.Name, "err", err)
			}
		}()
	}
}

// tryJob runs j if this node gets its lock.
func (c *Coordinator) tryJob(j job) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	lctx, lcancel := c.waitCtx(ctx)
	l, err := c.ls.Lock(lctx, jobResource(j.Name), lockd.EX, lockd.NoQueue)
	lcancel()
	if errors.Is(err, lockd.ErrAgain) {
		return nil // another writer runs it
	}
	if err != nil {
		return fmt.Errorf("%s: take its lock: %w", j.Name, err)
	}
	defer c.unlock(l)
	// Read it again under the lock: the last runner may have finished it
	// or moved its checkpoint since.
	due := jobsOf(c.cfg.Local.Superblock())
	i := slices.IndexFunc(due, func(k job) bool { return k.Name == j.Name && k.Member == j.Member })
	if i < 0 {
		return nil
	}
	return c.runJob(ctx, l, due[i])
}

// runJob does j region by region under windows, checkpointing, and
// records it done.
func (c *Coordinator) runJob(ctx context.Context, l *lockd.Lock, j job) error {
	regionSize, size := c.geometry()
	spans, err := c.jobSpans(ctx, j, regionSize, size)
	if err != nil {
		return fmt.Errorf("%s: %w", j.Name, err)
	}
	run := &jobRun{}
	for _, s := range spans {
		run.total += s[1] - s[0]
	}
	c.mu.Lock()
	c.running[j.Name] = run
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.running, j.Name)
		c.mu.Unlock()
	}()
	c.log.Info("running a cluster job", "job", j.Name, "from", j.From, "bytes", run.total, "dirty_only", j.DirtyOnly)
	defer c.endWindow(j.slot())
	start, last := time.Now(), time.Now()
	for _, s := range spans {
		for off := s[0]; off < s[1]; off += regionSize {
			n := min(regionSize, s[1]-off)
			if err := checkHeld(l); err != nil {
				return fmt.Errorf("%s: %w", j.Name, err)
			}
			if err := c.announce(ctx, Window{Owner: c.cfg.Node, Slot: j.slot(), Lo: off, Hi: off + n}); err != nil {
				return fmt.Errorf("%s: %w", j.Name, err)
			}
			if j.Role < 0 {
				err = c.cfg.Local.Resync(ctx, off, n)
			} else {
				err = c.cfg.Local.Recover(ctx, j.Role, off, n)
			}
			if err != nil {
				return fmt.Errorf("%s at %d: %w", j.Name, off, err)
			}
			c.mu.Lock()
			run.done += n
			done := run.done
			c.mu.Unlock()
			if d := c.cfg.Throttle.Delay(done, time.Since(start), false); d > 0 {
				// The window stays on the region just done meanwhile (it
				// names the runner to the others' status).
				select {
				case <-ctx.Done():
					return fmt.Errorf("%s: %w", j.Name, ctx.Err())
				case <-time.After(d):
				}
			}
			if time.Since(last) >= c.cfg.CheckpointEvery {
				last = time.Now()
				if err := c.checkpoint(ctx, j, off+n); err != nil {
					c.log.Warn("job checkpoint", "job", j.Name, "err", err)
				}
			}
		}
	}
	if err := checkHeld(l); err != nil {
		return fmt.Errorf("%s: %w", j.Name, err)
	}
	if _, err := c.Update(ctx, j.Name+" done", func(sb *meta.Array) error { return j.finish(sb) }); err != nil {
		return err
	}
	c.log.Info("cluster job done", "job", j.Name, "bytes", run.total)
	if j.Role >= 0 && !degraded(c.cfg.Local.Superblock()) {
		c.sweep(ctx)
	}
	return nil
}

// sweep resyncs and clears the marks left under the free writer slots:
// a takeover while the array was degraded kept them for the rebuild, and
// now that the array is whole they only cost work. Slots held by a live
// writer are skipped (their marks are theirs to clear).
func (c *Coordinator) sweep(ctx context.Context) {
	c.mu.Lock()
	mine := c.writer.Slot
	c.mu.Unlock()
	for n := range uint32(c.slots()) {
		if n == mine {
			continue
		}
		if err := c.tryTakeover(ctx, n, true); err != nil {
			c.log.Warn("clearing the marks of a free slot after a rebuild", "slot", n, "err", err)
		}
	}
}

// jobSpans returns the byte ranges [lo, hi) j still has to do: from its
// checkpoint to the end, or for a re-add the regions from the checkpoint
// on that any writer slot has marked at the member hosts (the marks stay
// while a member is not active).
func (c *Coordinator) jobSpans(ctx context.Context, j job, regionSize, size int64) ([][2]int64, error) {
	if !j.DirtyOnly {
		if j.From >= size {
			return nil, nil
		}
		return [][2]int64{{j.From, size}}, nil
	}
	hosts, err := c.cfg.Local.MemberHosts()
	if err != nil {
		return nil, err
	}
	var dirty []uint64
	for n := range uint32(c.slots()) {
		rs, err := dirtyUnion(ctx, hosts, n, 0)
		if err != nil {
			return nil, err
		}
		dirty = append(dirty, rs...)
	}
	slices.Sort(dirty)
	dirty = slices.Compact(dirty)
	var out [][2]int64
	for _, r := range dirty {
		lo := int64(r) * regionSize
		hi := min(lo+regionSize, size)
		if lo < j.From || lo >= size {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k][1] == lo {
			out[k][1] = hi
			continue
		}
		out = append(out, [2]int64{lo, hi})
	}
	return out, nil
}

// checkpoint records that j is done up to at.
func (c *Coordinator) checkpoint(ctx context.Context, j job, at int64) error {
	_, err := c.Update(ctx, fmt.Sprintf("%s checkpoint at %d", j.Name, at), func(sb *meta.Array) error {
		if err := j.current(sb); err != nil {
			return err
		}
		if j.Role < 0 {
			sb.SyncedTo = at
		} else {
			sb.Members[j.Role].Rebuilt = at
		}
		return nil
	})
	return err
}

// current checks that sb still has j due.
func (j job) current(sb *meta.Array) error {
	if j.Role < 0 {
		if !sb.InitialSync {
			return errors.New("the initial sync is no longer due")
		}
		return nil
	}
	if j.Role >= len(sb.Members) {
		return fmt.Errorf("no member %d", j.Role)
	}
	m := sb.Members[j.Role]
	if m.State != meta.StateRecovering || m.UUID != j.Member {
		return fmt.Errorf("member %d is no longer the device being rebuilt (%s, %s)", j.Role, m.Path, m.State)
	}
	return nil
}

// finish records j done in sb.
func (j job) finish(sb *meta.Array) error {
	if err := j.current(sb); err != nil {
		return err
	}
	if j.Role < 0 {
		sb.InitialSync, sb.SyncedTo = false, 0
		return nil
	}
	m := &sb.Members[j.Role]
	m.State, m.Rebuilt, m.DirtyOnly = meta.StateActive, 0, false
	return nil
}

// jobStatus reports the due jobs: running here, run by another node (its
// window names it), or pending.
func (c *Coordinator) jobStatus(sb meta.Array, windows []Window) []JobStatus {
	var out []JobStatus
	for _, j := range jobsOf(sb) {
		st := JobStatus{Name: j.Name, State: "pending", Done: j.From, Total: sb.Size}
		if r := c.running[j.Name]; r != nil {
			st.State, st.Runner, st.Done, st.Total = "running", c.cfg.Node, r.done, r.total
		} else if i := slices.IndexFunc(windows, func(w Window) bool { return w.Slot == j.slot() && w.Owner != c.cfg.Node }); i >= 0 {
			st.State, st.Runner = "remote", windows[i].Owner
		}
		out = append(out, st)
	}
	return out
}

// String is the job's one-line state, e.g. "recover/2: REMOTE on node1
// (checkpoint at 40.0%)".
func (s JobStatus) String() string {
	pct := 0.0
	if s.Total > 0 {
		pct = 100 * float64(s.Done) / float64(s.Total)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: ", s.Name)
	switch s.State {
	case "running":
		fmt.Fprintf(&b, "running here, %.1f%% of %d bytes", pct, s.Total)
	case "remote":
		fmt.Fprintf(&b, "REMOTE on %s (checkpoint at %.1f%%)", s.Runner, pct)
	default:
		fmt.Fprintf(&b, "PENDING (checkpoint at %.1f%%)", pct)
	}
	return b.String()
}
