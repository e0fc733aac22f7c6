package array

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// ErrRefused reports an operator action refused to protect the data.
var ErrRefused = errors.New("refused")

// errOperator is the failure recorded when the operator fails a member.
var errOperator = errors.New("failed by the operator")

// Resolve finds a member by role number or path; spare reports a spare.
func Resolve(sb *meta.Array, ref string) (role int, spare bool, err error) {
	if n, err := strconv.Atoi(ref); err == nil {
		if n < 0 || n >= len(sb.Members) {
			return 0, false, fmt.Errorf("array %s has no member %d (roles 0-%d)", sb.Name, n, len(sb.Members)-1)
		}
		return n, false, nil
	}
	abs, _ := raid.MemberPath(ref)
	for i, m := range sb.Members {
		if m.Path != "" && (m.Path == ref || m.Path == abs) {
			return i, false, nil
		}
	}
	for i, m := range sb.Spares {
		if m.Path == ref || m.Path == abs {
			return i, true, nil
		}
	}
	return 0, false, fmt.Errorf("%s is not a member of array %s", ref, sb.Name)
}

// checkFail refuses to fail a member when that would lose data (always for
// linear arrays, which have no redundancy and no Syncer).
func checkFail(sb *meta.Array, role int, force bool) error {
	m := sb.Members[role]
	if m.State != meta.StateActive && m.State != meta.StateRecovering {
		return fmt.Errorf("member %d (%s) is already %s", role, m.Path, m.State)
	}
	level, _ := raid.ParseLevel(sb.Level)
	if level == raid.LevelLinear {
		return fmt.Errorf("%w: %s array %s has no redundancy: members cannot be failed", ErrRefused, sb.Level, sb.Name)
	}
	lost := 0
	for _, x := range sb.Members {
		if x.State != meta.StateActive {
			lost++
		}
	}
	if m.State == meta.StateActive && lost+1 > raid.Tolerance(level, len(sb.Members)) && !force {
		return fmt.Errorf("%w: failing member %d (%s) would leave %s array %s without its data (%d of %d members lost, it tolerates %d); use --force",
			ErrRefused, role, m.Path, sb.Level, sb.Name, lost+1, len(sb.Members), raid.Tolerance(level, len(sb.Members)))
	}
	return nil
}

// Fail marks a member failed; IO continues degraded.
func (a *Array) Fail(ref string, force bool) error {
	sb := a.Superblock()
	role, spare, err := Resolve(&sb, ref)
	if err != nil {
		return err
	}
	if spare {
		return fmt.Errorf("%s is a spare; use remove-device", ref)
	}
	if err := checkFail(&sb, role, force); err != nil {
		return err
	}
	a.sync.Fail(role, errOperator)
	if a.opts.MemberFailed != nil {
		// Cluster mode: onFail recorded it with every writer, or could not
		// (a spare may have taken the role since: another device).
		if m := a.Superblock().Members[role]; m.UUID == sb.Members[role].UUID && m.State != meta.StateFailed {
			return fmt.Errorf("member %d is failed here, but not yet recorded by every writer of the cluster; writes wait until it is (see the log)", role)
		}
		return nil
	}
	// onFail records it asynchronously; record synchronously too so the
	// caller sees the new state when we return.
	return a.recordFailure(role)
}

// Remove takes a failed or missing member (or a spare) out of the array.
func (a *Array) Remove(ref string) error {
	sb := a.Superblock()
	if _, _, err := Resolve(&sb, ref); err != nil {
		return err
	}
	return a.updateWhat("remove "+ref, func(sb *meta.Array) error { return removeIn(sb, ref) })
}

func removeIn(sb *meta.Array, ref string) error {
	role, spare, err := Resolve(sb, ref)
	if err != nil {
		return err
	}
	if spare {
		sb.Spares = append(sb.Spares[:role], sb.Spares[role+1:]...)
		return nil
	}
	m := &sb.Members[role]
	if m.State != meta.StateFailed && m.State != meta.StateMissing {
		return fmt.Errorf("%w: member %d (%s) is %s; fail it first", ErrRefused, role, m.Path, m.State)
	}
	m.State, m.Path = meta.StateMissing, ""
	return nil
}

// plan describes how a new device joins an array.
type plan struct {
	role      int  // -1: spare
	readd     bool // the device is this role's previous member: dirty regions only
	header    meta.Header
	memberDev meta.Member
	mo        raid.MemberOptions // how remote devices are opened (TLS, writer)
}

