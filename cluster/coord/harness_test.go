package coord

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/memnet"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// The model: three member hosts holding real bytes (one raid35 member
// each, M = 3), marks per writer slot and fencing minimums like
// blockdev/member; each writer node runs lockd (over lockd/memnet), a
// Courier (over cluster.MemNet), a coordinator and its own raid35 engine
// whose member connections carry its writer identity.

const (
	tBlock      = 4096
	tFrag       = tBlock / 2 // M = 3: two data fragments
	tRegion     = 64 << 10   // array bytes per bitmap region
	tMemRegion  = tRegion / 2
	tRegions    = 16
	tArraySize  = tRegions * tRegion
	tMemberSize = tArraySize / 2
	tHosts      = 3
)

var quiet = slog.New(slog.DiscardHandler)

// fakeHost is one member host with one disk.
type fakeHost struct {
	name     string
	mu       sync.Mutex
	data     []byte
	marks    map[uint32]map[uint64]bool
	minEpoch map[uint32]uint64
}

func newFakeHost(name string) *fakeHost {
	return &fakeHost{name: name, data: make([]byte, tMemberSize), marks: map[uint32]map[uint64]bool{}, minEpoch: map[uint32]uint64{}}
}

func (h *fakeHost) Name() string { return h.name }

func (h *fakeHost) Fence(_ context.Context, slot uint32, epoch uint64) error {
	h.mu.Lock() // writes run under mu: none is in flight once we hold it
	defer h.mu.Unlock()
	h.minEpoch[slot] = max(h.minEpoch[slot], epoch)
	return nil
}

func (h *fakeHost) Dirty(_ context.Context, slot uint32, _ uint64) ([]uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []uint64
	for r := range h.marks[slot] {
		out = append(out, r)
	}
	slices.Sort(out)
	return out, nil
}

func (h *fakeHost) Clear(_ context.Context, slot uint32, epoch uint64, regions []uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if epoch < h.minEpoch[slot] {
		return fmt.Errorf("fenced: clear of slot %d under epoch %d, minimum %d: %w", slot, epoch, h.minEpoch[slot], remote.ErrFenced)
	}
	for _, r := range regions {
		delete(h.marks[slot], r)
	}
	return nil
}

// fenceOf returns slot's minimum epoch.
func (h *fakeHost) fenceOf(slot uint32) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.minEpoch[slot]
}

// marked returns slot's marks.
func (h *fakeHost) marked(slot uint32) []uint64 {
	rs, _ := h.Dirty(context.Background(), slot, 0)
	return rs
}

// conn is a writer's connection to the host's disk.
func (h *fakeHost) conn(w raid.Writer, onFenced func()) *hostConn {
	return &hostConn{h: h, w: w, onFenced: onFenced}
}

// hostConn is a member device as a writer of slot w.Slot, epoch w.Epoch,
// sees it: writes are refused once fenced and marked before they apply.
type hostConn struct {
	h        *fakeHost
	w        raid.Writer
	onFenced func() // may be nil
}

var _ blockdev.Device = (*hostConn)(nil)

func (c *hostConn) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), tMemberSize); err != nil {
		return 0, err
	}
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	return copy(p, c.h.data[off:]), nil
}

func (c *hostConn) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), tMemberSize); err != nil {
		return 0, err
	}
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	if min := c.h.minEpoch[c.w.Slot]; c.w.Epoch < min {
		if c.onFenced != nil {
			c.onFenced()
		}
		return 0, fmt.Errorf("fenced: slot %d epoch %d, minimum %d: %w", c.w.Slot, c.w.Epoch, min, remote.ErrFenced)
	}
	if len(p) > 0 {
		m := c.h.marks[c.w.Slot]
		if m == nil {
			m = map[uint64]bool{}
			c.h.marks[c.w.Slot] = m
		}
		for r := off / tMemRegion; r <= (off+int64(len(p))-1)/tMemRegion; r++ {
			m[uint64(r)] = true // mark before write
		}
	}
	return copy(c.h.data[off:], p), nil
}

func (c *hostConn) Flush() error { return nil }
func (c *hostConn) Trim(off, length int64) error {
	_, err := c.WriteAt(make([]byte, length), off)
	return err
}
func (c *hostConn) Zero(off, length int64) error { return c.Trim(off, length) }
func (c *hostConn) Size() int64                  { return tMemberSize }
func (c *hostConn) BlockSize() int               { return 512 }
func (c *hostConn) Close() error                 { return nil }

// parityMismatches counts the blocks whose fragments do not XOR to zero.
func parityMismatches(hosts []*fakeHost) (bad []int64) {
	for _, h := range hosts {
		h.mu.Lock()
		defer h.mu.Unlock()
	}
	for n := int64(0); n < tMemberSize/tFrag; n++ {
		for i := int64(0); i < tFrag; i++ {
			var x byte
			for _, h := range hosts {
				x ^= h.data[n*tFrag+i]
			}
			if x != 0 {
				bad = append(bad, n)
				break
			}
		}
	}
	return bad
}

