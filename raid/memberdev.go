package raid

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid/meta"
)

// MemberOptions say how OpenMemberDevice opens a member device.
type MemberOptions struct {
	// Direct opens files and block devices with O_DIRECT.
	Direct bool
	// ReadOnly opens files and block devices read-only. Remote exports
	// are opened as the server offers them.
	ReadOnly bool
	// CreateSize, if positive, creates a member file that does not exist
	// with this size (sparse). It does not apply to remote members.
	CreateSize int64
	// Remote configures members given as NBD URIs or hosted by agents
	// (reconnect backoff, how long a member may stay unreachable before it
	// fails, TLS); the zero value takes remote's defaults. Its Writer is
	// set by OpenMemberDevice.
	Remote remote.Config
	// Array, if set, is the array the member belongs to: agent members
	// (HOST:/PATH) are then opened with writer identity (Writer, the
	// array's UUID and mark geometry) and may be written. Without it an
	// agent member can only be read.
	Array *meta.Array
	// Writer is this node's slot and epoch, sent to agent members.
	Writer Writer
}

// Writer is this node's identity as a writer of arrays: its node slot (its
// bitmap slot) and its fencing epoch. Every connection to an agent member
// carries it; the agent refuses writes from a slot whose epoch it has been
// told is stale. The zero value (slot 0, epoch 0) suits a single writer.
type Writer struct {
	Slot  uint32
	Epoch uint64
}

// DefaultAgentPort is the port of an agent member given without one.
const DefaultAgentPort = 10810

// agentMember is a parsed HOST[:PORT]:/PATH member.
type agentMember struct {
	host, port, path string
}

// parseAgentMember parses HOST[:PORT]:/PATH (IPv6 hosts in brackets). ok
// is false for anything else: a file path (it starts with '/' or '.', or
// has a '/' before the first ":/"), or an NBD URI.
func parseAgentMember(s string) (agentMember, bool) {
	if remote.IsURI(s) {
		return agentMember{}, false
	}
	i := strings.Index(s, ":/")
	if i <= 0 || strings.ContainsAny(s[:i], "/ ") || strings.HasPrefix(s, ".") {
		return agentMember{}, false
	}
	hostport, path := s[:i], s[i+1:]
	host, port := hostport, strconv.Itoa(DefaultAgentPort)
	if strings.HasPrefix(hostport, "[") {
		end := strings.Index(hostport, "]")
		if end < 0 {
			return agentMember{}, false
		}
		host = hostport[1:end]
		switch rest := hostport[end+1:]; {
		case rest == "":
		case strings.HasPrefix(rest, ":"):
			port = rest[1:]
		default:
			return agentMember{}, false
		}
	} else if h, p, found := strings.Cut(hostport, ":"); found {
		host, port = h, p
	}
	if !validHost(host, strings.HasPrefix(hostport, "[")) {
		return agentMember{}, false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return agentMember{}, false
	}
	return agentMember{host: host, port: port, path: filepath.Clean(path)}, true
}

// validHost accepts an IPv6 address (bracketed in the member), or an IPv4
// address or host name: letters, digits, '-', '_' and '.', starting with
// a letter or digit.
func validHost(host string, bracketed bool) bool {
	if bracketed {
		return strings.Contains(host, ":") && net.ParseIP(host) != nil
	}
	if host == "" || len(host) > 253 || strings.Contains(host, "..") {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '-' && c != '_' && c != '.')) {
			return false
		}
	}
	return true
}

// String is the canonical form, the port always given.
func (m agentMember) String() string { return net.JoinHostPort(m.host, m.port) + ":" + m.path }

// uri is the member's export as an NBD URI (the export name is the path).
func (m agentMember) uri(tls bool) string {
	u := remote.URI{TLS: tls, Network: "tcp", Addr: net.JoinHostPort(m.host, m.port), Export: m.path}
	return u.String()
}

// IsAgentMember reports whether a member path names a disk hosted by a
// ddraid agent: HOST[:PORT]:/PATH.
func IsAgentMember(path string) bool {
	_, ok := parseAgentMember(path)
	return ok
}

// IsRemote reports whether a member path is remote: an NBD URI (nbd://…,
// nbd+unix://…) or an agent member (HOST[:PORT]:/PATH), rather than a
// file or block device.
func IsRemote(path string) bool { return remote.IsURI(path) || IsAgentMember(path) }

