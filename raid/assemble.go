package raid

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid/meta"
)

// AssembleOptions tune Assemble.
type AssembleOptions struct {
	// Direct opens members with O_DIRECT.
	Direct bool
	// OnFail is called when a member fails at runtime, after the array has
	// marked it failed in memory; the caller records it (see RecordFailure).
	OnFail func(member int, err error)
	// BeforeFail is the engine's Config.BeforeFail.
	BeforeFail func(member int, err error)
	// Wrap, if set, wraps each member's data area before the engine sees it
	// (latency or fault injection for benchmarks and drills). The wrapper
	// must close the device it wraps.
	Wrap func(role int, dev blockdev.Device) blockdev.Device
	// Remote configures members given as NBD URIs or hosted by agents.
	Remote remote.Config
	// Writer is this node's slot and epoch, sent to agent members.
	Writer Writer
	// OnSpread is the engine's Config.OnSpread.
	OnSpread func()
}

// Assembled is a running array: its superblock as assembled and the Device
// that serves it.
type Assembled struct {
	Array *meta.Array
	// Lost lists the roles that were not in use at assembly, with why.
	Lost map[int]string
	dev  blockdev.Device
}

// Device returns the array as a Device.
func (a *Assembled) Device() blockdev.Device { return a.dev }

// Close closes the array and its members.
func (a *Assembled) Close() error { return a.dev.Close() }

// ErrCannotAssemble reports an array that cannot be started safely.
var ErrCannotAssemble = errors.New("cannot assemble")

// Assemble opens the members of a stored array, checks each one's header,
// and builds the array Device. A member whose file is missing is recorded
// missing (the event counter is bumped) and the array runs degraded if the
// level tolerates it. Any member that is present but wrong (another array's,
// a different role, truncated, corrupt) stops assembly with an error: ddraid
// never guesses.
func Assemble(stateDir, name string, opts AssembleOptions) (*Assembled, error) {
	var a *meta.Array
	if err := meta.View(stateDir, func(s *meta.Store) error {
		var err error
		a, err = s.Get(name)
		return err
	}); err != nil {
		return nil, fmt.Errorf("assemble %s: %w", name, err)
	}
	level, err := ParseLevel(a.Level)
	if err != nil {
		return nil, fmt.Errorf("assemble %s: superblock: %w", name, err)
	}
	devs := make([]blockdev.Device, len(a.Members))
	files := make([]blockdev.Device, 0, len(a.Members))
	fail := func(err error) (*Assembled, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("assemble %s: %w", name, err)
	}
	lost := map[int]string{}
	newlyMissing := []int{}
	for i, m := range a.Members {
		if m.State != meta.StateActive {
			lost[i] = m.State
			continue
		}
		dev, err := OpenMember(a, i, MemberOptions{Direct: opts.Direct, Remote: opts.Remote, Writer: opts.Writer})
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, remote.ErrUnreachable) {
			lost[i] = meta.StateMissing
			newlyMissing = append(newlyMissing, i)
			continue
		}
		if err != nil {
			return fail(err)
		}
		files = append(files, dev)
		devs[i] = dev
		if opts.Wrap != nil {
			devs[i] = opts.Wrap(i, devs[i])
		}
	}
	if tol := Tolerance(level, len(a.Members)); len(lost) > tol {
		var why []string
		for i, m := range a.Members {
			if s, ok := lost[i]; ok {
				why = append(why, fmt.Sprintf("%s %s", m.Path, s))
			}
		}
		return fail(fmt.Errorf("%w: %d of %d members lost (%s); %s tolerates %d",
			ErrCannotAssemble, len(lost), len(a.Members), strings.Join(why, ", "), level, tol))
	}
	if len(newlyMissing) > 0 {
		a, err = meta.Update(stateDir, name, func(sb *meta.Array) error {
			for _, i := range newlyMissing {
				m := &sb.Members[i]
				m.Unsynced = m.Unsynced || m.State == meta.StateRecovering
				m.State = meta.StateMissing
			}
			return nil
		})
		if err != nil {
			return fail(err)
		}
	}
	cfg := Config{OnFail: opts.OnFail, BeforeFail: opts.BeforeFail, OnSpread: opts.OnSpread}
	var dev blockdev.Device
	switch level {
	case LevelRaid35:
		g := Geometry{Members: len(a.Members), BlockSize: a.BlockSize, Parity: Parity(a.Parity), ParityChunk: a.ParityChunk}
		dev, err = NewRaid35(g, devs, a.MemberDataSize, cfg)
	case LevelMirror:
		dev, err = NewMirror(devs, a.MemberDataSize, cfg)
	case LevelLinear:
		dev, err = NewLinear(devs, cfg)
	}
	if err != nil {
		return fail(err)
	}
	if dev.Size() != a.Size {
		dev.Close()
		return nil, fmt.Errorf("assemble %s: %w: engine size %d differs from superblock size %d", name, meta.ErrCorrupt, dev.Size(), a.Size)
	}
	return &Assembled{Array: a, Lost: lost, dev: dev}, nil
}

