package coord

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/meta"
)

// Scan probes every other slot once and takes over those whose holder is
// gone (see docs/cluster-design.md, Takeover). Busy slots (held by a live
// writer, or by another survivor taking them over) are skipped. It returns
// the errors of the takeovers that failed; they are retried at the next
// scan.
func (c *Coordinator) Scan(ctx context.Context) error {
	c.mu.Lock()
	mine, joined := c.writer.Slot, c.slot != nil
	c.mu.Unlock()
	if !joined {
		return ErrNotJoined
	}
	var errs []error
	for n := range uint32(c.slots()) {
		if n == mine {
			continue
		}
		if err := c.tryTakeover(ctx, n, false); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// tryTakeover takes slot n if it is free and resyncs what its last holder
// left marked. A slot left clean is skipped unless sweep is set: after a
// rebuild, the marks a degraded takeover kept under a free slot are
// resynced and cleared too.
func (c *Coordinator) tryTakeover(ctx context.Context, n uint32, sweep bool) error {
	ctx, cancel := c.waitCtx(ctx)
	defer cancel()
	l, err := c.ls.Lock(ctx, slotResource(n), lockd.EX, lockd.NoQueue|lockd.ValBlk)
	if errors.Is(err, lockd.ErrAgain) {
		return nil // a live writer, or another survivor
	}
	if err != nil {
		return fmt.Errorf("takeover of slot %d: %w", n, err)
	}
	lvb, _, valid := l.LVB()
	if valid && isClean(lvb) && !sweep {
		c.unlock(l) // left clean: nothing to do
		return nil
	}
	tok, err := l.Token()
	if err != nil {
		c.unlock(l)
		return fmt.Errorf("takeover of slot %d: %w", n, err)
	}
	c.mu.Lock()
	c.takeovers[n] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.takeovers, n)
		c.mu.Unlock()
	}()
	if sweep {
		c.log.Debug("sweeping a free writer slot", "slot", n, "epoch", tok.Epoch)
	} else {
		lvl := slog.LevelInfo
		if c.repeats.quiet(fmt.Sprintf("takeover/%d", n), fmt.Sprint(tok.Epoch), time.Now()) {
			lvl = slog.LevelDebug // a retry: the scan's warning says why
		}
		c.log.Log(ctx, lvl, "taking over a writer slot", "slot", n, "epoch", tok.Epoch)
	}
	if err := c.recoverSlot(ctx, n, l, tok.Epoch); err != nil {
		// Keep the value block as it is (not clean): the next scan, ours or
		// another survivor's, starts again.
		c.unlock(l)
		return fmt.Errorf("takeover of slot %d: %w", n, err)
	}
	l.SetLVB(lvbClean)
	if err := l.Unlock(ctx); err != nil {
		return fmt.Errorf("takeover of slot %d: release: %w", n, err)
	}
	c.log.Info("took over a writer slot", "slot", n)
	return nil
}

// recoverSlot fences slot n at every member host with epoch, reads its
// dirty regions (the union over the hosts), resyncs them group by group
// under announced windows and clears them. l is the slot's lock, held EX;
// it is checked before every step that changes data.
func (c *Coordinator) recoverSlot(ctx context.Context, n uint32, l *lockd.Lock, epoch uint64) error {
	hosts, err := c.cfg.Local.MemberHosts()
	if err != nil {
		return err
	}
	if err := fenceAll(ctx, hosts, n, epoch); err != nil {
		return err
	}
	dirty, err := dirtyUnion(ctx, hosts, n, epoch)
	if err != nil {
		return err
	}
	if len(dirty) == 0 {
		return nil
	}
	if degraded(c.cfg.Local.Superblock()) {
		// No redundancy to restore without the missing member: the marks
		// stay at the hosts, and its rebuild (a re-add rebuilds the union
		// of every slot's marks) makes these regions whole.
		c.log.Warn("array degraded: a slot's dirty regions wait for the rebuild", "slot", n, "regions", len(dirty))
		return nil
	}
	c.log.Info("resyncing a slot's dirty regions", "slot", n, "regions", len(dirty))
	regionSize, size := c.geometry()
	defer c.endWindow(n)
	for _, g := range planGroups(dirty, c.cfg.GroupRegions) {
		if err := c.resyncGroup(ctx, n, l, epoch, g, hosts, regionSize, size); err != nil {
			return err
		}
	}
	return nil
}

