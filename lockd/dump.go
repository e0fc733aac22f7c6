package lockd

// Dump is a read-only snapshot of one node, the lockdump of this project: what it masters
// (resources with their queues) and what it holds or waits for. `ddraid locks --json` prints
// one per node. Modes print as names ("--" for none).
type Dump struct {
	Node      NodeID         `json:"node"`
	Epoch     uint64         `json:"epoch"`
	Phase     string         `json:"phase"` // init, normal, stopped (recovery), rebuild (recovery)
	Quorum    bool           `json:"quorum"`
	Members   []NodeID       `json:"members"`
	Resources []ResourceDump `json:"resources"` // mastered by this node
	Locks     []LockDump     `json:"locks"`     // held or requested by this node
}

// ResourceDump is one resource at its master.
type ResourceDump struct {
	Lockspace  string       `json:"lockspace"`
	Name       string       `json:"name"`
	Master     NodeID       `json:"master"`
	LVBSeq     uint64       `json:"lvb_seq"`
	LVBValid   bool         `json:"lvb_valid"`
	Granted    []HolderDump `json:"granted"`
	Converting []HolderDump `json:"converting"`
	Waiting    []HolderDump `json:"waiting"`
}

// HolderDump is one lock in a master's queue.
type HolderDump struct {
	Node      NodeID `json:"node"`
	Lock      uint64 `json:"lock"`
	Granted   Mode   `json:"granted"`
	Requested Mode   `json:"requested"`
	Token     Token  `json:"token"`
}

// LockDump is one lock as its holder sees it.
type LockDump struct {
	ID        uint64 `json:"id"`
	Lockspace string `json:"lockspace"`
	Resource  string `json:"resource"`
	Master    NodeID `json:"master"`
	Granted   Mode   `json:"granted"`
	Pending   string `json:"pending"`
	Requested Mode   `json:"requested"`
	Token     Token  `json:"token"`
}

// Dump returns a snapshot of the node's lock state.
func (c *Core) Dump() Dump {
	d := Dump{Node: c.cfg.ID, Epoch: c.epoch, Phase: c.phase.String(), Quorum: c.HasQuorum(), Members: c.Members(),
		Resources: []ResourceDump{}, Locks: []LockDump{}}
	for _, k := range c.masterKeys() {
		r := c.masters[k]
		rd := ResourceDump{Lockspace: k.space, Name: k.name, Master: c.cfg.ID, LVBSeq: r.lvbSeq, LVBValid: r.lvbValid,
			Granted: []HolderDump{}, Converting: []HolderDump{}, Waiting: []HolderDump{}}
		for _, q := range []struct {
			src []*lkb
			dst *[]HolderDump
		}{{r.granted, &rd.Granted}, {r.converting, &rd.Converting}, {r.waiting, &rd.Waiting}} {
			for _, lk := range q.src {
				*q.dst = append(*q.dst, HolderDump{Node: lk.id.Node, Lock: lk.id.ID, Granted: lk.gr, Requested: lk.rq, Token: lk.token})
			}
		}
		d.Resources = append(d.Resources, rd)
	}
	for _, li := range c.Locks() {
		d.Locks = append(d.Locks, LockDump{ID: li.ID, Lockspace: li.Space, Resource: li.Resource,
			Master: masterOf(c.view, resKey{li.Space, li.Resource}), Granted: li.Granted, Pending: li.Pending.String(),
			Requested: li.Requested, Token: li.Token})
	}
	return d
}