// planAdd checks a device and decides where it goes.
func planAdd(sb *meta.Array, path string, force bool, mo raid.MemberOptions) (plan, error) {
	abs, err := raid.MemberPath(path)
	if err != nil {
		return plan{}, err
	}
	if sb.Level == string(raid.LevelLinear) {
		return plan{}, fmt.Errorf("linear array %s cannot take new members", sb.Name)
	}
	f, err := raid.OpenMemberDevice(abs, raid.MemberOptions{ReadOnly: true, Remote: mo.Remote})
	if err != nil {
		return plan{}, fmt.Errorf("add %s: %w", path, err)
	}
	defer f.Close()
	if need := sb.DataOffset + sb.MemberDataSize; f.Size() < need {
		return plan{}, fmt.Errorf("%w: %s is too small: %d bytes, array %s needs %d", ErrRefused, path, f.Size(), sb.Name, need)
	}
	if err := raid.CheckFragment(sb, f); err != nil {
		return plan{}, fmt.Errorf("%w: %s: %w", ErrRefused, path, err)
	}
	for _, m := range append(append([]meta.Member(nil), sb.Members...), sb.Spares...) {
		if m.Path == abs && m.State != meta.StateFailed && m.State != meta.StateMissing {
			return plan{}, fmt.Errorf("%w: %s is already in array %s (%s)", ErrRefused, path, sb.Name, m.State)
		}
	}
	p := plan{role: -1, mo: mo}
	if h, err := meta.ReadHeader(f); err == nil {
		switch {
		case h.ArrayUUID == sb.UUID && h.Role >= 0 && int(h.Role) < len(sb.Members) && sb.Members[h.Role].UUID == h.MemberUUID:
			m := sb.Members[h.Role]
			if m.State != meta.StateFailed && m.State != meta.StateMissing {
				return plan{}, fmt.Errorf("%w: %s is member %d of array %s and is %s", ErrRefused, path, h.Role, sb.Name, m.State)
			}
			// A device whose rebuild never finished is not a previous
			// member with data: it is rebuilt whole (a new UUID).
			p.role, p.readd = int(h.Role), !m.Unsynced
		case !force:
			return plan{}, fmt.Errorf("%w: %s belongs to array %q (%s); use --force to overwrite it", ErrRefused, path, h.ArrayName, h.ArrayUUID)
		}
	}
	if !p.readd {
		for i, m := range sb.Members {
			if m.State == meta.StateFailed || m.State == meta.StateMissing {
				p.role = i
				break
			}
		}
	}
	p.memberDev = meta.Member{Role: p.role, UUID: meta.NewUUID(), Path: abs, State: meta.StateRecovering}
	if p.readd {
		p.memberDev.UUID = sb.Members[p.role].UUID
	}
	if p.role < 0 {
		p.memberDev.State = meta.StateSpare
	}
	return p, nil
}

// apply writes the device's header and records it in sb.
func (p plan) apply(sb *meta.Array) error {
	h := meta.Header{
		Role: int32(p.role), ArrayUUID: sb.UUID, MemberUUID: p.memberDev.UUID, Members: uint32(len(sb.Members)),
		BlockSize: uint32(sb.BlockSize), DataOffset: uint64(sb.DataOffset), DataSize: uint64(sb.MemberDataSize),
		Events: sb.Events + 1, Level: sb.Level, ArrayName: sb.Name,
	}
	mo := p.mo
	mo.Array = sb
	f, err := raid.OpenMemberDevice(p.memberDev.Path, mo)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := meta.WriteHeader(f, &h); err != nil {
		return fmt.Errorf("%s: %w", p.memberDev.Path, err)
	}
	if p.role < 0 {
		p.memberDev.Role = -1
		sb.Spares = append(sb.Spares, p.memberDev)
		return nil
	}
	sb.Members[p.role] = p.memberDev
	return nil
}

// Add adds a device: into a failed or missing role (recovery starts: only
// the dirty regions when the device is that role's previous member), or as
// a spare when every role is in use. In cluster mode every writer must be
// able to open it first, and the rebuild is a cluster job.
func (a *Array) Add(path string, force bool) (string, error) {
	var p plan
	fn := func(sb *meta.Array) error {
		var err error
		if p, err = planAdd(sb, path, force, a.memberOptions()); err != nil {
			return err
		}
		p.memberDev.DirtyOnly = p.readd && a.opts.Cluster != nil
		return p.apply(sb)
	}
	var err error
	if a.opts.Cluster != nil {
		err = a.opts.Cluster.AddMember(context.Background(), path, fn)
	} else {
		err = a.update(fn)
	}
	if err != nil {
		return "", err
	}
	switch {
	case p.role < 0:
		return fmt.Sprintf("added %s as a spare", path), nil
	case a.opts.Cluster != nil && p.readd:
		return fmt.Sprintf("re-added %s as member %d; one writer of the cluster rebuilds its dirty regions", path, p.role), nil
	case a.opts.Cluster != nil:
		return fmt.Sprintf("added %s as member %d; one writer of the cluster rebuilds it", path, p.role), nil
	}
	if err := a.startRecovery(p.role, nil, p.readd); err != nil {
		return "", err
	}
	if p.readd {
		return fmt.Sprintf("re-added %s as member %d; recovering its dirty regions", path, p.role), nil
	}
	return fmt.Sprintf("added %s as member %d; recovery started", path, p.role), nil
}

