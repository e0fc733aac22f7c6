package coord

import (
	"context"
	"fmt"
	"sync"

	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// agentHost is a member host reached over a ddraid agent's member export
// (raid.FenceMember, raid.MemberDirtyRegions, raid.ClearMemberRegions).
type agentHost struct {
	sb   *meta.Array
	role int
	cfg  remote.Config
}

func (h *agentHost) Name() string { return h.sb.Members[h.role].Path }

func (h *agentHost) Fence(ctx context.Context, slot uint32, epoch uint64) error {
	return raid.FenceMember(ctx, h.sb, h.role, h.cfg, slot, epoch)
}

func (h *agentHost) Dirty(ctx context.Context, slot uint32, _ uint64) ([]uint64, error) {
	return raid.MemberDirtyRegions(ctx, h.sb, h.role, h.cfg, slot)
}

func (h *agentHost) Clear(ctx context.Context, slot uint32, epoch uint64, regions []uint64) error {
	return raid.ClearMemberRegions(ctx, h.sb, h.role, h.cfg, raid.Writer{Slot: slot, Epoch: epoch}, regions)
}

// AgentHosts returns the member hosts of sb's members in use (active or
// recovering): the hosts whose marks and fences count. Failed and missing
// members are left out (their data is rebuilt before it is used again).
// Every member in use must be hosted by a ddraid agent (HOST[:PORT]:/PATH):
// only agents keep per-slot marks and fence stale writers, so an array
// with any other member cannot be served by several writers.
func AgentHosts(sb meta.Array, cfg remote.Config) ([]MemberHost, error) {
	snap := sb
	snap.Members = append([]meta.Member(nil), sb.Members...)
	var out []MemberHost
	for role, m := range snap.Members {
		if m.State != meta.StateActive && m.State != meta.StateRecovering {
			continue
		}
		if !raid.IsAgentMember(m.Path) {
			return nil, fmt.Errorf("array %s: member %d (%s) is not hosted by a ddraid agent: it cannot fence writers or keep their marks, so the array cannot be served by several writers", sb.Name, role, m.Path)
		}
		out = append(out, &agentHost{sb: &snap, role: role, cfg: cfg})
	}
	return out, nil
}

// RunningArray is what a running raid/array.Array offers the coordinator
// (see raid/array/cluster.go).
type RunningArray interface {
	Superblock() meta.Array
	ApplySuperblock(sb *meta.Array) error
	CanOpen(ctx context.Context, spec string) error
	ResyncRange(ctx context.Context, off, length int64) error
	RecoverRange(ctx context.Context, role int, off, length int64) error
}

// ArrayLocal is the Local of an array this node serves, from before it is
// assembled (the coordinator must answer the other nodes as soon as it
// exists, and the array can only be opened with the writer identity Join
// returns) to its stop. Before Attach it keeps superblocks in the state
// directory's metadata store; after, it hands everything to the array.
type ArrayLocal struct {
	stateDir string
	cfg      remote.Config

	mu sync.Mutex
	sb meta.Array
	a  RunningArray
}

// NewArrayLocal returns the Local of the array whose stored superblock is
// sb, in stateDir; member hosts are reached with cfg (TLS, timeouts).
func NewArrayLocal(stateDir string, sb meta.Array, cfg remote.Config) *ArrayLocal {
	return &ArrayLocal{stateDir: stateDir, cfg: cfg, sb: sb}
}

// Attach hands the opened array over. A superblock stored since the array
// read its own is applied to it.
func (l *ArrayLocal) Attach(a RunningArray) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.a = a
	if cur := a.Superblock(); l.sb.Events > cur.Events {
		return a.ApplySuperblock(&l.sb)
	}
	return nil
}

func (l *ArrayLocal) running() (RunningArray, meta.Array) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.a, l.sb
}

// Superblock implements Local.
func (l *ArrayLocal) Superblock() meta.Array {
	a, sb := l.running()
	if a != nil {
		return a.Superblock()
	}
	sb.Members = append([]meta.Member(nil), sb.Members...)
	sb.Spares = append([]meta.Member(nil), sb.Spares...)
	return sb
}

// ApplySuperblock implements Local.
func (l *ArrayLocal) ApplySuperblock(sb *meta.Array) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.a != nil {
		return l.a.ApplySuperblock(sb)
	}
	if err := meta.View(l.stateDir, func(s *meta.Store) error { return s.Put(sb) }); err != nil {
		return fmt.Errorf("store superblock event %d of %s: %w", sb.Events, sb.Name, err)
	}
	c, err := cloneSuperblock(*sb)
	if err != nil {
		return err
	}
	l.sb = *c
	return nil
}

// CanOpen implements Local.
func (l *ArrayLocal) CanOpen(ctx context.Context, spec string) error {
	if a, _ := l.running(); a != nil {
		return a.CanOpen(ctx, spec)
	}
	path, err := raid.MemberPath(spec)
	if err != nil {
		return err
	}
	dev, err := raid.OpenMemberDevice(path, raid.MemberOptions{ReadOnly: true, Remote: l.cfg})
	if err != nil {
		return fmt.Errorf("open %s: %w", spec, err)
	}
	return dev.Close()
}

// Resync implements Local.
func (l *ArrayLocal) Resync(ctx context.Context, off, length int64) error {
	a, sb := l.running()
	if a == nil {
		return fmt.Errorf("array %s is not assembled on this node yet", sb.Name)
	}
	return a.ResyncRange(ctx, off, length)
}

// Recover implements Local.
func (l *ArrayLocal) Recover(ctx context.Context, role int, off, length int64) error {
	a, sb := l.running()
	if a == nil {
		return fmt.Errorf("array %s is not assembled on this node yet", sb.Name)
	}
	return a.RecoverRange(ctx, role, off, length)
}

// MemberHosts implements Local.
func (l *ArrayLocal) MemberHosts() ([]MemberHost, error) { return AgentHosts(l.Superblock(), l.cfg) }
