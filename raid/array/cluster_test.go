package array

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

func TestApplySuperblock(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	sb := a.Superblock()
	sb.Events++
	sb.Members[1].State = meta.StateFailed
	if err := a.ApplySuperblock(&sb); err != nil {
		t.Fatal(err)
	}
	if got := memberStates(a.Superblock()); got != "active failed active" {
		t.Errorf("running superblock: %s", got)
	}
	if st := a.sync.MemberStates()[1]; st != raid.MemberFailed {
		t.Errorf("engine member 1: %v, want failed", st)
	}
	a.bg.Wait() // the failure recording
	if got := f.stored(); got.Events != sb.Events || memberStates(*got) != "active failed active" {
		t.Errorf("stored: events %d (%s), want %d with member 1 failed", got.Events, memberStates(*got), sb.Events)
	}

	stale := a.Superblock()
	stale.Events -= 2
	if err := a.ApplySuperblock(&stale); err == nil || !strings.Contains(err.Error(), "older") {
		t.Errorf("stale superblock: %v", err)
	}
	other := a.Superblock()
	other.Events++
	other.UUID = meta.UUID{9}
	if err := a.ApplySuperblock(&other); err == nil || !strings.Contains(err.Error(), "offered to array") {
		t.Errorf("another array's superblock: %v", err)
	}
	moved := a.Superblock()
	moved.Events++
	moved.Members[2].Path = f.newFile("elsewhere", memberSize)
	if err := a.ApplySuperblock(&moved); err != nil {
		t.Errorf("a member table change the running array cannot follow: %v", err)
	}
	if _, ok := f.log.find("next assembly"); !ok {
		t.Error("no warning that the change waits for the next assembly")
	}
	if got := f.stored(); got.Members[2].Path != moved.Members[2].Path {
		t.Error("the superblock was not stored although it could not be followed")
	}
	f.close(a)
}

func TestCanOpen(t *testing.T) {
	f := newFixture(t, raid.LevelMirror, 2, false, nil)
	a := f.openArray()
	ctx := context.Background()
	if err := a.CanOpen(ctx, f.newFile("new", memberSize)); err != nil {
		t.Errorf("an existing file: %v", err)
	}
	if err := a.CanOpen(ctx, f.dir+"/absent"); err == nil {
		t.Error("a missing file could be opened")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := a.CanOpen(cctx, f.newFile("new2", memberSize)); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	f.close(a)
}

func TestResyncRange(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			a := f.openArray()
			m := newModel(t, a)
			m.writeRegions(a, 3)
			a.bm.ClearRegions(a.bm.Dirty())
			sb := a.Superblock()
			corruptRedundancy(t, sb, 3*regionSize+4096)
			if n := check(t, a, false); n == 0 {
				t.Fatal("the corruption is not seen by check")
			}
			if err := a.ResyncRange(context.Background(), 3*regionSize, regionSize); err != nil {
				t.Fatal(err)
			}
			if n := check(t, a, false); n != 0 {
				t.Errorf("%d mismatches after ResyncRange", n)
			}
			// The resync is marked in the array's own bitmap: its writes at
			// agent members are cleared by the lazy clear.
			if d := a.bm.Dirty(); len(d) != 1 || d[0] != 3 {
				t.Errorf("dirty regions after ResyncRange: %v, want [3]", d)
			}
			m.verify(a)
			f.close(a)
		})
	}
}

// rangeGate blocks writes overlapping [lo, hi) until opened.
type rangeGate struct {
	lo, hi   int64
	open     chan struct{}
	mu       sync.Mutex
	waiting  int
	entered  int
	left     int
	leaveErr error // Leave's answer
}

func (g *rangeGate) Enter(ctx context.Context, off, length int64) (uint32, error) {
	if off < g.hi && g.lo < off+length {
		g.mu.Lock()
		g.waiting++
		g.mu.Unlock()
		select {
		case <-g.open:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	g.mu.Lock()
	g.entered++
	g.mu.Unlock()
	return 7, nil
}

func (g *rangeGate) Leave(ticket uint32) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ticket == 7 {
		g.left++
	}
	return g.leaveErr
}

func TestGatedDevice(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	g := &rangeGate{lo: 4096, hi: 8192, open: make(chan struct{})}
	dev := gateWrap(mem, g)
	if gateWrap(mem, nil) != blockdev.Device(mem) {
		t.Error("without a gate the device is not passed through")
	}
	ops := []struct {
		name string
		fn   func(off int64) error
	}{
		{"write", func(off int64) error { _, err := dev.WriteAt(make([]byte, 512), off); return err }},
		{"trim", func(off int64) error { return dev.Trim(off, 512) }},
		{"zero", func(off int64) error { return dev.Zero(off, 512) }},
		{"zero-no-hole", func(off int64) error {
			err := dev.(blockdev.NoHoleZeroer).ZeroNoHole(off, 512)
			if errors.Is(err, blockdev.ErrNotSupported) {
				return nil
			}
			return err
		}},
	}
	for _, op := range ops {
		if err := op.fn(0); err != nil {
			t.Errorf("%s outside the gate's range: %v", op.name, err)
		}
	}
	done := make(chan string, len(ops))
	for _, op := range ops {
		go func() {
			if err := op.fn(4096); err != nil {
				t.Errorf("%s: %v", op.name, err)
			}
			done <- op.name
		}()
	}
	waitFor(t, "every write-type request at the gate", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.waiting == len(ops)
	})
	if _, err := dev.ReadAt(make([]byte, 512), 4096); err != nil {
		t.Errorf("a read waited at or failed in the gate: %v", err)
	}
	select {
	case n := <-done:
		t.Errorf("%s inside the gate's range went through while it was closed", n)
	default:
	}
	close(g.open)
	for range ops {
		<-done
	}
	g.mu.Lock()
	if g.entered != 2*len(ops) || g.left != g.entered {
		t.Errorf("entered %d, left %d; want %d each", g.entered, g.left, 2*len(ops))
	}
	// A write the gate says must not be acknowledged fails.
	g.leaveErr = errors.New("member 1 failed, not yet recorded")
	g.mu.Unlock()
	if _, err := dev.WriteAt(make([]byte, 512), 0); err == nil || !strings.Contains(err.Error(), "not yet recorded") {
		t.Errorf("write refused at Leave: %v", err)
	}
}

