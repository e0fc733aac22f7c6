package raid

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid/meta"
)

// MinMemberData is the smallest data area a member may contribute.
const MinMemberData = 1 << 20

// CreateOptions describe a new array.
type CreateOptions struct {
	Name  string
	Level Level
	// Geometry applies to raid35; BlockSize also sets mirror and linear
	// block sizes (default 4096).
	Geometry Geometry
	// Members are paths of files or block devices, or NBD URIs of remote
	// exports (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH), in
	// role order.
	Members []string
	// CreateSize creates member files that do not exist with this size in
	// bytes (sparse). Zero means every member must exist. Remote members
	// always exist and keep their size.
	CreateSize int64
	// Force overwrites members that carry another array's header.
	Force bool
	// AssumeClean skips the initial sync of members that already existed
	// (their contents are taken as consistent).
	AssumeClean bool
	// RegionSize is the write-intent bitmap region size (0: 4 MiB).
	RegionSize int64
	// Remote configures remote members (NBD URIs, agent members): TLS,
	// timeouts.
	Remote remote.Config
	// Writer is this node's slot and epoch, sent to agent members when
	// their headers are written.
	Writer Writer
	// Slots is the number of writer slots for cluster mode (0:
	// meta.DefaultSlots).
	Slots int
}

// DefaultRegionSize is the bitmap region size when none is given.
const DefaultRegionSize = 4 << 20

// Tolerance is how many members a level can lose and keep serving.
func Tolerance(level Level, members int) int {
	switch level {
	case LevelRaid35:
		return 1
	case LevelMirror:
		return members - 1
	default:
		return 0
	}
}

// validate checks everything that can be checked without touching members.
func (o *CreateOptions) validate() error {
	if err := meta.ValidateName(o.Name); err != nil {
		return err
	}
	n := len(o.Members)
	switch o.Level {
	case LevelRaid35:
		o.Geometry.Members = n
		o.Geometry = o.Geometry.WithDefaults()
		if err := o.Geometry.Validate(); err != nil {
			return err
		}
	case LevelMirror:
		if n < 2 {
			return fmt.Errorf("mirror needs at least 2 members, got %d", n)
		}
	case LevelLinear:
		if n < 1 {
			return errors.New("linear needs at least 1 member")
		}
	default:
		return fmt.Errorf("unknown raid level %q (valid: raid35, mirror, linear)", o.Level)
	}
	if o.Level != LevelRaid35 {
		if o.Geometry.BlockSize == 0 {
			o.Geometry.BlockSize = 4096
		}
		bs := o.Geometry.BlockSize
		if bs < 512 || bs > 64<<10 || bs&(bs-1) != 0 {
			return fmt.Errorf("block size %d must be a power of two from 512 to 65536", bs)
		}
	}
	if o.RegionSize == 0 {
		o.RegionSize = DefaultRegionSize
	}
	if o.Slots == 0 {
		o.Slots = meta.DefaultSlots
	}
	if err := meta.ValidateSlots(o.Slots); err != nil {
		return err
	}
	if o.RegionSize < 64<<10 || o.RegionSize&(o.RegionSize-1) != 0 {
		return fmt.Errorf("region size %d must be a power of two of at least 64 KiB", o.RegionSize)
	}
	if o.CreateSize < 0 {
		return fmt.Errorf("size %d is negative", o.CreateSize)
	}
	agents := 0
	for _, p := range o.Members {
		if IsAgentMember(p) {
			agents++
		}
	}
	if agents > 0 && o.Level != LevelLinear {
		// An agent marks regions of RegionSize/(M−1) member bytes (raid35)
		// or RegionSize (mirror), from 64 KiB to 1 GiB (see package
		// blockdev/member).
		k := int64(1)
		if o.Level == LevelRaid35 {
			k = int64(max(n-1, 1))
		}
		if mr := o.RegionSize / k; mr < nbd.MinMarkRegion || mr > nbd.MaxMarkRegion {
			return fmt.Errorf("region size %d does not suit agent members: with %d members it must lie from %d to %d",
				o.RegionSize, n, k*nbd.MinMarkRegion, k*nbd.MaxMarkRegion)
		}
	}
	seen := map[string]bool{}
	for _, p := range o.Members {
		abs, err := MemberPath(p)
		if err != nil {
			return fmt.Errorf("member %s: %w", p, err)
		}
		if seen[abs] {
			return fmt.Errorf("member %s is given twice", p)
		}
		seen[abs] = true
	}
	return nil
}

type plannedMember struct {
	path   string
	exists bool
	size   int64
	minBS  int // a remote export's advertised minimum block size, 0 if none
	info   os.FileInfo
}

