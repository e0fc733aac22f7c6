package coord

import (
	"context"
	"fmt"

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
}

// ArrayLocal adapts a running array to Local, with agent member hosts
// reached with cfg (TLS, timeouts).
func ArrayLocal(a RunningArray, cfg remote.Config) Local { return &arrayLocal{a: a, cfg: cfg} }

type arrayLocal struct {
	a   RunningArray
	cfg remote.Config
}

func (l *arrayLocal) Superblock() meta.Array                         { return l.a.Superblock() }
func (l *arrayLocal) ApplySuperblock(sb *meta.Array) error           { return l.a.ApplySuperblock(sb) }
func (l *arrayLocal) CanOpen(ctx context.Context, spec string) error { return l.a.CanOpen(ctx, spec) }
func (l *arrayLocal) Resync(ctx context.Context, off, length int64) error {
	return l.a.ResyncRange(ctx, off, length)
}
func (l *arrayLocal) MemberHosts() ([]MemberHost, error) { return AgentHosts(l.a.Superblock(), l.cfg) }