// OpenMember opens the device at a.Members[role].Path, checks that its
// header names this array and role, and returns its data area (closing it
// closes the device). A missing file is reported with os.ErrNotExist, an
// unreachable remote member with remote.ErrUnreachable. A remote member
// checks the header again after every reconnect.
func OpenMember(a *meta.Array, role int, opts MemberOptions) (blockdev.Device, error) {
	m := a.Members[role]
	opts.Remote.Verify = verifyMember(a, role)
	opts.Array = a
	f, err := OpenMemberDevice(m.Path, opts)
	if err != nil {
		return nil, fmt.Errorf("member %d (%s): %w", role, m.Path, err)
	}
	if err := checkMember(a, role, f); err != nil {
		f.Close()
		return nil, fmt.Errorf("member %d (%s): %w: %w", role, m.Path, ErrCannotAssemble, err)
	}
	sec, err := blockdev.NewSection(f, a.DataOffset, MemberDataSize(a, role))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("member %d (%s): %w", role, m.Path, err)
	}
	o := &ownedSection{Section: sec, owner: f, base: a.DataOffset}
	if c, ok := f.(MemberClearer); ok && IsAgentMember(m.Path) {
		return &clearingSection{ownedSection: o, c: c}, nil
	}
	return o, nil
}

// MemberDataSize is the data area size of a role.
func MemberDataSize(a *meta.Array, role int) int64 {
	if a.Level == string(LevelLinear) {
		return a.Sizes[role]
	}
	return a.MemberDataSize
}

func checkMember(a *meta.Array, role int, f blockdev.Device) error {
	h, err := meta.ReadHeader(f)
	if errors.Is(err, meta.ErrNoHeader) {
		return fmt.Errorf("not a ddraid member (no header)")
	}
	if err != nil {
		return err
	}
	if h.ArrayUUID != a.UUID {
		return fmt.Errorf("belongs to another array, %q (%s), not %q (%s)", h.ArrayName, h.ArrayUUID, a.Name, a.UUID)
	}
	if int(h.Role) != role || h.MemberUUID != a.Members[role].UUID {
		return fmt.Errorf("holds role %d (member %s) but the superblock expects role %d (member %s)", h.Role, h.MemberUUID, role, a.Members[role].UUID)
	}
	need := a.DataOffset + int64(h.DataSize)
	if f.Size() < need {
		return fmt.Errorf("truncated: %d bytes, needs %d", f.Size(), need)
	}
	return CheckFragment(a, f)
}

// CheckFragment refuses dev as a member of a if dev may refuse the
// smallest requests a sends its members (see checkFragment).
func CheckFragment(a *meta.Array, dev blockdev.Device) error {
	if r, ok := dev.(minBlockSizer); ok {
		return checkFragment(a.Level, len(a.Members), a.BlockSize, r.MinBlockSize())
	}
	return nil
}

// minBlockSizer is implemented by members that may refuse requests that
// are not whole multiples of a size: remote exports that advertised a
// minimum block size (remote.Device). A local file or disk takes any
// request (the page cache, or a bounce buffer with --direct, aligns it).
type minBlockSizer interface{ MinBlockSize() int }

// checkFragment refuses a member whose minimum block size (minBS, 0 for
// none) does not divide the smallest request the array sends it: a raid35
// of members members and blockSize-byte blocks reads and writes whole
// fragments; a mirror or linear array passes the front end's requests
// through, 512-byte sectors at the smallest. Every smaller write would be
// refused and fail the member, and in a raid35 all such members at once.
func checkFragment(level string, members, blockSize, minBS int) error {
	if minBS <= 1 {
		return nil
	}
	if level != string(LevelRaid35) {
		if 512%minBS == 0 {
			return nil
		}
		return fmt.Errorf("the export takes requests in multiples of %d bytes (its minimum block size), "+
			"but a %s array passes 512-byte requests through to its members; use an export with a minimum of 512 or less", minBS, level)
	}
	if members < 2 {
		return nil
	}
	g := Geometry{Members: members, BlockSize: blockSize}
	frag := g.FragmentSize()
	if frag%minBS == 0 {
		return nil
	}
	return fmt.Errorf("the export takes requests in multiples of %d bytes (its minimum block size), "+
		"but a raid35 of %d members with %d-byte blocks reads and writes it in %d-byte fragments; "+
		"use a block size of %d or more, or an export with a smaller minimum", minBS, members, blockSize, frag, minBS*g.DataFragments())
}

// RecordFailure marks a member failed in the stored superblock.
func RecordFailure(stateDir, name string, member int) error {
	_, err := meta.Update(stateDir, name, func(a *meta.Array) error {
		if member < 0 || member >= len(a.Members) {
			return fmt.Errorf("no member %d", member)
		}
		a.Members[member].Fail()
		return nil
	})
	return err
}

// ownedSection is a member's data area that closes its file on Close.
type ownedSection struct {
	*blockdev.Section
	owner blockdev.Device
	base  int64 // where the data area starts on the member
}

func (o *ownedSection) Close() error { return o.owner.Close() }

// clearingSection is the data area of an agent member: Clear forwards a
// clear of data-area bytes to the member host.
type clearingSection struct {
	*ownedSection
	c MemberClearer
}

// Clear implements MemberClearer in data-area offsets.
func (s *clearingSection) Clear(off, length int64) error {
	if err := blockdev.CheckRange(off, length, s.Size()); err != nil {
		return err
	}
	return s.c.Clear(s.base+off, length)
}