// useSpare puts the first spare into a failed or missing role and starts
// its rebuild (in cluster mode the rebuild is a cluster job).
func (a *Array) useSpare() {
	if len(a.Superblock().Spares) == 0 || a.sync == nil {
		return
	}
	spare, role := "", -1
	err := a.updateWhat("use a spare", func(sb *meta.Array) error {
		if len(sb.Spares) == 0 || !slices.ContainsFunc(sb.Members, func(m meta.Member) bool {
			return m.State == meta.StateFailed || m.State == meta.StateMissing
		}) {
			return ErrNoChange
		}
		path := sb.Spares[0].Path
		sb.Spares = sb.Spares[1:]
		p, err := planAdd(sb, path, true, a.memberOptions())
		if err != nil || p.role < 0 {
			return fmt.Errorf("no role for spare %s: %v", path, err)
		}
		p.readd = false
		p.memberDev.UUID = meta.NewUUID()
		if err := p.apply(sb); err != nil {
			return err
		}
		spare, role = path, p.role
		return nil
	})
	if err != nil {
		a.log.Warn("cannot use spare", "err", err)
		return
	}
	if spare == "" {
		return
	}
	a.log.Info("recovering onto spare", "spare", spare, "role", role)
	if a.opts.Cluster != nil {
		return // ApplySuperblock began it here; a cluster job rebuilds it
	}
	if err := a.startRecovery(role, nil, false); err != nil {
		a.log.Error("recovery onto spare", "err", err)
	}
}

// startRecovery begins the role's recovery (beginRecovery) and queues
// its rebuild. A rebuild makes its role active only if no other rebuild
// of the role started since: a role failed during its rebuild and given
// a device again (remove-device, add-device) has a rebuild of its own
// queued, and the earlier one, which goes on writing the new device from
// where it was, did not write all of it.
func (a *Array) startRecovery(role int, dev blockdev.Device, dirtyOnly bool) error {
	a.recMu.Lock()
	defer a.recMu.Unlock()
	if err := a.beginRecovery(role, dev); err != nil {
		return err
	}
	a.rebuilds[role]++
	gen := a.rebuilds[role]
	ranges := resync.Whole(a.eng.Size())
	if dirtyOnly {
		ranges = a.ranges(a.bm.Dirty())
	}
	a.enqueue(resync.Job{Kind: resync.KindRecover, Array: a.sync, Member: role, Ranges: ranges},
		func(p resync.Progress, err error) {
			if err != nil {
				return
			}
			a.recMu.Lock()
			if a.rebuilds[role] != gen {
				a.recMu.Unlock()
				a.log.Info("rebuild superseded: the role was given a device again during it; the later rebuild finishes it", "role", role)
				return
			}
			err = a.sync.FinishRecovery(role)
			a.recMu.Unlock()
			if err != nil {
				a.log.Error("finish recovery", "role", role, "err", err)
				return
			}
			a.update(func(sb *meta.Array) error { sb.Members[role].State = meta.StateActive; return nil })
			a.recovered(role)
			a.log.Info("member recovered", "role", role, "bytes", p.Done)
		})
	return nil
}

// beginRecovery opens the role's device as recorded in the superblock
// (unless dev is given) and makes it recovering: every write goes to it,
// no read does.
func (a *Array) beginRecovery(role int, dev blockdev.Device) error {
	sb := a.Superblock()
	if dev == nil {
		d, err := raid.OpenMember(&sb, role, a.memberOptions())
		if err != nil {
			return err
		}
		dev = d
	}
	a.mu.Lock()
	wrapped := a.wrapMember(role, dev)
	a.mu.Unlock()
	if err := a.sync.StartRecovery(role, wrapped); err != nil {
		wrapped.Close()
		return err
	}
	a.bm.SetDegraded(true)
	return nil
}

