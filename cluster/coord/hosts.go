package coord

import (
	"context"
	"fmt"
	"slices"
)

// MemberHost is one member host of the array as a survivor taking a slot
// over sees it. Regions are array bitmap regions (member region i is the
// part of array region i on that member). The production implementation
// talks to blockdev/member (control socket and the ddraid:dirty context);
// tests use hosts holding byte arrays.
type MemberHost interface {
	// Name names the host in errors and logs.
	Name() string
	// Fence makes the host refuse slot's writes and clears under any
	// epoch below epoch. It returns only once nothing more is written
	// under an older epoch (writes already admitted have finished).
	Fence(ctx context.Context, slot uint32, epoch uint64) error
	// Dirty returns the regions the host holds marked for slot.
	Dirty(ctx context.Context, slot uint32, epoch uint64) ([]uint64, error)
	// Clear removes slot's marks of regions, as a writer of slot with
	// epoch (refused if the slot was fenced above epoch).
	Clear(ctx context.Context, slot uint32, epoch uint64, regions []uint64) error
}

// fenceAll fences slot at every host; any failure aborts (a host that
// cannot be fenced might still apply the old writer's writes).
func fenceAll(ctx context.Context, hosts []MemberHost, slot uint32, epoch uint64) error {
	for _, h := range hosts {
		if err := h.Fence(ctx, slot, epoch); err != nil {
			return fmt.Errorf("fence slot %d at epoch %d at member host %s: %w", slot, epoch, h.Name(), err)
		}
	}
	return nil
}

// dirtyUnion returns the sorted union of slot's marked regions over every
// host. A host that does not answer aborts: its marks might be the only
// trace of a write.
func dirtyUnion(ctx context.Context, hosts []MemberHost, slot uint32, epoch uint64) ([]uint64, error) {
	var all []uint64
	for _, h := range hosts {
		rs, err := h.Dirty(ctx, slot, epoch)
		if err != nil {
			return nil, fmt.Errorf("read the dirty regions of slot %d at member host %s: %w", slot, h.Name(), err)
		}
		all = append(all, rs...)
	}
	slices.Sort(all)
	return slices.Compact(all), nil
}

// clearAll clears regions of slot at every host.
func clearAll(ctx context.Context, hosts []MemberHost, slot uint32, epoch uint64, regions []uint64) error {
	for _, h := range hosts {
		if err := h.Clear(ctx, slot, epoch, regions); err != nil {
			return fmt.Errorf("clear %d regions of slot %d at member host %s: %w", len(regions), slot, h.Name(), err)
		}
	}
	return nil
}

// group is the work of one resync/K lock: the dirty regions of region
// group K, in order.
type group struct {
	K       uint64
	Regions []uint64
}

// planGroups cuts sorted, distinct regions into groups of groupRegions
// consecutive regions (group K holds regions [K·groupRegions,
// (K+1)·groupRegions)), in order. Pure.
func planGroups(regions []uint64, groupRegions int) []group {
	if groupRegions < 1 {
		groupRegions = 1
	}
	var out []group
	for _, r := range regions {
		k := r / uint64(groupRegions)
		if len(out) == 0 || out[len(out)-1].K != k {
			out = append(out, group{K: k})
		}
		out[len(out)-1].Regions = append(out[len(out)-1].Regions, r)
	}
	return out
}

// span returns the window [lo, hi) in array bytes that covers g's regions
// (clipped to the array's size).
func (g group) span(regionSize, size int64) (lo, hi int64) {
	lo = int64(g.Regions[0]) * regionSize
	hi = min((int64(g.Regions[len(g.Regions)-1])+1)*regionSize, size)
	return lo, hi
}