// MemberPath returns the form of a member path that the superblock
// records: the canonical URI for NBD URIs, HOST:PORT:/PATH for agent
// members, the absolute path otherwise.
func MemberPath(path string) (string, error) {
	if remote.IsURI(path) {
		u, err := remote.ParseURI(path)
		if err != nil {
			return "", err
		}
		return u.String(), nil
	}
	if m, ok := parseAgentMember(path); ok {
		return m.String(), nil
	}
	return filepath.Abs(path)
}

// WriterIdentity is what an agent member receives from this node for
// array a: the array UUID, w's slot and epoch, and the mark geometry in
// member bytes (see package blockdev/member). Linear arrays have no
// bitmap and send region size 0 (fencing only).
func WriterIdentity(a *meta.Array, w Writer) *nbd.Writer {
	id := &nbd.Writer{Array: a.UUID, Slot: w.Slot, Epoch: w.Epoch, DataOffset: uint64(a.DataOffset)}
	id.RegionSize = memberRegionSize(a)
	return id
}

// memberRegionSize is the bytes of one member that one bitmap region of a
// covers: raid35 region/(M−1) (a region of whole blocks, each block one
// fragment per member), mirror the region itself, linear 0 (no bitmap).
func memberRegionSize(a *meta.Array) uint64 {
	rs := a.RegionSize
	if rs == 0 {
		rs = DefaultRegionSize
	}
	switch Level(a.Level) {
	case LevelRaid35:
		return uint64(rs) / uint64(max(len(a.Members)-1, 1))
	case LevelMirror:
		return uint64(rs)
	}
	return 0
}

