package array

import (
	"context"
	"errors"
	"fmt"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// What the cluster coordinator (cluster/coord) needs from a running array
// when several writers serve it (docs/cluster-design.md):
//
//   - a write gate in front of the bitmap: every write, trim and zero asks
//     it first, so writes wait while they overlap a resync window another
//     writer announced, or while this node has no quorum;
//   - ApplySuperblock: store a superblock another writer broadcast and
//     follow it;
//   - CanOpen: can this node open a member being added (NEWDISK);
//   - ResyncRange: resync a range of a failed writer's dirty regions, or
//     of the initial sync; RecoverRange: rebuild a range of a member (both
//     cluster jobs, run by one writer for all).

// Cluster is how an array in cluster mode changes its superblock
// (cluster/coord's Coordinator implements it, adapted by cluster/serve):
// fn changes a copy under the cluster's token lock, and the change counts
// once every live writer stored it (this one through ApplySuperblock). fn
// returns ErrNoChange when there is nothing to do. AddMember first checks
// that every live writer can open spec.
// ScrubWindow announces [lo, hi) as this writer's scrub window (writes
// there wait on every writer) and EndScrubWindow ends it: a check runs
// each chunk inside one.
type Cluster interface {
	Update(ctx context.Context, what string, fn func(*meta.Array) error) error
	AddMember(ctx context.Context, spec string, fn func(*meta.Array) error) error
	ScrubWindow(ctx context.Context, lo, hi int64) error
	EndScrubWindow()
}

// scrubSyncer checks each chunk inside a scrub window (cluster mode): no
// other writer changes a block while it is compared or repaired.
type scrubSyncer struct {
	raid.Syncer
	cl Cluster
}

func (s scrubSyncer) Check(off, length int64, repair bool) (int64, error) {
	if err := s.cl.ScrubWindow(context.Background(), off, off+length); err != nil {
		return 0, err
	}
	return s.Syncer.Check(off, length, repair)
}

// WriteGate admits writes (cluster/coord.WriteGate implements it). Enter
// may wait; every admitted write calls Leave with Enter's ticket when it
// is done. Leave may wait too (a member failure not yet known to every
// writer holds the acknowledgement), and the write fails if it returns an
// error (the write must not be acknowledged).
type WriteGate interface {
	Enter(ctx context.Context, off, length int64) (ticket uint32, err error)
	Leave(ticket uint32) error
}

// gatedDevice asks the array's write gate before each write-type request.
// Without a gate it passes everything through.
type gatedDevice struct {
	dev  blockdev.Device
	gate WriteGate
}

// gateWrap puts the gate of o in front of dev, if there is one.
func gateWrap(dev blockdev.Device, gate WriteGate) blockdev.Device {
	if gate == nil {
		return dev
	}
	return &gatedDevice{dev: dev, gate: gate}
}

var (
	_ blockdev.Device       = (*gatedDevice)(nil)
	_ blockdev.Extenter     = (*gatedDevice)(nil)
	_ blockdev.FastZeroer   = (*gatedDevice)(nil)
	_ blockdev.NoHoleZeroer = (*gatedDevice)(nil)
)

func (g *gatedDevice) through(off, length int64, fn func() error) error {
	t, err := g.gate.Enter(context.Background(), off, length)
	if err != nil {
		return err
	}
	err = fn()
	if lerr := g.gate.Leave(t); err == nil {
		err = lerr
	}
	return err
}

func (g *gatedDevice) ReadAt(p []byte, off int64) (int, error) { return g.dev.ReadAt(p, off) }

func (g *gatedDevice) WriteAt(p []byte, off int64) (n int, err error) {
	err = g.through(off, int64(len(p)), func() error {
		n, err = g.dev.WriteAt(p, off)
		return err
	})
	return n, err
}

func (g *gatedDevice) Flush() error { return g.dev.Flush() }

func (g *gatedDevice) Trim(off, length int64) error {
	return g.through(off, length, func() error { return g.dev.Trim(off, length) })
}

func (g *gatedDevice) Zero(off, length int64) error {
	return g.through(off, length, func() error { return g.dev.Zero(off, length) })
}

func (g *gatedDevice) ZeroNoHole(off, length int64) error {
	return g.through(off, length, func() error { return blockdev.ZeroNoHole(g.dev, off, length) })
}

func (g *gatedDevice) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	return blockdev.ExtentsOf(g.dev, dst, off, length)
}

