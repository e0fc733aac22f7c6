package array

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid"
)

// Agent members (HOST:/PATH) keep write-intent marks of their own and
// fence stale writers. This file holds what the array does for them:
//
//   - Clear forwarding: after the array's bitmap cleared regions (the
//     lazy clearer, a finished resync, a clean stop), the array sends the
//     same regions, in member bytes, to every active agent member
//     (NBD_CMD_DDRAID_CLEAR). A failed forward only leaves marks at the
//     member host, which is safe. Nothing is cleared while degraded, since
//     the bitmap itself clears nothing then.
//   - Fencing: a member host that refuses this node's epoch answers
//     ErrFenced. That is not a member failure: the array stops all IO
//     (front-end requests fail with EIO), records nothing in the
//     superblock, fails no member, and reports itself "fenced" until it is
//     restarted with a newer epoch.

// errArrayFenced is what front-end IO gets once the array is fenced.
var errArrayFenced = fmt.Errorf("array is fenced (a member host refuses this node's epoch; restart with a newer one): %w", syscall.EIO)

// memberOptions returns how this array opens member devices.
func (a *Array) memberOptions() raid.MemberOptions {
	return raid.MemberOptions{Direct: a.opts.Direct, Remote: a.opts.Remote, Writer: a.opts.Writer}
}

// Fenced reports whether a member host has fenced this array's writer.
func (a *Array) Fenced() bool { return a.fenced.Load() }

// setFenced records that the array is fenced; the first call logs why.
func (a *Array) setFenced(err error) {
	if a.fenced.CompareAndSwap(false, true) {
		a.log.Error("a member host fenced this writer: all IO to the array stops; no member is failed", "err", err)
		if a.bm != nil {
			a.bm.SetDegraded(true) // keep every mark
		}
	}
}

// guard wraps the data area of an agent member so that a fenced answer
// fences the array, and records the member's clearer for forwarding.
// Other members are returned as they are.
func (a *Array) guard(role int, dev blockdev.Device) blockdev.Device {
	a.setClearer(role, dev)
	return a.fenceWrap(dev)
}

// fenceWrap is guard without recording the clearer (a replacement being
// copied, which becomes the role's member only at the swap).
func (a *Array) fenceWrap(dev blockdev.Device) blockdev.Device {
	if _, ok := dev.(raid.MemberClearer); !ok {
		return dev
	}
	return &fenceGuard{dev: dev, a: a}
}

// setClearer records dev as the role's clear forwarder if it is an agent
// member, and forgets the role's previous one.
func (a *Array) setClearer(role int, dev blockdev.Device) {
	c, _ := dev.(raid.MemberClearer)
	a.clrMu.Lock()
	defer a.clrMu.Unlock()
	for len(a.clearers) <= role {
		a.clearers = append(a.clearers, nil)
	}
	a.clearers[role] = c
}

// fenceGuard is an agent member's data area as the engine sees it.
type fenceGuard struct {
	dev blockdev.Device
	a   *Array
}

// check turns a fenced answer into the array's fenced state.
func (g *fenceGuard) check(err error) error {
	if err != nil && errors.Is(err, remote.ErrFenced) {
		g.a.setFenced(err)
	}
	return err
}

// stop refuses a write-type request once the array is fenced: nothing
// more is sent under the old epoch.
func (g *fenceGuard) stop() error {
	if g.a.fenced.Load() {
		return remote.ErrFenced
	}
	return nil
}

func (g *fenceGuard) ReadAt(p []byte, off int64) (int, error) {
	n, err := g.dev.ReadAt(p, off)
	return n, g.check(err)
}

func (g *fenceGuard) WriteAt(p []byte, off int64) (int, error) {
	if err := g.stop(); err != nil {
		return 0, err
	}
	n, err := g.dev.WriteAt(p, off)
	return n, g.check(err)
}

func (g *fenceGuard) Flush() error { return g.check(g.dev.Flush()) }

func (g *fenceGuard) Trim(off, length int64) error {
	if err := g.stop(); err != nil {
		return err
	}
	return g.check(g.dev.Trim(off, length))
}

func (g *fenceGuard) Zero(off, length int64) error {
	if err := g.stop(); err != nil {
		return err
	}
	return g.check(g.dev.Zero(off, length))
}

func (g *fenceGuard) Size() int64    { return g.dev.Size() }
func (g *fenceGuard) BlockSize() int { return g.dev.BlockSize() }
func (g *fenceGuard) Close() error   { return g.dev.Close() }
func (g *fenceGuard) Clear(off, length int64) error {
	if err := g.stop(); err != nil {
		return err
	}
	return g.check(g.dev.(raid.MemberClearer).Clear(off, length))
}

// frontGate is the array's front: once fenced, every request fails with EIO.
type frontGate struct {
	dev blockdev.Device
	a   *Array
}

func (g *frontGate) closed() error {
	if g.a.fenced.Load() {
		return fmt.Errorf("%s: %w", g.a.opts.Name, errArrayFenced)
	}
	return nil
}

// after replaces the error of a request that failed because the array
// was fenced meanwhile (the members' EPERM must not reach clients as a
// read-only device).
func (g *frontGate) after(err error) error {
	if err != nil {
		if ferr := g.closed(); ferr != nil {
			return ferr
		}
	}
	return err
}