// OpenMemberDevice opens the member at path: an NBD URI or an agent
// member with remote.Open (bounded by opts.Remote.DialTimeout; an
// unreachable server gives an error wrapping remote.ErrUnreachable),
// anything else with blockdev.OpenFile.
func OpenMemberDevice(path string, opts MemberOptions) (blockdev.Device, error) {
	if remote.IsURI(path) {
		return remote.Open(context.Background(), path, opts.Remote)
	}
	if m, ok := parseAgentMember(path); ok {
		cfg := opts.Remote
		cfg.Writer = nil
		if opts.Array != nil {
			cfg.Writer = WriterIdentity(opts.Array, opts.Writer)
		}
		return remote.Open(context.Background(), m.uri(false), cfg)
	}
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{
		Direct: opts.Direct, ReadOnly: opts.ReadOnly, Create: opts.CreateSize > 0, CreateSize: opts.CreateSize,
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

// MemberDirty asks the agent hosting an agent member (HOST[:PORT]:/PATH)
// which regions of the disk are marked for slot: extents over the whole
// disk, StateDirty (flag 1) where marked. A takeover of a failed writer's
// slot unions these over the array's member hosts.
func MemberDirty(ctx context.Context, path string, cfg remote.Config, slot uint32) ([]blockdev.Extent, error) {
	m, ok := parseAgentMember(path)
	if !ok {
		return nil, fmt.Errorf("member %s is not hosted by a ddraid agent (HOST[:PORT]:/PATH)", path)
	}
	return remote.Dirty(ctx, m.uri(false), cfg, slot)
}

// MemberClearer is implemented by members that keep write-intent marks
// of their own (agent members): the array forwards its bitmap clears.
type MemberClearer interface {
	Clear(off, length int64) error
}

// verifyMember returns a remote.Config.Verify that checks, after every
// reconnect, that the export still carries the header of role in a: a
// remote member that comes back as another disk fails instead of being
// written to.
func verifyMember(a *meta.Array, role int) func(blockdev.Device) error {
	snap := *a
	snap.Members = append([]meta.Member(nil), a.Members...)
	return func(dev blockdev.Device) error {
		if err := checkMember(&snap, role, dev); err != nil {
			return fmt.Errorf("member %d (%s): %w", role, snap.Members[role].Path, err)
		}
		return nil
	}
}

// The three calls below let a survivor take a failed writer's slot over
// (docs/agent.md, "Fencing"): fence the slot at every member host, read
// the union of its marks, resync those regions, clear the marks. Regions
// are array bitmap regions: member region i is the part of array region i
// on that member.

// agentURI returns the NBD URI of role's agent member.
func agentURI(a *meta.Array, role int) (string, error) {
	if role < 0 || role >= len(a.Members) {
		return "", fmt.Errorf("array %s has no member %d", a.Name, role)
	}
	m, ok := parseAgentMember(a.Members[role].Path)
	if !ok {
		return "", fmt.Errorf("member %d (%s) of %s is not hosted by a ddraid agent", role, a.Members[role].Path, a.Name)
	}
	return m.uri(false), nil
}

// FenceMember makes the agent hosting role refuse writes and clears of
// slot under any epoch below epoch. It identifies as the slot's writer
// with that epoch (without marks), which raises the host's minimum; the
// host answers only once the writes it had already admitted are done and
// the minimum is on disk. A host already fenced above epoch counts as
// fenced.
func FenceMember(ctx context.Context, a *meta.Array, role int, cfg remote.Config, slot uint32, epoch uint64) error {
	uri, err := agentURI(a, role)
	if err != nil {
		return err
	}
	cfg.Writer = &nbd.Writer{Array: a.UUID, Slot: slot, Epoch: epoch}
	cfg.Verify = nil
	d, err := remote.Open(ctx, uri, cfg)
	if errors.Is(err, remote.ErrFenced) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fence member %d (%s): %w", role, a.Members[role].Path, err)
	}
	return d.Close()
}

// MemberDirtyRegions returns the array regions that the agent hosting role
// holds marked for slot, sorted.
func MemberDirtyRegions(ctx context.Context, a *meta.Array, role int, cfg remote.Config, slot uint32) ([]uint64, error) {
	if _, err := agentURI(a, role); err != nil {
		return nil, err
	}
	ext, err := MemberDirty(ctx, a.Members[role].Path, cfg, slot)
	if err != nil {
		return nil, err
	}
	mrs := int64(memberRegionSize(a))
	if mrs == 0 {
		return nil, nil
	}
	rs := a.RegionSize
	if rs == 0 {
		rs = DefaultRegionSize
	}
	nregions := (a.Size + rs - 1) / rs
	var out []uint64
	at := int64(0)
	for _, e := range ext {
		start, end := at, at+e.Length
		at = end
		if e.Flags&nbd.StateDirty == 0 || end <= a.DataOffset {
			continue
		}
		first := max(start-a.DataOffset, 0) / mrs
		last := min((end-a.DataOffset+mrs-1)/mrs, nregions) // exclusive
		for r := first; r < last; r++ {
			if n := len(out); n == 0 || out[n-1] < uint64(r) {
				out = append(out, uint64(r))
			}
		}
	}
	return out, nil
}

// ClearMemberRegions clears slot's marks of regions (sorted) at the agent
// hosting role, as the slot's writer w (refused with remote.ErrFenced when
// the slot was fenced above w.Epoch).
func ClearMemberRegions(ctx context.Context, a *meta.Array, role int, cfg remote.Config, w Writer, regions []uint64) error {
	uri, err := agentURI(a, role)
	if err != nil {
		return err
	}
	mrs := int64(memberRegionSize(a))
	if mrs == 0 || len(regions) == 0 {
		return nil
	}
	cfg.Writer = WriterIdentity(a, w)
	cfg.Verify = nil
	d, err := remote.Open(ctx, uri, cfg)
	if err != nil {
		return fmt.Errorf("clear member %d (%s): %w", role, a.Members[role].Path, err)
	}
	clearRun := func(first, n uint64) error {
		off := a.DataOffset + int64(first)*mrs
		length := min(int64(n)*mrs, d.Size()-off)
		if length <= 0 {
			return nil
		}
		return d.Clear(off, length)
	}
	var first, n uint64
	for i, r := range regions {
		if i > 0 && r == first+n {
			n++
			continue
		}
		if n > 0 {
			if err := clearRun(first, n); err != nil {
				d.Close()
				return fmt.Errorf("clear member %d (%s): %w", role, a.Members[role].Path, err)
			}
		}
		first, n = r, 1
	}
	if err := clearRun(first, n); err != nil {
		d.Close()
		return fmt.Errorf("clear member %d (%s): %w", role, a.Members[role].Path, err)
	}
	return d.Close()
}