// recovered runs once the role is active again: when no member is left
// to recover, every region is consistent, including those marked while
// the member was away, and the marks go.
func (a *Array) recovered(role int) {
	a.bm.SetDegraded(a.degraded())
	if !a.degraded() {
		if err := a.bm.ClearRegions(a.bm.Dirty()); err != nil {
			a.log.Warn("clear bitmap after recovery", "err", err)
		}
		a.mu.Lock()
		trust := a.trustAfterRecovery
		a.trustAfterRecovery = false
		a.mu.Unlock()
		if trust {
			a.trustRedundancy(true) // the rebuild made the redundancy match
		}
	}
	a.clearRebuilt(role)
}

// Replace rebuilds NEW from OLD while OLD keeps serving, then swaps them.
func (a *Array) Replace(oldRef, newPath string, force bool) (string, error) {
	if a.opts.Cluster != nil {
		return "", fmt.Errorf("%w: replace copies on one writer only, which cluster mode cannot do; add the new device as a spare (add-device) and fail the old member", ErrRefused)
	}
	if a.sync == nil {
		return "", fmt.Errorf("linear array %s cannot replace members online", a.opts.Name)
	}
	sb := a.Superblock()
	role, spare, err := Resolve(&sb, oldRef)
	if err != nil {
		return "", err
	}
	if spare || sb.Members[role].State != meta.StateActive {
		return "", fmt.Errorf("%w: %s is not an active member; use add-device", ErrRefused, oldRef)
	}
	a.mu.Lock()
	busy := a.replacing[role]
	a.replacing[role] = true
	a.mu.Unlock()
	if busy {
		return "", fmt.Errorf("%w: member %d (%s) is already being replaced", ErrRefused, role, sb.Members[role].Path)
	}
	queued := false
	defer func() {
		if !queued {
			a.endReplace(role)
		}
	}()
	p, err := planAdd(&sb, newPath, force, a.memberOptions())
	if err != nil {
		return "", err
	}
	if p.readd {
		return "", fmt.Errorf("%w: %s is already a member of %s", ErrRefused, newPath, sb.Name)
	}
	p.role, p.memberDev.Role = role, role
	scratch := sb
	scratch.Members = append([]meta.Member(nil), sb.Members...)
	if err := p.apply(&scratch); err != nil { // header only; the superblock changes at the swap
		return "", err
	}
	// The new device carries its header now: open it as the role's
	// member of the scratch superblock (agent members then forward
	// clears).
	f, err := raid.OpenMember(&scratch, role, a.memberOptions())
	if err != nil {
		return "", err
	}
	newDev := blockdev.NewStats(a.fenceWrap(f))
	old := a.swaps[role].Current()
	inner, err := raid.NewMirror([]blockdev.Device{old, nil}, sb.MemberDataSize, raid.Config{})
	if err == nil {
		err = inner.StartRecovery(1, newDev)
	}
	if err != nil {
		f.Close()
		return "", err
	}
	a.swaps[role].Set(inner)
	queued = true
	a.enqueue(resync.Job{Kind: resync.KindRecover, Array: inner, Member: 1, Ranges: resync.Whole(sb.MemberDataSize)},
		func(_ resync.Progress, err error) {
			defer a.endReplace(role)
			// A role that failed while it was copied took no writes
			// since: the copy is stale.
			if err == nil && !a.activeRole(role) {
				err = fmt.Errorf("member %d failed during the replace", role)
			}
			if err != nil || inner.FinishRecovery(1) != nil {
				a.swaps[role].Set(old)
				f.Close()
				a.log.Warn("replace abandoned; the old member stays", "role", role, "err", err)
				return
			}
			a.swaps[role].Set(newDev)
			a.setClearer(role, f)
			a.clearRebuilt(role)
			a.mu.Lock()
			a.stats[role] = newDev
			a.mu.Unlock()
			old.Close()
			err = a.update(func(sb *meta.Array) error {
				if !a.activeRole(role) { // failed since the check above
					return fmt.Errorf("member %d failed during the replace; it stays failed", role)
				}
				sb.Members[role] = meta.Member{Role: role, UUID: p.memberDev.UUID, Path: p.memberDev.Path, State: meta.StateActive}
				return nil
			})
			if err == nil {
				a.log.Info("member replaced", "role", role, "new", p.memberDev.Path)
			}
		})
	return fmt.Sprintf("replacing member %d (%s) with %s", role, sb.Members[role].Path, newPath), nil
}

// activeRole reports whether the engine has role active.
func (a *Array) activeRole(role int) bool { return a.sync.MemberStates()[role] == raid.MemberActive }

// endReplace ends Replace's hold on role.
func (a *Array) endReplace(role int) {
	a.mu.Lock()
	delete(a.replacing, role)
	a.mu.Unlock()
}

