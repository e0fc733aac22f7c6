package array

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/internal/nbdtest"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// agentHost is an in-process member host serving disk files over TCP on
// loopback until the test ends.
type agentHost struct{ *nbdtest.Agent }

func startAgentHost(t *testing.T, dir string, n int, size int64) agentHost {
	t.Helper()
	return agentHost{nbdtest.StartAgent(t, dir, n, size)}
}

// marked returns how many bytes of disk i are marked for slot 0.
func (ah agentHost) marked(t *testing.T, i int) int64 {
	t.Helper()
	d := ah.Disks[i]
	ext, err := d.Dirty(0, 0, d.Device().Size(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ext {
		if e.Flags&nbd.StateDirty != 0 {
			n += e.Length
		}
	}
	return n
}

func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAgentMembers: a raid35 array of three agent members. Writes mark
// their regions at the member host before they land; the array's lazy
// clear is forwarded to the host. A fence at the host stops the array's
// IO (EIO, status "fenced") without failing any member or writing
// anything more; the writer rejoins with a newer epoch, and an older one
// cannot even assemble.
func TestAgentMembers(t *testing.T) {
	dir := t.TempDir()
	ah := startAgentHost(t, dir, 4, 8<<20) // disk 3 is a replacement
	stateDir := filepath.Join(dir, "state")
	var sb *meta.Array
	err := meta.View(stateDir, func(s *meta.Store) error {
		var err error
		sb, err = raid.Create(s, raid.CreateOptions{Name: "a", Level: raid.LevelRaid35, Members: ah.Members()[:3], RegionSize: 128 << 10, AssumeClean: true})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	log := &logSink{}
	open := func(epoch uint64, clearDelay time.Duration) (*Array, error) {
		return Open(Options{StateDir: stateDir, Name: "a", Throttle: unthrottled, ClearDelay: clearDelay,
			Logger: slog.New(log), Writer: raid.Writer{Epoch: epoch}, Remote: remote.Config{Logger: slog.New(log)}})
	}
	a, err := open(0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x3c}, 256<<10)
	if _, err := a.Device().WriteAt(data, 512<<10); err != nil {
		t.Fatal(err)
	}
	// Array regions 4 and 5 (128 KiB each) are member regions 4 and 5
	// (64 KiB each) on every member.
	for i := range 3 {
		if n := ah.marked(t, i); n != 128<<10 {
			t.Fatalf("member %d: %d bytes marked, want 128 KiB", i, n)
		}
	}
	// A clean stop clears the array's bitmap and forwards the clears.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if n := ah.marked(t, i); n != 0 {
			t.Fatalf("member %d: %d bytes still marked after a clean stop", i, n)
		}
	}
	// A replacement becomes the role's member, clears included.
	a, err = open(0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Replace("1", ah.Members()[3], false); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, a)
	if got := a.Superblock().Members[1].Path; got != ah.Members()[3] {
		t.Fatalf("member 1 is %s after the replace, want %s", got, ah.Members()[3])
	}
	if _, err := a.Device().WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if n := ah.marked(t, 3); n != 128<<10 {
		t.Fatalf("the replacement has %d bytes marked, want 128 KiB", n)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n := ah.marked(t, 3); n != 0 {
		t.Fatalf("the replacement keeps %d bytes marked after a clean stop", n)
	}

	// The lazy clearer forwards too.
	a, err = open(0, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	dev := a.Device()
	if _, err := dev.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the member hosts' marks to be cleared", func() bool {
		return ah.marked(t, 0)+ah.marked(t, 3)+ah.marked(t, 2) == 0
	})

	// Fenced.
	if err := ah.Host.Fence(sb.UUID, 0, 1); err != nil {
		t.Fatal(err)
	}
	before := [][]byte{fileBytes(t, ah.Disks[0].Path()), fileBytes(t, ah.Disks[3].Path()), fileBytes(t, ah.Disks[2].Path())}
	_, werr := dev.WriteAt(bytes.Repeat([]byte{0x77}, 4096), 0)
	if !errors.Is(werr, syscall.EIO) || !a.Fenced() {
		t.Fatalf("write after a fence = %v (fenced %v), want EIO and the array fenced", werr, a.Fenced())
	}
	if _, err := dev.ReadAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a fenced array = %v, want EIO", err)
	}
	st := a.Status()
	if st.State != "fenced" || !st.Fenced {
		t.Fatalf("status %s fenced=%v, want fenced", st.State, st.Fenced)
	}
	for i, d := range []int{0, 3, 2} {
		if !bytes.Equal(fileBytes(t, ah.Disks[d].Path()), before[i]) {
			t.Fatalf("disk %d changed after the fence", d)
		}
	}
	a.Close()
	for i, m := range stored(t, stateDir).Members {
		if m.State != meta.StateActive {
			t.Fatalf("member %d is %s after a fence; a fence is not a member failure", i, m.State)
		}
	}

	// The old epoch cannot come back; a newer one works.
	if _, err := open(0, time.Hour); !errors.Is(err, remote.ErrFenced) {
		t.Fatalf("assembly with a fenced epoch = %v, want ErrFenced", err)
	}
	a, err = open(1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := a.Device().ReadAt(got, 512<<10); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after rejoining: %v", err)
	}
	if _, err := a.Device().WriteAt(data[:4096], 0); err != nil {
		t.Fatalf("write with the new epoch: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}

func stored(t *testing.T, stateDir string) *meta.Array {
	t.Helper()
	var sb *meta.Array
	if err := meta.View(stateDir, func(s *meta.Store) error {
		var err error
		sb, err = s.Get("a")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return sb
}

var _ blockdev.Device = (*frontGate)(nil)
var _ raid.MemberClearer = (*fenceGuard)(nil)

// TestAgentMemberRecovery: background jobs write members without the
// array's bitmap; their host marks those writes anyway, and the array
// clears them there once the job is done: after the initial sync on every
// member, after a rebuild on the new member.
func TestAgentMemberRecovery(t *testing.T) {
	dir := t.TempDir()
	ah := startAgentHost(t, dir, 4, 8<<20)
	stateDir := filepath.Join(dir, "state")
	err := meta.View(stateDir, func(s *meta.Store) error {
		sb, err := raid.Create(s, raid.CreateOptions{Name: "a", Level: raid.LevelRaid35, Members: ah.Members()[:3], RegionSize: 128 << 10})
		if err == nil && !sb.InitialSync {
			t.Errorf("members that exist need an initial sync")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(Options{StateDir: stateDir, Name: "a", Throttle: unthrottled, ClearDelay: time.Hour, Logger: slog.New(&logSink{})})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	waitIdle(t, a)
	if a.Superblock().InitialSync {
		t.Fatal("the initial sync did not finish")
	}
	for i := range 3 {
		if n := ah.marked(t, i); n != 0 {
			t.Fatalf("member %d's host keeps %d bytes marked after the initial sync", i, n)
		}
	}
	data := bytes.Repeat([]byte{0x5e}, 64<<10)
	if _, err := a.Device().WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Fail("2", false); err != nil {
		t.Fatal(err)
	}
	if err := a.Remove("2"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add(ah.Members()[3], false); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, a)
	if st := a.Status(); st.State != "clean" {
		t.Fatalf("array is %s after the recovery", st.State)
	}
	if n := ah.marked(t, 3); n != 0 {
		t.Fatalf("the rebuilt member's host keeps %d bytes marked", n)
	}
	got := make([]byte, len(data))
	if _, err := a.Device().ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after the recovery: %v", err)
	}
}

// TestMemberDirtyQuery: the writer-side query of a member host's marks
// (what a takeover unions over the hosts) walks a disk larger than one
// BLOCK_STATUS request and sees exactly the regions a writer marked.
func TestMemberDirtyQuery(t *testing.T) {
	dir := t.TempDir()
	ah := startAgentHost(t, dir, 1, 3<<30+1<<20) // sparse
	path := ah.Members()[0]
	const region = 1 << 20
	w := &nbd.Writer{Array: [16]byte{0xd1}, Slot: 2, Epoch: 1, RegionSize: region, DataOffset: 1 << 20}
	d, err := remote.Open(context.Background(), "nbd://"+ah.Addr+"/"+ah.Disks[0].Path(), remote.Config{Writer: w, Logger: slog.New(&logSink{})})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// Member regions 0, 1500 and 3071 (the last): around and beyond the
	// 1 GiB of one BLOCK_STATUS.
	for _, r := range []int64{0, 1500, 3071} {
		if _, err := d.WriteAt([]byte{1}, 1<<20+r*region+100); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		slot uint32
		want []blockdev.Extent
	}{
		{2, []blockdev.Extent{{Length: 1 << 20}, {Length: region, Flags: 1}, {Length: 1499 * region}, {Length: region, Flags: 1},
			{Length: 1570 * region}, {Length: region, Flags: 1}}},
		{1, []blockdev.Extent{{Length: 3<<30 + 1<<20}}},
	}
	for _, c := range cases {
		got, err := raid.MemberDirty(context.Background(), path, remote.Config{Logger: slog.New(&logSink{})}, c.slot)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Fatalf("slot %d: %v %v, want %v", c.slot, got, err, c.want)
		}
	}
	if _, err := raid.MemberDirty(context.Background(), "/dev/sdb", remote.Config{}, 0); err == nil {
		t.Fatal("MemberDirty of a local path succeeded")
	}
}

// TestSlotTakeoverCalls: what a survivor does with a failed writer's slot,
// through the member hosts alone: fence it everywhere (the old writer's
// next write is refused), read the union of its marks (exactly the
// regions it wrote), and clear them as the slot's new writer; the old
// epoch can no longer clear.
func TestSlotTakeoverCalls(t *testing.T) {
	dir := t.TempDir()
	ah := startAgentHost(t, dir, 3, 8<<20)
	stateDir := filepath.Join(dir, "state")
	var sb *meta.Array
	err := meta.View(stateDir, func(s *meta.Store) error {
		var err error
		sb, err = raid.Create(s, raid.CreateOptions{Name: "a", Level: raid.LevelRaid35, Members: ah.Members(), RegionSize: 128 << 10, AssumeClean: true})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(&logSink{})
	a, err := Open(Options{StateDir: stateDir, Name: "a", Throttle: unthrottled, ClearDelay: time.Hour, Logger: quiet,
		Writer: raid.Writer{Slot: 1, Epoch: 3}, Remote: remote.Config{Logger: quiet}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Array regions 2 and 9 (128 KiB each).
	for _, off := range []int64{2 << 17, 9<<17 + 4096} {
		if _, err := a.Device().WriteAt(bytes.Repeat([]byte{7}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	cfg := remote.Config{Logger: quiet}
	for role := range 3 {
		if err := raid.FenceMember(ctx, sb, role, cfg, 1, 4); err != nil {
			t.Fatal(err)
		}
		// Fencing again, or below, is a no-op.
		if err := raid.FenceMember(ctx, sb, role, cfg, 1, 2); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Device().WriteAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) || !a.Fenced() {
		t.Fatalf("the old writer's write after the fence = %v (fenced %v)", err, a.Fenced())
	}
	var union []uint64
	for role := range 3 {
		rs, err := raid.MemberDirtyRegions(ctx, sb, role, cfg, 1)
		if err != nil {
			t.Fatal(err)
		}
		union = append(union, rs...)
		if fmt.Sprint(rs) != "[2 9]" {
			t.Fatalf("member %d holds regions %v for slot 1, want [2 9]", role, rs)
		}
		if rs, err := raid.MemberDirtyRegions(ctx, sb, role, cfg, 0); err != nil || len(rs) != 0 {
			t.Fatalf("member %d holds regions %v %v for slot 0, want none", role, rs, err)
		}
	}
	if err := raid.ClearMemberRegions(ctx, sb, 0, cfg, raid.Writer{Slot: 1, Epoch: 3}, []uint64{2, 9}); !errors.Is(err, remote.ErrFenced) {
		t.Fatalf("a clear under the fenced epoch = %v, want ErrFenced", err)
	}
	for role := range 3 {
		if err := raid.ClearMemberRegions(ctx, sb, role, cfg, raid.Writer{Slot: 1, Epoch: 4}, []uint64{2, 9}); err != nil {
			t.Fatal(err)
		}
		if rs, err := raid.MemberDirtyRegions(ctx, sb, role, cfg, 1); err != nil || len(rs) != 0 {
			t.Fatalf("member %d still holds %v %v for slot 1 after the clear", role, rs, err)
		}
	}
}

// nopCluster is a Cluster that applies no change.
type nopCluster struct{}

func (nopCluster) Update(context.Context, string, func(*meta.Array) error) error    { return nil }
func (nopCluster) AddMember(context.Context, string, func(*meta.Array) error) error { return nil }
func (nopCluster) ScrubWindow(context.Context, int64, int64) error                  { return nil }
func (nopCluster) EndScrubWindow()                                                  {}

// TestCorruptBitmapStoreAgentMembers: a state directory holds a raid35
// array of agent members ("a") and a mirror of local files ("b"), and its
// bitmap store is found corrupt when "a" opens. A writer alone records the
// full resync for both (nothing but the lost store knew where it wrote).
// A writer in cluster mode records it for "b" only: the marks of "a" are
// kept per slot at the member hosts, and a superblock change of "a" made
// here alone would fork the cluster's event numbering.
func TestCorruptBitmapStoreAgentMembers(t *testing.T) {
	for _, c := range []struct {
		name    string
		cluster bool
	}{{"single writer", false}, {"cluster mode", true}} {
		cluster := c.cluster
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ah := startAgentHost(t, dir, 3, 8<<20)
			stateDir := filepath.Join(dir, "state")
			err := meta.View(stateDir, func(s *meta.Store) error {
				if _, err := raid.Create(s, raid.CreateOptions{Name: "a", Level: raid.LevelRaid35, Members: ah.Members(), RegionSize: 128 << 10, AssumeClean: true}); err != nil {
					return err
				}
				_, err := raid.Create(s, raid.CreateOptions{Name: "b", Level: raid.LevelMirror, RegionSize: 128 << 10, AssumeClean: true, CreateSize: 4 << 20,
					Members: []string{filepath.Join(dir, "b0"), filepath.Join(dir, "b1")}})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			stored := func(n string) meta.Array {
				t.Helper()
				var sb *meta.Array
				err := meta.View(stateDir, func(s *meta.Store) error {
					var err error
					sb, err = s.Get(n)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				return *sb
			}
			log := &logSink{}
			open := func() *Array {
				t.Helper()
				o := Options{StateDir: stateDir, Name: "a", Throttle: unthrottled, ClearDelay: time.Hour,
					Logger: slog.New(log), Writer: raid.Writer{Epoch: 1}, Remote: remote.Config{Logger: slog.New(log)}}
				if cluster {
					o.Cluster = nopCluster{}
				}
				a, err := Open(o)
				if err != nil {
					t.Fatal(err)
				}
				return a
			}
			a := open()
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			before := map[string]meta.Array{"a": stored("a"), "b": stored("b")}
			garbleStore(t, stateDir)

			a = open()
			defer a.Close()
			if _, ok := log.find("WARN", "bitmap store is corrupt"); !ok {
				t.Fatalf("no warning about the corrupt store:\n%s", log.all())
			}
			for _, n := range []string{"a", "b"} {
				sb := stored(n)
				want := n == "b" || !cluster
				if sb.InitialSync != want {
					t.Errorf("array %s: InitialSync %v after the corrupt store, want %v", n, sb.InitialSync, want)
				}
				if want && sb.Events != before[n].Events+1 {
					t.Errorf("array %s: event %d, want %d (one change: the full resync)", n, sb.Events, before[n].Events+1)
				}
				if !want && sb.Events != before[n].Events {
					t.Errorf("array %s: event %d changed from %d outside the cluster", n, sb.Events, before[n].Events)
				}
			}
			if got := a.Superblock(); got.InitialSync != !cluster {
				t.Errorf("running array: InitialSync %v, want %v", got.InitialSync, !cluster)
			}
			if _, ok := log.find("WARN", "marks are kept at its member hosts", "array_in_state_dir=a"); ok != cluster {
				t.Errorf("warning that the marks of a are at its member hosts: %v, want %v:\n%s", ok, cluster, log.all())
			}
		})
	}
}