// Create validates opts, then writes member headers and stores the new
// superblock in the store. On any validation error nothing is written.
func Create(s *meta.Store, opts CreateOptions) (*meta.Array, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("create %s: %w", opts.Name, err)
	}
	if _, err := s.Get(opts.Name); err == nil {
		return nil, fmt.Errorf("create %s: an array with this name already exists", opts.Name)
	} else if !errors.Is(err, meta.ErrNotFound) {
		return nil, fmt.Errorf("create %s: %w", opts.Name, err)
	}
	plan, err := planMembers(opts)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", opts.Name, err)
	}
	for _, m := range plan {
		if err := checkFragment(string(opts.Level), len(plan), opts.Geometry.BlockSize, m.minBS); err != nil {
			return nil, fmt.Errorf("create %s: member %s: %w", opts.Name, m.path, err)
		}
	}
	a := &meta.Array{
		Name: opts.Name, UUID: meta.NewUUID(), Level: string(opts.Level),
		BlockSize: opts.Geometry.BlockSize, DataOffset: meta.DataOffset, Created: time.Now().UTC(),
		RegionSize: opts.RegionSize, Slots: opts.Slots,
	}
	for _, m := range plan {
		// Members that held data before need their redundancy computed;
		// files created here are zero, which is consistent.
		if m.exists && !opts.AssumeClean && opts.Level != LevelLinear {
			a.InitialSync = true
		}
	}
	if opts.Level == LevelRaid35 {
		a.Parity, a.ParityChunk = string(opts.Geometry.Parity), opts.Geometry.ParityChunk
	}
	minData := int64(-1)
	for _, m := range plan {
		d := m.size - meta.DataOffset
		if minData < 0 || d < minData {
			minData = d
		}
	}
	switch opts.Level {
	case LevelRaid35:
		f := int64(opts.Geometry.FragmentSize())
		a.MemberDataSize = minData / f * f
		a.Size = opts.Geometry.Blocks(a.MemberDataSize) * int64(opts.Geometry.BlockSize)
	case LevelMirror:
		bs := int64(a.BlockSize)
		a.MemberDataSize = minData / bs * bs
		a.Size = a.MemberDataSize
	case LevelLinear:
		bs := int64(a.BlockSize)
		for _, m := range plan {
			d := (m.size - meta.DataOffset) / bs * bs
			a.Sizes = append(a.Sizes, d)
			a.Size += d
		}
	}
	for i, m := range plan {
		a.Members = append(a.Members, meta.Member{Role: i, UUID: meta.NewUUID(), Path: m.path, State: meta.StateActive})
	}
	// Validation is over: from here on we write.
	for i, m := range plan {
		if err := writeMemberHeader(a, i, m, opts); err != nil {
			return nil, fmt.Errorf("create %s: member %s: %w", opts.Name, m.path, err)
		}
	}
	a.Events = 1
	if err := s.Put(a); err != nil {
		return nil, fmt.Errorf("create %s: %w", opts.Name, err)
	}
	return a, nil
}

func planMembers(opts CreateOptions) ([]plannedMember, error) {
	var plan []plannedMember
	for _, p := range opts.Members {
		abs, _ := MemberPath(p)
		m := plannedMember{path: abs}
		st, err := os.Stat(abs)
		if IsRemote(abs) {
			st, err = nil, nil // an export always exists: open it to learn its size
		}
		switch {
		case err == nil:
			m.exists, m.info = true, st
			dev, err := OpenMemberDevice(abs, MemberOptions{ReadOnly: true, Remote: opts.Remote})
			if err != nil {
				return nil, fmt.Errorf("member %s: %w", p, err)
			}
			m.size = dev.Size()
			if r, ok := dev.(minBlockSizer); ok {
				m.minBS = r.MinBlockSize()
			}
			h, herr := meta.ReadHeader(dev)
			dev.Close()
			if herr == nil && !opts.Force {
				return nil, fmt.Errorf("member %s already belongs to array %q (%s); use --force to overwrite it", p, h.ArrayName, h.ArrayUUID)
			}
		case errors.Is(err, os.ErrNotExist):
			if opts.CreateSize == 0 {
				return nil, fmt.Errorf("member %s does not exist (give --size to create member files)", p)
			}
			if _, err := os.Stat(filepath.Dir(abs)); err != nil {
				return nil, fmt.Errorf("member %s: %w", p, err)
			}
			m.size = opts.CreateSize
		default:
			return nil, fmt.Errorf("member %s: %w", p, err)
		}
		if m.size < meta.DataOffset+MinMemberData {
			why := ""
			if IsRemote(abs) {
				why = " (--size does not apply to remote members)"
			}
			return nil, fmt.Errorf("member %s is too small: %d bytes, need at least %d%s", p, m.size, meta.DataOffset+MinMemberData, why)
		}
		for _, q := range plan {
			if q.info != nil && m.info != nil && os.SameFile(q.info, m.info) {
				return nil, fmt.Errorf("member %s is the same file as %s", p, q.path)
			}
		}
		plan = append(plan, m)
	}
	return plan, nil
}

func writeMemberHeader(a *meta.Array, role int, m plannedMember, co CreateOptions) error {
	opts := MemberOptions{Remote: co.Remote, Array: a, Writer: co.Writer}
	if !m.exists {
		opts.CreateSize = m.size
	}
	dev, err := OpenMemberDevice(m.path, opts)
	if err != nil {
		return err
	}
	defer dev.Close()
	h := headerFor(a, role)
	if err := meta.WriteHeader(dev, &h); err != nil {
		return err
	}
	return dev.Flush()
}

func headerFor(a *meta.Array, role int) meta.Header {
	data := a.MemberDataSize
	if a.Level == string(LevelLinear) {
		data = a.Sizes[role]
	}
	return meta.Header{
		Role: int32(role), ArrayUUID: a.UUID, MemberUUID: a.Members[role].UUID,
		Members: uint32(len(a.Members)), BlockSize: uint32(a.BlockSize),
		DataOffset: uint64(a.DataOffset), DataSize: uint64(data), Events: a.Events,
		Level: a.Level, ArrayName: a.Name,
	}
}