func (g *frontGate) ReadAt(p []byte, off int64) (int, error) {
	if err := g.closed(); err != nil {
		return 0, err
	}
	n, err := g.dev.ReadAt(p, off)
	return n, g.after(err)
}

func (g *frontGate) WriteAt(p []byte, off int64) (int, error) {
	if err := g.closed(); err != nil {
		return 0, err
	}
	n, err := g.dev.WriteAt(p, off)
	if err == nil {
		err = g.closed() // fenced meanwhile: the write may not have reached every member
	}
	return n, g.after(err)
}

func (g *frontGate) Flush() error {
	if err := g.closed(); err != nil {
		return err
	}
	return g.after(g.dev.Flush())
}

func (g *frontGate) Trim(off, length int64) error {
	if err := g.closed(); err != nil {
		return err
	}
	return g.after(g.dev.Trim(off, length))
}

func (g *frontGate) Zero(off, length int64) error {
	if err := g.closed(); err != nil {
		return err
	}
	return g.after(g.dev.Zero(off, length))
}

func (g *frontGate) Size() int64    { return g.dev.Size() }
func (g *frontGate) BlockSize() int { return g.dev.BlockSize() }
func (g *frontGate) Close() error   { return g.dev.Close() }

// Extents implements blockdev.Extenter by asking the array.
func (g *frontGate) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	if err := g.closed(); err != nil {
		return dst, err
	}
	return blockdev.ExtentsOf(g.dev, dst, off, length)
}

// CanFastZero implements blockdev.FastZeroer by asking the array.
func (g *frontGate) CanFastZero() bool { return blockdev.CanFastZero(g.dev) }

// ZeroNoHole implements blockdev.NoHoleZeroer with the array.
func (g *frontGate) ZeroNoHole(off, length int64) error {
	if err := g.closed(); err != nil {
		return err
	}
	return g.after(blockdev.ZeroNoHole(g.dev, off, length))
}

// forwardClears sends cleared bitmap regions to the agent members, in
// member data-area bytes: a raid35 member holds 1/(M−1) of every block,
// a mirror member all of it. Called by the bitmap after its own clear.
func (a *Array) forwardClears(regions []uint64) {
	if a.fenced.Load() || a.sync == nil {
		return
	}
	a.clrMu.Lock()
	clearers := append([]raid.MemberClearer(nil), a.clearers...)
	a.clrMu.Unlock()
	if len(clearers) == 0 {
		return
	}
	sb := a.Superblock()
	div := int64(1)
	if sb.Level == string(raid.LevelRaid35) {
		div = int64(len(sb.Members) - 1)
	}
	states := a.sync.MemberStates()
	for _, r := range a.ranges(regions) {
		for role, c := range clearers {
			if c == nil || role >= len(states) || states[role] != raid.MemberActive {
				continue
			}
			if err := c.Clear(r.Off/div, r.Len/div); err != nil {
				a.log.Warn("forwarding a bitmap clear to an agent member failed; its marks stay", "role", role, "err", err)
			}
		}
	}
}

// clearRebuilt runs once a recovery or a replace has made role's new
// device consistent: see clearUnmarked.
func (a *Array) clearRebuilt(role int) { a.clearUnmarked([]int{role}) }

// clearUnmarked runs when a background job that writes members without
// the array's bitmap (a rebuild, the initial sync, a repair) has finished.
// Every region the job wrote went through the member hosts, which marked
// them; the array's bitmap never marked them, so no forwarded clear would
// ever remove them. The hosts of roles are told to clear every region the
// array's bitmap does not hold dirty now. A write racing this clear may
// lose its mark on one host, but every other member's host marked it too,
// which keeps the union of the hosts' marks sufficient.
func (a *Array) clearUnmarked(roles []int) {
	if a.fenced.Load() || a.bm == nil {
		return
	}
	var cs []raid.MemberClearer
	a.clrMu.Lock()
	for _, role := range roles {
		if role < len(a.clearers) && a.clearers[role] != nil {
			cs = append(cs, a.clearers[role])
		}
	}
	a.clrMu.Unlock()
	if len(cs) == 0 {
		return
	}
	dirty := map[uint64]bool{}
	for _, r := range a.bm.Dirty() {
		dirty[r] = true
	}
	var clean []uint64
	for r := range a.bm.NumRegions() {
		if !dirty[r] {
			clean = append(clean, r)
		}
	}
	sb := a.Superblock()
	div := int64(1)
	if sb.Level == string(raid.LevelRaid35) {
		div = int64(len(sb.Members) - 1)
	}
	for _, c := range cs {
		for _, r := range a.ranges(clean) {
			if err := c.Clear(r.Off/div, r.Len/div); err != nil {
				a.log.Warn("clearing an agent member's marks after a background job failed; they stay", "err", err)
				break
			}
		}
	}
}

// allRoles lists every role of the array.
func (a *Array) allRoles() []int {
	sb := a.Superblock()
	out := make([]int, len(sb.Members))
	for i := range out {
		out[i] = i
	}
	return out
}