func TestFenceWriter(t *testing.T) {
	f := newFixture(t, raid.LevelMirror, 2, false, nil)
	a := f.openArray()
	a.FenceWriter(errors.New("writer slot lost"))
	if !a.Fenced() {
		t.Fatal("not fenced")
	}
	if _, err := a.Device().WriteAt(make([]byte, 4096), 0); err == nil || !strings.Contains(err.Error(), "fenced") {
		t.Errorf("write after FenceWriter: %v", err)
	}
	if got := memberStates(a.Superblock()); got != "active active" {
		t.Errorf("members %s: fencing failed a member", got)
	}
	delete(f.open, a)
	a.Close()
}

// A device another writer put into a role (recovering) is written here
// from then on, rebuilt with RecoverRange, and serves again once the
// superblock says active; a device this node cannot open is failed
// cluster-wide (the MemberFailed hook) instead of left unwritten.
func TestApplySuperblockFollowsRecovery(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	var mu sync.Mutex
	var reported []int
	a := f.openWith(func(o *Options) {
		o.MemberFailed = func(role int, err error) error {
			mu.Lock()
			defer mu.Unlock()
			reported = append(reported, role)
			return nil
		}
	})
	apply := func(change func(sb *meta.Array)) error {
		sb := a.Superblock()
		sb.Events++
		change(&sb)
		return a.ApplySuperblock(&sb)
	}
	if err := apply(func(sb *meta.Array) { sb.Members[2].State = meta.StateFailed }); err != nil {
		t.Fatal(err)
	}
	fresh := f.newFile("fresh", memberSize)
	if err := apply(func(sb *meta.Array) { // as add-device does it
		p, err := planAdd(sb, fresh, false, a.memberOptions())
		if err != nil || p.role != 2 {
			t.Fatalf("plan: role %d, %v", p.role, err)
		}
		if err := p.apply(sb); err != nil {
			t.Fatal(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if st := a.sync.MemberStates()[2]; st != raid.MemberRecovering {
		t.Fatalf("engine member 2: %v, want recovering", st)
	}
	block := make([]byte, 4096)
	for i := range block {
		block[i] = byte(i*7 + 1)
	}
	if _, err := a.Device().WriteAt(block, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.RecoverRange(context.Background(), 2, 4096, a.Device().Size()-4096); err != nil {
		t.Fatal(err)
	}
	if err := apply(func(sb *meta.Array) { sb.Members[2].State = meta.StateActive }); err != nil {
		t.Fatal(err)
	}
	if st := a.sync.MemberStates()[2]; st != raid.MemberActive {
		t.Fatalf("engine member 2 after the rebuild: %v, want active", st)
	}
	// The write before the rebuild reached the new device: the array
	// checks clean although the rebuild skipped block 0.
	if p, err := a.Check(context.Background(), false); err != nil || p.Mismatches != 0 {
		t.Fatalf("check after the rebuild: %v, %d mismatches", err, p.Mismatches)
	}

	if err := apply(func(sb *meta.Array) { sb.Members[1].State = meta.StateFailed }); err != nil {
		t.Fatal(err)
	}
	err := apply(func(sb *meta.Array) {
		sb.Members[1].State, sb.Members[1].Path, sb.Members[1].UUID = meta.StateRecovering, f.dir+"/absent", meta.NewUUID()
	})
	if err == nil || !strings.Contains(err.Error(), "being added") {
		t.Fatalf("a device this node cannot open: %v", err)
	}
	a.bg.Wait()
	mu.Lock()
	got := append([]int(nil), reported...)
	mu.Unlock()
	if len(got) != 1 || got[0] != 1 {
		t.Errorf("member failures reported: %v, want [1]", got)
	}
	f.close(a)
}

// A failure another writer recorded puts a spare into the role here too
// (in cluster mode every writer tries; the first update wins).
func TestApplySuperblockTakesSpare(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	spare := f.newFile("spare", memberSize)
	if _, err := OfflineUpdate(f.stateDir, f.name, "add", Request{Path: spare}, raid.MemberOptions{}); err != nil {
		t.Fatal(err)
	}
	a := f.openWith(func(o *Options) { o.MemberFailed = func(int, error) error { return nil } })
	sb := a.Superblock()
	sb.Events++
	sb.Members[0].State = meta.StateFailed
	if err := a.ApplySuperblock(&sb); err != nil {
		t.Fatal(err)
	}
	a.bg.Wait()
	got := a.Superblock()
	if m := got.Members[0]; m.Path != spare || m.State == meta.StateFailed || len(got.Spares) != 0 {
		t.Fatalf("after a failure with a spare: role 0 %+v, spares %v", m, got.Spares)
	}
	f.close(a)
}