// modelLocal is the array as the coordinator sees it on one node.
type modelLocal struct {
	hosts []*fakeHost

	mu         sync.Mutex
	sb         meta.Array
	eng        *raid.Raid35
	refuse     error            // ApplySuperblock refuses with it
	cannotOpen map[string]error // CanOpen refuses these specs
	resynced   []int64          // offsets given to Resync
	recovered  []int64          // offsets given to Recover
	resyncHook func(off int64) error
	// w and onFenced are the engine's writer identity (open).
	w        raid.Writer
	onFenced func()
}

func (m *modelLocal) Superblock() meta.Array {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, _ := cloneSuperblock(m.sb)
	return *sb
}

func (m *modelLocal) ApplySuperblock(sb *meta.Array) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refuse != nil {
		return m.refuse
	}
	c, err := cloneSuperblock(*sb)
	if err != nil {
		return err
	}
	old := m.sb
	m.sb = *c
	if m.eng == nil {
		return nil
	}
	// Follow the member table as raid/array does: failed, added
	// (recovering: written, not read), rebuilt.
	for role, nm := range sb.Members {
		om := old.Members[role]
		switch {
		case nm.State == meta.StateFailed && om.State != meta.StateFailed:
			m.eng.Fail(role, errors.New("failed by the cluster"))
		case nm.State == meta.StateRecovering && om.State != meta.StateRecovering:
			if err := m.eng.StartRecovery(role, m.hosts[role].conn(m.w, m.onFenced)); err != nil {
				return err
			}
		case nm.State == meta.StateActive && om.State == meta.StateRecovering:
			if err := m.eng.FinishRecovery(role); err != nil {
				return err
			}
		}
	}
	return nil
}

func (m *modelLocal) Recover(_ context.Context, role int, off, length int64) error {
	m.mu.Lock()
	m.recovered = append(m.recovered, off)
	hook, eng := m.resyncHook, m.eng
	m.mu.Unlock()
	if hook != nil {
		if err := hook(off); err != nil {
			return err
		}
	}
	if eng == nil {
		return errors.New("model array not open")
	}
	return eng.Recover(role, off, length)
}

func (m *modelLocal) CanOpen(_ context.Context, spec string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cannotOpen[spec]
}

func (m *modelLocal) Resync(_ context.Context, off, length int64) error {
	m.mu.Lock()
	m.resynced = append(m.resynced, off)
	hook, eng := m.resyncHook, m.eng
	m.mu.Unlock()
	if hook != nil {
		if err := hook(off); err != nil {
			return err
		}
	}
	if eng == nil {
		return errors.New("model array not open")
	}
	return eng.Resync(off, length)
}

func (m *modelLocal) MemberHosts() ([]MemberHost, error) {
	out := make([]MemberHost, len(m.hosts))
	for i, h := range m.hosts {
		out[i] = h
	}
	return out, nil
}

func (m *modelLocal) resyncedRegions() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return regionsOfOffsets(m.resynced)
}

func (m *modelLocal) recoveredRegions() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return regionsOfOffsets(m.recovered)
}