// resyncGroup resyncs one group's regions under resync/K and a window,
// then clears them at every host.
func (c *Coordinator) resyncGroup(ctx context.Context, n uint32, l *lockd.Lock, epoch uint64, g group, hosts []MemberHost, regionSize, size int64) error {
	gl, err := c.ls.Lock(ctx, resyncResource(g.K), lockd.EX, 0)
	if err != nil {
		return fmt.Errorf("resync group %d: %w", g.K, err)
	}
	defer c.unlock(gl)
	lo, hi := g.span(regionSize, size)
	if err := c.announce(ctx, Window{Owner: c.cfg.Node, Slot: n, Lo: lo, Hi: hi}); err != nil {
		return err
	}
	for _, r := range g.Regions {
		if err := checkHeld(l); err != nil {
			return err
		}
		off := int64(r) * regionSize
		if off >= size {
			continue // a mark beyond the end (a shrunk array): nothing to do
		}
		if err := c.cfg.Local.Resync(ctx, off, min(regionSize, size-off)); err != nil {
			return fmt.Errorf("resync region %d: %w", r, err)
		}
	}
	if err := checkHeld(l); err != nil {
		return err
	}
	if degraded(c.cfg.Local.Superblock()) {
		// A member that is failed or being rebuilt missed these writes:
		// the marks stay, for its rebuild (a re-add rebuilds the union
		// of every slot's marks).
		return nil
	}
	return clearAll(ctx, hosts, n, epoch, g.Regions)
}

// degraded reports whether a member of sb is not active.
func degraded(sb meta.Array) bool {
	for _, m := range sb.Members {
		if m.State != meta.StateActive {
			return true
		}
	}
	return false
}

// checkHeld fails once the lock (a slot's, a job's) is not valid here (no
// quorum, or lost): another node may take the work over, and ours must
// stop.
func checkHeld(l *lockd.Lock) error {
	if _, err := l.Token(); err != nil {
		return fmt.Errorf("%s lock no longer valid: %w", l.Resource(), err)
	}
	return nil
}

// announce installs w here and at every other live node. Every node must
// acknowledge (its writes in flight over w finished) before the resync may
// touch w.
func (c *Coordinator) announce(ctx context.Context, w Window) error {
	c.mu.Lock()
	c.seq++
	w.Seq = c.seq
	if w.Empty() {
		delete(c.mine, w.Slot)
	} else {
		c.mine[w.Slot] = w
	}
	c.mu.Unlock()
	if err := c.cfg.Gate.Install(ctx, w); err != nil {
		return fmt.Errorf("resync window [%d, %d) here: %w", w.Lo, w.Hi, err)
	}
	if _, err := c.cfg.Router.m.Broadcast(ctx, cluster.Message{Type: TypeResyncing, Array: c.uuid, Body: EncodeWindow(w)}); err != nil {
		return fmt.Errorf("announce resync window [%d, %d) of slot %d: %w", w.Lo, w.Hi, w.Slot, err)
	}
	return nil
}

// endWindow ends this node's window for slot n everywhere (best effort:
// a node that misses it keeps the window until the next announcement of
// this node or until this node leaves).
func (c *Coordinator) endWindow(n uint32) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	if err := c.announce(ctx, Window{Owner: c.cfg.Node, Slot: n}); err != nil {
		c.log.Warn("ending a resync window", "slot", n, "err", err)
	}
}

// handleResyncing installs a window another node announced.
func (c *Coordinator) handleResyncing(ctx context.Context, from lockd.NodeID, body []byte) ([]byte, error) {
	w, err := DecodeWindow(from, body)
	if err != nil {
		return nil, err
	}
	if err := c.cfg.Gate.Install(ctx, w); err != nil {
		return nil, err
	}
	return nil, nil
}

// handleWindows answers with the windows this node announced.
func (c *Coordinator) handleWindows() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	ws := make([]Window, 0, len(c.mine))
	for _, w := range c.mine {
		ws = append(ws, w)
	}
	slices.SortFunc(ws, func(a, b Window) int { return int(a.Slot) - int(b.Slot) })
	return EncodeWindows(ws)
}