func (g *gatedDevice) CanFastZero() bool { return blockdev.CanFastZero(g.dev) }
func (g *gatedDevice) Size() int64       { return g.dev.Size() }
func (g *gatedDevice) BlockSize() int    { return g.dev.BlockSize() }
func (g *gatedDevice) Close() error      { return g.dev.Close() }

// errFailedElsewhere is the error a member gets when another writer's
// superblock says it failed.
var errFailedElsewhere = errors.New("failed by another writer of the array")

// ApplySuperblock stores sb (a cluster-wide update, its event counter
// already bumped) and makes the running array follow it:
//   - a member sb records as failed is failed here too (and a spare, if
//     there is one, is put into its role);
//   - a device put into a failed or missing role (add-device, a spare)
//     is opened and written from now on, as recovering, while one writer
//     rebuilds it (a cluster job);
//   - a rebuilt member (recovering → active) serves reads again.
//
// Other changes of the member table (the path of a role that is in use)
// are stored and take effect when the array is assembled again, which a
// warning says.
func (a *Array) ApplySuperblock(sb *meta.Array) error {
	a.updMu.Lock()
	defer a.updMu.Unlock()
	cur := a.Superblock()
	if sb.UUID != cur.UUID || sb.Name != cur.Name {
		return fmt.Errorf("superblock of %s (%s) offered to array %s (%s)", sb.Name, sb.UUID, cur.Name, cur.UUID)
	}
	if sb.Events < cur.Events {
		return fmt.Errorf("array %s: superblock event %d is older than this node's %d", cur.Name, sb.Events, cur.Events)
	}
	if len(sb.Members) != len(cur.Members) {
		return fmt.Errorf("array %s: the superblock has %d members, the running array %d: assemble it again", cur.Name, len(sb.Members), len(cur.Members))
	}
	if err := meta.View(a.opts.StateDir, func(s *meta.Store) error { return s.Put(sb) }); err != nil {
		return fmt.Errorf("array %s: store superblock event %d: %w", cur.Name, sb.Events, err)
	}
	next := *sb
	next.Members = append([]meta.Member(nil), sb.Members...)
	next.Spares = append([]meta.Member(nil), sb.Spares...)
	a.mu.Lock()
	a.sb = &next
	a.mu.Unlock()
	if a.sync == nil {
		return nil
	}
	var reassemble []int
	var errs []error
	states := a.sync.MemberStates()
	for role, m := range sb.Members {
		old := cur.Members[role]
		if m.State == old.State && m.Path == old.Path && m.UUID == old.UUID {
			continue
		}
		engine := states[role]
		switch {
		case m.State == meta.StateFailed:
			if engine == raid.MemberActive || engine == raid.MemberRecovering {
				a.sync.Fail(role, errFailedElsewhere) // onFail finds the superblock already says so
			}
			if len(sb.Spares) > 0 {
				// Every writer tries; under the token the first one puts
				// the spare in, the others find nothing left to do.
				a.bg.Add(1)
				go func() {
					defer a.bg.Done()
					a.useSpare()
				}()
			}
		case m.State == meta.StateMissing:
			// Removed: the engine has it failed already.
		case m.State == meta.StateRecovering && (engine == raid.MemberFailed || engine == raid.MemberMissing):
			if err := a.beginRecovery(role, nil); err != nil {
				err = fmt.Errorf("array %s: open member %d (%s) being added: %w", cur.Name, role, m.Path, err)
				errs = append(errs, err)
				a.failUnopened(role, err)
				continue
			}
			a.log.Info("member added by the cluster: written from now on, rebuilt by a cluster job", "role", role, "member", m.Path)
		case m.State == meta.StateActive && old.State == meta.StateRecovering && m.UUID == old.UUID && engine == raid.MemberRecovering:
			if err := a.sync.FinishRecovery(role); err != nil {
				errs = append(errs, fmt.Errorf("array %s: member %d rebuilt: %w", cur.Name, role, err))
				continue
			}
			a.log.Info("member rebuilt", "role", role, "member", m.Path)
			a.bg.Add(1)
			go func() { // it flushes and talks to member hosts: not under updMu
				defer a.bg.Done()
				a.recovered(role)
			}()
		default:
			reassemble = append(reassemble, role)
		}
	}
	if len(reassemble) > 0 {
		a.log.Warn("another writer changed members in ways the running array cannot follow; stored, they take effect at the next assembly",
			"events", sb.Events, "roles", reassemble)
	}
	return errors.Join(errs...)
}

