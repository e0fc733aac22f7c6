package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/ddraid/ddraid/lockd"
)

// Member states in a Status.
const (
	StateAlive   = "alive"   // in this node's gossip view
	StateFailed  = "failed"  // was alive, left or failed since
	StateUnknown = "unknown" // a configured node never seen
)

// MemberStatus is one node as this node sees it.
type MemberStatus struct {
	Name        lockd.NodeID `json:"name"`
	State       string       `json:"state"`
	Voter       bool         `json:"voter"`
	Incarnation uint64       `json:"incarnation,omitempty"`
	Gossip      string       `json:"gossip,omitempty"`
	RPC         string       `json:"rpc,omitempty"`
	// Lockd: the node is in lockd's agreed member list (the last
	// completed epoch).
	Lockd bool `json:"lockd"`
}

// Status is the cluster as this node sees it: `ddraid cluster status`.
type Status struct {
	Node        lockd.NodeID `json:"node"`
	Incarnation uint64       `json:"incarnation"`
	// Quorum: this node holds lockd's quorum lease and its lockd is not
	// recovering; its locks are valid.
	Quorum bool   `json:"quorum"`
	Epoch  uint64 `json:"epoch"`
	Phase  string `json:"phase"`
	// Voters is the configured node list; a strict majority is quorum.
	Voters  []lockd.NodeID `json:"voters"`
	Members []MemberStatus `json:"members"`
}

// Status reports the node's view of the cluster.
// Call it after Start.
func (n *Node) Status() Status {
	d := n.locks.Dump()
	st := Status{Node: n.cfg.Name, Incarnation: n.inc, Quorum: n.locks.HasQuorum(), Epoch: d.Epoch, Phase: d.Phase,
		Voters: slices.Sorted(slices.Values(n.cfg.Voters))}
	n.mu.Lock()
	known := make(map[lockd.NodeID]MemberStatus, len(n.known))
	for k, v := range n.known {
		known[k] = v
	}
	n.mu.Unlock()
	for _, v := range n.cfg.Voters {
		if _, ok := known[v]; !ok {
			known[v] = MemberStatus{Name: v, State: StateUnknown}
		}
	}
	for _, m := range known {
		m.Voter = slices.Contains(n.cfg.Voters, m.Name)
		m.Lockd = slices.Contains(d.Members, m.Name)
		st.Members = append(st.Members, m)
	}
	slices.SortFunc(st.Members, func(a, b MemberStatus) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return st
}

// nodeState is what Config.StatePath holds: lockd's hard state and the
// incarnation of the boot that wrote it. The hard state's fields stay at
// the top level, so a file written before the incarnation was kept reads
// as one with incarnation 0.
type nodeState struct {
	lockd.HardState
	Incarnation uint64 `json:"incarnation,omitempty"`
}

// nextIncarnation returns the incarnation of a boot at wall-clock time now
// (ns) after one with incarnation last: now, unless the clock reads no
// later than last (set back, or a boot without a clock source), and then
// last+1, since lockd needs incarnations to grow from boot to boot.
func nextIncarnation(now int64, last uint64) uint64 {
	if now > 0 && uint64(now) > last {
		return uint64(now)
	}
	return last + 1
}

// loadHardState reads lockd's hard state and the last boot's incarnation
// from path; a missing file (or path "") is a node that never ran.
func loadHardState(path string) (nodeState, error) {
	var hs nodeState
	if path == "" {
		return hs, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return hs, nil
	}
	if err != nil {
		return hs, fmt.Errorf("cluster: lockd state: %w", err)
	}
	if err := json.Unmarshal(b, &hs); err != nil {
		return hs, fmt.Errorf("cluster: lockd state %s is corrupt (remove it only if every other node kept its own): %w", path, err)
	}
	return hs, nil
}

// saveHardState writes hs to path durably: a synced temporary file renamed
// over the old one, then the directory synced.
func saveHardState(path string, hs nodeState) error {
	b, err := json.Marshal(hs)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("cluster: save lockd state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("cluster: save lockd state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("cluster: save lockd state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cluster: save lockd state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("cluster: save lockd state: %w", err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("cluster: save lockd state: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cluster: save lockd state: %w", err)
	}
	return nil
}