// regionsOfOffsets returns the sorted, distinct regions of offsets.
func regionsOfOffsets(offs []int64) []uint64 {
	var out []uint64
	for _, off := range offs {
		out = append(out, uint64(off/tRegion))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// open builds this node's raid35 engine with its writer identity.
func (m *modelLocal) open(t testing.TB, w raid.Writer, onFenced func()) *raid.Raid35 {
	devs := make([]blockdev.Device, len(m.hosts))
	for i, h := range m.hosts {
		devs[i] = h.conn(w, onFenced)
	}
	eng, err := raid.NewRaid35(raid.Geometry{Members: tHosts, BlockSize: tBlock}, devs, tMemberSize, raid.Config{})
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.eng, m.w, m.onFenced = eng, w, onFenced
	m.mu.Unlock()
	return eng
}

// tnode is one writer node of the model.
type tnode struct {
	id     lockd.NodeID
	lk     *lockd.Node
	msg    *cluster.Courier
	router *Router
	gate   *WriteGate
	local  *modelLocal
	co     *Coordinator
	eng    *raid.Raid35
	w      raid.Writer
	// fenced is set once a member host refused this node's epoch: like
	// raid/array, the node then stops and acknowledges no write (a fenced
	// member is not a failed member).
	fenced atomic.Bool
	down   bool // crashed (test goroutine only)
	// slotLost is set by the coordinator's OnSlotLost.
	slotLost atomic.Bool
}

var errModelFenced = errors.New("model node is fenced")

// write writes p at off through the gate, as the array would.
func (n *tnode) write(ctx context.Context, p []byte, off int64) error {
	if n.fenced.Load() {
		return errModelFenced
	}
	tk, err := n.gate.Enter(ctx, off, int64(len(p)))
	if err != nil {
		return err
	}
	_, err = n.eng.WriteAt(p, off)
	if lerr := n.gate.Leave(tk); err == nil {
		err = lerr
	}
	if n.fenced.Load() {
		return errModelFenced // fenced meanwhile: it may not have reached every member
	}
	return err
}

// tcluster is the model cluster; build it inside a synctest bubble.
type tcluster struct {
	t     *testing.T
	lnet  *memnet.Network
	mnet  *cluster.MemNet
	hosts []*fakeHost
	nodes map[lockd.NodeID]*tnode
	ids   []lockd.NodeID
}

func newTCluster(t *testing.T, names ...string) *tcluster { return newTClusterWith(t, nil, names...) }

// newTClusterWith is newTCluster with each coordinator's Config passed
// through tune (if not nil) first.
func newTClusterWith(t *testing.T, tune func(*Config), names ...string) *tcluster {
	c := &tcluster{t: t, lnet: memnet.New(1), mnet: cluster.NewMemNet(quiet), nodes: map[lockd.NodeID]*tnode{}}
	for i := range tHosts {
		c.hosts = append(c.hosts, newFakeHost(fmt.Sprintf("h%d", i)))
	}
	sb := *testSuperblock()
	sb.Size, sb.RegionSize = tArraySize, tRegion
	for _, n := range names {
		c.ids = append(c.ids, lockd.NodeID(n))
	}
	for i, id := range c.ids {
		lk, err := lockd.StartNode(lockd.NodeConfig{
			Config:       lockd.Config{ID: id, Incarnation: uint64(i + 1), Voters: c.ids},
			Transport:    c.lnet.Endpoint(id),
			TickInterval: 10 * time.Millisecond,
			Logger:       quiet,
		})
		if err != nil {
			t.Fatal(err)
		}
		n := &tnode{id: id, lk: lk, msg: c.mnet.Messenger(id), gate: NewWriteGate(5 * time.Second),
			local: &modelLocal{hosts: c.hosts, sb: sb, cannotOpen: map[string]error{}}}
		n.router = NewRouter(n.msg)
		cfg := Config{Node: id, Lockd: lk, Router: n.router, Local: n.local, Gate: n.gate,
			Slots: 8, GroupRegions: 4, Timeout: 5 * time.Second, Poll: 10 * time.Millisecond, Logger: quiet,
			OnSlotLost: func(error) { n.slotLost.Store(true) }}
		if tune != nil {
			tune(&cfg)
		}
		n.co, err = New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes[id] = n
	}
	c.lnet.Start(time.Millisecond)
	t.Cleanup(c.close)
	for _, n := range c.nodes {
		n.lk.SetMembers(c.ids)
	}
	c.waitFor("quorum everywhere", func() bool {
		for _, n := range c.nodes {
			if !n.lk.HasQuorum() {
				return false
			}
		}
		return true
	})
	return c
}

func (c *tcluster) close() {
	for _, n := range c.nodes {
		n.co.Close()
	}
	for _, n := range c.nodes {
		n.lk.Close()
	}
	c.lnet.Stop()
	c.mnet.Close()
}

// join makes every named node join and start, in order, and opens its
// engine with its identity.
func (c *tcluster) join(ids ...lockd.NodeID) {
	c.t.Helper()
	for _, id := range ids {
		n := c.nodes[id]
		w, err := n.co.Join(context.Background())
		if err != nil {
			c.t.Fatalf("%s join: %v", id, err)
		}
		n.w = w
		n.eng = n.local.open(c.t, w, func() { n.fenced.Store(true) })
		if err := n.co.Start(context.Background()); err != nil {
			c.t.Fatalf("%s start: %v", id, err)
		}
	}
}

// crash stops node id as a crash would (no lock released, nothing sent)
// and tells the nodes still up that it is gone.
func (c *tcluster) crash(id lockd.NodeID) {
	c.lnet.Crash(id)
	c.mnet.Down(id)
	c.nodes[id].lk.Close()
	c.nodes[id].down = true
	var rest []lockd.NodeID
	for _, x := range c.ids {
		if !c.nodes[x].down {
			rest = append(rest, x)
		}
	}
	for _, x := range rest {
		c.nodes[x].lk.SetMembers(rest)
	}
}

// waitFor polls cond (in fake time) until it holds; the test fails if it
// never does within 60 fake seconds.
func (c *tcluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	for range 6000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("timed out waiting for %s", what)
}

// pattern returns block-sized data that names its writer, block and
// version.
func pattern(who byte, block int64, version int) []byte {
	p := make([]byte, tBlock)
	for i := range p {
		p[i] = who ^ byte(block*31) ^ byte(version*7) ^ byte(i)
	}
	return p
}
