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
	// ReadBalancing is set while reads are spread over the array's
	// redundancy, and ReadsAround counts the reads served around a busy
	// member: through parity (raid35) or by a copy other than the first
	// (mirror); see raid.ReadBalancer. Both are unset on other levels.
	ReadBalancing *bool `json:"read_balancing,omitempty"`
	ReadsAround   int64 `json:"reads_around,omitempty"`
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
	if t, ok := a.sync.(raid.ReadBalancer); ok {
		on := t.RedundancyTrusted()
		st.ReadBalancing, st.ReadsAround = &on, t.ReadsAround()
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