// CanOpen checks that this node can open the member spec (without writer
// identity: nothing is marked or fenced) and closes it again.
func (a *Array) CanOpen(ctx context.Context, spec string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	path, err := raid.MemberPath(spec)
	if err != nil {
		return err
	}
	dev, err := raid.OpenMemberDevice(path, raid.MemberOptions{Direct: a.opts.Direct, Remote: a.opts.Remote, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("open %s: %w", spec, err)
	}
	return dev.Close()
}

// ResyncRange makes [off, off+length) consistent from its data (a failed
// writer's dirty region, taken over by this node). The range is marked in
// this array's own bitmap while it is resynced, so the marks the resync's
// writes leave at agent members under this node's slot are cleared later
// by the array's lazy clear, like those of any write.
func (a *Array) ResyncRange(ctx context.Context, off, length int64) error {
	if a.sync == nil {
		return nil // linear: nothing to make consistent
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	end, err := a.bm.StartWrite(off, length)
	if err != nil {
		return fmt.Errorf("array %s: resync %d+%d: %w", a.opts.Name, off, length, err)
	}
	defer end()
	if err := a.sync.Resync(off, length); err != nil {
		return fmt.Errorf("array %s: resync %d+%d: %w", a.opts.Name, off, length, err)
	}
	return nil
}

// failUnopened fails a role whose new device this node cannot open: its
// writes would miss the device, so nobody may rebuild it (recorded
// cluster-wide, off the caller's locks).
func (a *Array) failUnopened(role int, err error) {
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		a.onFail(role, err)
	}()
}

// RecoverRange rebuilds member role's part of [off, off+length) from the
// other members (a cluster job's step; the member is recovering on every
// writer, so their writes reach it too). The range is marked in this
// array's bitmap meanwhile, like ResyncRange.
func (a *Array) RecoverRange(ctx context.Context, role int, off, length int64) error {
	if a.sync == nil {
		return fmt.Errorf("linear array %s has no members to rebuild", a.opts.Name)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	end, err := a.bm.StartWrite(off, length)
	if err != nil {
		return fmt.Errorf("array %s: rebuild member %d %d+%d: %w", a.opts.Name, role, off, length, err)
	}
	defer end()
	if err := a.sync.Recover(role, off, length); err != nil {
		return fmt.Errorf("array %s: rebuild member %d %d+%d: %w", a.opts.Name, role, off, length, err)
	}
	return nil
}

// FenceWriter puts the array in its fenced state (fence.go) for a reason
// other than a member host's refusal: in cluster mode, this node's writer
// slot was taken from it (the majority purged its lock and fences its
// epoch at the member hosts). IO stops at once; no member is failed.
func (a *Array) FenceWriter(err error) { a.setFenced(err) }