// Check runs a check (or repair) after any queued job and waits for it.
func (a *Array) Check(ctx context.Context, repair bool) (resync.Progress, error) {
	if a.sync == nil {
		return resync.Progress{}, fmt.Errorf("%s array %s has no redundancy to check", a.sb.Level, a.opts.Name)
	}
	var syncer raid.Syncer = a.sync
	if a.opts.Cluster != nil {
		syncer = scrubSyncer{Syncer: a.sync, cl: a.opts.Cluster}
	}
	kind := resync.KindCheck
	if repair {
		kind = resync.KindRepair
	}
	type result struct {
		p   resync.Progress
		err error
	}
	res := make(chan result, 1)
	a.enqueue(resync.Job{Kind: kind, Array: syncer, Ranges: resync.Whole(a.eng.Size()), Chunk: 4 << 20},
		func(p resync.Progress, err error) {
			if a.opts.Cluster != nil {
				a.opts.Cluster.EndScrubWindow()
			}
			if repair && p.Mismatches > 0 {
				a.clearUnmarked(a.allRoles()) // the repairs were marked at agent members
			}
			switch {
			case repair && err == nil:
				a.trustRedundancy(true) // every block's redundancy was made to match
			case !repair && p.Mismatches > 0:
				a.trustRedundancy(false)
				a.log.Warn("check found mismatches: read balancing is off until a repair", "mismatches", p.Mismatches)
			}
			res <- result{p, err}
		})
	select {
	case r := <-res:
		return r.p, r.err
	case <-ctx.Done():
		return resync.Progress{}, ctx.Err()
	}
}

// growSlots sets the number of writer slots to n (it only grows: a slot
// may be held by a writer right now).
func growSlots(sb *meta.Array, n int) (string, error) {
	if err := meta.ValidateSlots(n); err != nil {
		return "", err
	}
	cur := sb.SlotCount()
	switch {
	case n < cur:
		return "", fmt.Errorf("%w: array %s has %d writer slots; they can grow but not shrink (to %d)", ErrRefused, sb.Name, cur, n)
	case n == cur:
		return fmt.Sprintf("array %s already has %d writer slots", sb.Name, n), ErrNoChange
	}
	sb.Slots = n
	return fmt.Sprintf("array %s: %d writer slots (was %d)", sb.Name, n, cur), nil
}

// Grow sets the number of writer slots to slots (cluster mode: how many
// nodes may write the array at once).
func (a *Array) Grow(slots int) (string, error) {
	var msg string
	err := a.updateWhat(fmt.Sprintf("grow to %d writer slots", slots), func(sb *meta.Array) error {
		var err error
		msg, err = growSlots(sb, slots)
		return err
	})
	return msg, err
}

// OfflineUpdate applies an operator action to a stopped array's metadata.
// Devices that are added are written their header now; the recovery runs
// when the array is next served.
func OfflineUpdate(stateDir, name, action string, req Request, mo raid.MemberOptions) (string, error) {
	ref, path, force := req.Ref, req.Path, req.Force
	var msg string
	_, err := meta.Update(stateDir, name, func(sb *meta.Array) error {
		switch action {
		case "grow":
			var err error
			msg, err = growSlots(sb, req.Slots)
			return err
		case "fail":
			role, spare, err := Resolve(sb, ref)
			if err != nil {
				return err
			}
			if spare {
				return fmt.Errorf("%s is a spare; use remove-device", ref)
			}
			if err := checkFail(sb, role, force); err != nil {
				return err
			}
			sb.Members[role].Fail()
			msg = fmt.Sprintf("member %d (%s) marked failed", role, sb.Members[role].Path)
		case "remove":
			if err := removeIn(sb, ref); err != nil {
				return err
			}
			msg = fmt.Sprintf("removed %s", ref)
		case "add", "replace":
			if action == "replace" {
				role, _, err := Resolve(sb, ref)
				if err != nil {
					return err
				}
				if err := checkFail(sb, role, force); err != nil {
					return err
				}
				sb.Members[role].Fail()
			}
			p, err := planAdd(sb, path, force, mo)
			if err != nil {
				return err
			}
			if err := p.apply(sb); err != nil {
				return err
			}
			if p.role < 0 {
				msg = fmt.Sprintf("added %s as a spare", path)
			} else {
				msg = fmt.Sprintf("added %s as member %d; it is rebuilt when the array is served", path, p.role)
			}
		default:
			return fmt.Errorf("unknown action %q", action)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if errors.Is(err, ErrNoChange) {
		err = nil
	}
	return msg, err
}
