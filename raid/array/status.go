package array

import (
	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/resync"
)

// Status is a running array's status: the stored view plus what only the
// running process knows.
type Status struct {
	raid.Status
	Job          *resync.Progress   `json:"job,omitempty"`
	LastJob      *resync.Progress   `json:"last_job,omitempty"`
	Queued       int                `json:"queued,omitempty"`
	DirtyRegions int                `json:"dirty_regions"`
	RegionSize   int64              `json:"region_size,omitempty"`
	MemberIO     []blockdev.IOStats `json:"member_io,omitempty"`
	// ReadsAround counts the reads that went through parity in place of
	// a busy member (raid35; see raid.Raid35.TrustParity).
	ReadsAround int64 `json:"reads_around,omitempty"`
	// Fenced is set when a member host refused this node's epoch: IO has
	// stopped (State is then "fenced"); no member was failed.
	Fenced bool `json:"fenced,omitempty"`
}

// Status returns the array's status.
func (a *Array) Status() Status {
	sb := a.Superblock()
	st := Status{Status: raid.Describe(a.opts.StateDir, &sb)}
	if a.fenced.Load() {
		st.Fenced, st.State = true, "fenced"
	}
	if t, ok := a.sync.(raid.ParityTruster); ok {
		st.ReadsAround = t.ReadsAround()
	}
	if a.bm != nil {
		st.DirtyRegions = len(a.bm.Dirty())
		st.RegionSize = a.bm.RegionSize()
	}
	a.mu.Lock()
	if a.current != nil {
		cp := *a.current
		st.Job = &cp
	}
	if a.last != nil {
		cp := *a.last
		st.LastJob = &cp
	}
	st.Queued = len(a.jobs)
	stats := append([]*blockdev.Stats(nil), a.stats...) // replace and add change them
	a.mu.Unlock()
	for _, s := range stats {
		var io blockdev.IOStats
		if s != nil {
			io = s.Snapshot()
		}
		st.MemberIO = append(st.MemberIO, io)
	}
	return st
}
