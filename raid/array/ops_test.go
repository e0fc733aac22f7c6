package array

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/internal/nbdtest"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// failOthers fails, one by one, every member but keep that the level can
// lose; what is left must still serve every block.
func failOthers(t *testing.T, a *Array, keep int) {
	t.Helper()
	sb := a.Superblock()
	level, _ := raid.ParseLevel(sb.Level)
	lost := 0
	for role := range sb.Members {
		if role == keep || lost == raid.Tolerance(level, len(sb.Members)) {
			continue
		}
		if err := a.Fail(sb.Members[role].Path, false); err != nil {
			t.Fatalf("fail member %d: %v", role, err)
		}
		lost++
	}
}

func TestFail(t *testing.T) {
	type step struct {
		ref     string // role number, or "path:N" for member N's path
		force   bool
		refused bool   // ErrRefused
		errPart string // other error, by a part of its message
	}
	cases := []struct {
		name  string
		level raid.Level
		n     int
		steps []step
		state string // array state at the end
	}{
		{"raid35 last redundant member", raid.LevelRaid35, 3, []step{
			{ref: "0"}, {ref: "1", refused: true}, {ref: "path:2", refused: true}, {ref: "1", force: true},
		}, raid.ArrayFailed},
		{"mirror down to one copy", raid.LevelMirror, 3, []step{
			{ref: "path:0"}, {ref: "1"}, {ref: "2", refused: true}, {ref: "2", force: true},
		}, raid.ArrayFailed},
		{"bad references", raid.LevelRaid35, 3, []step{
			{ref: "3", errPart: "has no member 3"}, {ref: "-1", errPart: "has no member -1"},
			{ref: "/no/such/disk", errPart: "is not a member"},
			{ref: "2"}, {ref: "2", errPart: "already failed"}, {ref: "path:2", errPart: "already failed"},
		}, raid.ArrayDegraded},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			a := f.openArray()
			for _, s := range c.steps {
				ref := s.ref
				if p, ok := strings.CutPrefix(ref, "path:"); ok {
					ref = f.members[p[0]-'0']
				}
				before := f.stored()
				err := a.Fail(ref, s.force)
				switch {
				case s.refused:
					if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "--force") {
						t.Fatalf("fail %s: %v, want a refusal that names --force", ref, err)
					}
				case s.errPart != "":
					if err == nil || !strings.Contains(err.Error(), s.errPart) {
						t.Fatalf("fail %s: %v, want an error with %q", ref, err, s.errPart)
					}
				case err != nil:
					t.Fatalf("fail %s: %v", ref, err)
				}
				after := f.stored()
				if err != nil {
					if after.Events != before.Events || memberStates(*after) != memberStates(*before) {
						t.Fatalf("refused fail %s changed the superblock: %s -> %s", ref, memberStates(*before), memberStates(*after))
					}
					continue
				}
				role, _, _ := Resolve(after, ref)
				if after.Members[role].State != meta.StateFailed || a.Superblock().Members[role].State != meta.StateFailed {
					t.Fatalf("member %d is %s after fail", role, after.Members[role].State)
				}
				if after.Events <= before.Events {
					t.Fatalf("event counter %d -> %d", before.Events, after.Events)
				}
			}
			if st := a.Status(); st.State != c.state {
				t.Fatalf("array state %s, want %s", st.State, c.state)
			}
			delete(f.open, a)
			a.Close() // a failed array cannot flush; the error is expected
		})
	}
}

func TestRemove(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	m.write(a, 0, int(a.Device().Size()))

	for _, ref := range []string{"1", f.members[1]} {
		if err := a.Remove(ref); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "fail it first") {
			t.Fatalf("remove active member %s: %v, want a refusal", ref, err)
		}
	}
	if err := a.Remove("/no/such/disk"); err == nil || errors.Is(err, ErrRefused) {
		t.Fatalf("remove of a stranger: %v", err)
	}
	if err := a.Fail("1", false); err != nil {
		t.Fatal(err)
	}
	if err := a.Remove(f.members[1]); err != nil {
		t.Fatal(err)
	}
	if mb := f.stored().Members[1]; mb.State != meta.StateMissing || mb.Path != "" {
		t.Fatalf("removed member recorded as %+v, want missing without a path", mb)
	}
	if mb := a.Status().Members[1]; mb.State != meta.StateMissing {
		t.Fatalf("status shows the removed member as %s", mb.State)
	}
	m.verify(a) // degraded reads

	// A spare comes and goes.
	spare := f.newFile("spare", memberSize)
	if err := a.Remove("0"); !errors.Is(err, ErrRefused) {
		t.Fatalf("remove active member 0: %v", err)
	}
	if _, err := a.Add(f.newFile("new1", memberSize), false); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, a)
	if msg, err := a.Add(spare, false); err != nil || !strings.Contains(msg, "spare") {
		t.Fatalf("add spare: %q, %v", msg, err)
	}
	if err := a.Remove(spare); err != nil {
		t.Fatalf("remove spare: %v", err)
	}
	if sb := f.stored(); len(sb.Spares) != 0 || memberStates(*sb) != "active active active" {
		t.Fatalf("after removing the spare: members %s, spares %v", memberStates(*sb), sb.Spares)
	}
	m.verify(a)
	f.close(a)
}

func TestAddRebuildsFailedRole(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			a := f.openArray()
			m := newModel(t, a)
			m.write(a, 0, int(a.Device().Size()))
			if err := a.Fail("1", false); err != nil {
				t.Fatal(err)
			}
			m.writeRegions(a, 5, 6, 20) // degraded writes
			oldUUID := f.stored().Members[1].UUID

			newPath := f.newFile("new1", memberSize)
			msg, err := a.Add(newPath, false)
			if err != nil || !strings.Contains(msg, "as member 1; recovery started") {
				t.Fatalf("add: %q, %v", msg, err)
			}
			m.writeRegions(a, 7) // a write during the rebuild
			waitIdle(t, a)
			size := a.Device().Size()
			st := a.Status()
			if j := st.LastJob; j == nil || j.Kind != resync.KindRecover || j.Member != 1 || !j.Finished || j.Done != size {
				t.Fatalf("last job %+v, want a finished recovery of member 1 over %d bytes", j, size)
			}
			if st.State != raid.ArrayClean {
				t.Fatalf("state %s after the rebuild", st.State)
			}
			for _, sb := range []meta.Array{a.Superblock(), *f.stored()} {
				mb := sb.Members[1]
				if mb.Path != newPath || mb.State != meta.StateActive || mb.UUID == oldUUID {
					t.Fatalf("member 1 recorded as %+v after the rebuild", mb)
				}
			}
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check after the rebuild found %d mismatches", n)
			}
			failOthers(t, a, 1)
			m.verify(a)
			delete(f.open, a)
			a.Close()

			// The new member is what assembly now finds in role 1.
			a = f.openArray()
			m.verify(a)
			f.close(a)
		})
	}
}

func TestSpareTakesOverFailedMember(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	m.write(a, 0, int(a.Device().Size()))
	spare := f.newFile("spare", memberSize)
	msg, err := a.Add(spare, false)
	if err != nil || !strings.Contains(msg, "as a spare") {
		t.Fatalf("add: %q, %v", msg, err)
	}
	if sb := f.stored(); len(sb.Spares) != 1 || sb.Spares[0].State != meta.StateSpare || sb.Spares[0].Path != spare {
		t.Fatalf("spares recorded as %+v", sb.Spares)
	}
	if st := a.Status(); len(st.Spares) != 1 || st.State != raid.ArrayClean || !a.Idle() {
		t.Fatalf("status after adding a spare: %+v", st)
	}

	if err := a.Fail("2", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the spare to be rebuilt into role 2", func() bool {
		sb := a.Superblock()
		return sb.Members[2].Path == spare && sb.Members[2].State == meta.StateActive && a.Idle()
	})
	if j := a.Status().LastJob; j == nil || j.Kind != resync.KindRecover || j.Member != 2 || j.Done != a.Device().Size() {
		t.Fatalf("last job %+v, want the recovery of member 2", j)
	}
	f.close(a)
	sb := f.stored()
	if len(sb.Spares) != 0 || sb.Members[2].Path != spare || memberStates(*sb) != "active active active" {
		t.Fatalf("after the takeover the superblock has members %s (role 2 %s), spares %v", memberStates(*sb), sb.Members[2].Path, sb.Spares)
	}
	a = f.openArray()
	if n := check(t, a, false); n != 0 {
		t.Fatalf("check found %d mismatches", n)
	}
	failOthers(t, a, 2)
	m.verify(a)
	delete(f.open, a)
	a.Close()
}

func TestReAddRebuildsDirtyRegionsOnly(t *testing.T) {
	for _, c := range redundant {
		for _, restart := range []bool{false, true} {
			name := c.name + "/online"
			if restart {
				name = c.name + "/restart"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t, c.level, c.n, false, nil)
				fast := func(o *Options) { o.ClearDelay = 20 * time.Millisecond }
				a := f.openWith(fast)
				m := newModel(t, a)
				m.write(a, 0, int(a.Device().Size()))
				waitFor(t, "the marks of the first writes to clear", func() bool { return a.Status().DirtyRegions == 0 })
				uuid := f.stored().Members[1].UUID

				if err := a.Fail(f.members[1], false); err != nil {
					t.Fatal(err)
				}
				dirty := []int64{3, 30, 31}
				m.writeRegions(a, dirty...)
				if restart {
					f.close(a)
					a = f.openWith(fast)
					if _, ok := f.log.find("unclean stop while degraded"); !ok {
						t.Fatalf("no warning about dirty regions left while degraded:\n%s", f.log.all())
					}
					if c.level == raid.LevelMirror {
						// Two live copies are left: they are resynced
						// with each other, and the regions stay dirty.
						waitIdle(t, a)
						if j := a.Status().LastJob; j == nil || j.Kind != resync.KindResync || j.Done != int64(len(dirty))*regionSize || !trusted(a) {
							t.Fatalf("last job %+v, read balancing %v; want a resync of the dirty regions and true", j, trusted(a))
						}
					} else if !a.Idle() || trusted(a) {
						t.Fatalf("idle %v, read balancing %v on a degraded array with no redundancy left; want true and false", a.Idle(), trusted(a))
					}
				}
				if got := a.Status().DirtyRegions; got != len(dirty) {
					t.Fatalf("%d dirty regions while degraded, want %d", got, len(dirty))
				}
				msg, err := a.Add(f.members[1], false)
				if err != nil || !strings.Contains(msg, "re-added") {
					t.Fatalf("re-add: %q, %v", msg, err)
				}
				waitIdle(t, a)
				want := int64(len(dirty)) * regionSize
				if j := a.Status().LastJob; j == nil || j.Kind != resync.KindRecover || !j.Finished || j.Done != want {
					t.Fatalf("last job %+v, want a recovery of the %d dirty bytes", j, want)
				}
				if mb := f.stored().Members[1]; mb.State != meta.StateActive || mb.UUID != uuid || mb.Path != f.members[1] {
					t.Fatalf("re-added member recorded as %+v", mb)
				}
				if n := check(t, a, false); n != 0 {
					t.Fatalf("check after the re-add found %d mismatches", n)
				}
				if !trusted(a) {
					t.Fatal("read balancing off after the re-add made the array whole")
				}
				failOthers(t, a, 1)
				m.verify(a)
				delete(f.open, a)
				a.Close()
			})
		}
	}
}

func TestAddRefused(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	other := newFixture(t, raid.LevelMirror, 2, false, nil)
	a := f.openArray()
	cases := []struct {
		name    string
		path    string
		force   bool
		refused bool
		errPart string
	}{
		{"too small", f.newFile("small", memberSize/2), false, true, "too small"},
		{"too small even with force", f.newFile("small2", memberSize/2), true, true, "too small"},
		{"another array's member", other.members[0], false, true, `belongs to array "a"`},
		{"a member of this array", f.members[2], false, true, "already in array"},
		{"no such file", filepath.Join(f.dir, "nothing"), false, false, "no such file"},
		// 4096-byte blocks over 3 members: 2048-byte fragments.
		{"an export with a larger minimum block size", memExport(t, blockdev.NewMem(memberSize, 4096)), true, true, "multiples of 4096 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := f.stored()
			_, err := a.Add(c.path, c.force)
			if err == nil || errors.Is(err, ErrRefused) != c.refused || !strings.Contains(err.Error(), c.errPart) {
				t.Fatalf("add %s: %v, want refused=%v with %q", c.path, err, c.refused, c.errPart)
			}
			if after := f.stored(); after.Events != before.Events || len(after.Spares) != 0 {
				t.Fatalf("refused add changed the superblock (events %d -> %d, spares %v)", before.Events, after.Events, after.Spares)
			}
		})
	}
	// With --force another array's disk is taken (as a spare here).
	if msg, err := a.Add(other.members[0], true); err != nil || !strings.Contains(msg, "spare") {
		t.Fatalf("forced add: %q, %v", msg, err)
	}
	f.close(a)
}

// gatedDev blocks reads while its gate is shut, to hold a background copy
// in place; writes pass.
type gatedDev struct {
	blockdev.Device
	g *gate
}

type gate struct {
	shut    atomic.Bool
	hit     chan struct{} // closed by the first read that waits
	hitOnce sync.Once
	release chan struct{}
}

func newGate() *gate { return &gate{hit: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) open() {
	g.shut.Store(false)
	close(g.release)
}

func (d *gatedDev) ReadAt(p []byte, off int64) (int, error) {
	if d.g.shut.Load() {
		d.g.hitOnce.Do(func() { close(d.g.hit) })
		<-d.g.release
	}
	return d.Device.ReadAt(p, off)
}

// gateRole opens the array with reads of one member's device held by g.
func gateRole(role int, g *gate) func(*Options) {
	return func(o *Options) {
		o.Wrap = func(r int, dev blockdev.Device) blockdev.Device {
			if r == role {
				return &gatedDev{Device: dev, g: g}
			}
			return dev
		}
	}
}

// dataArea reads a member file's data area.
func dataArea(t *testing.T, sb meta.Array, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b[sb.DataOffset : sb.DataOffset+sb.MemberDataSize]
}

func TestReplace(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			g := newGate()
			a := f.openWith(gateRole(1, g))
			m := newModel(t, a)
			m.write(a, 0, int(a.Device().Size()))
			oldUUID := f.stored().Members[1].UUID

			newPath := f.newFile("new1", memberSize)
			g.shut.Store(true)
			msg, err := a.Replace(f.members[1], newPath, false)
			if err != nil || !strings.Contains(msg, "replacing member 1") {
				t.Fatalf("replace: %q, %v", msg, err)
			}
			<-g.hit // the copy waits on its first read of the old member

			// A write while the copy has not got there lands on both.
			size := a.Device().Size()
			m.write(a, size-regionSize, regionSize)
			sb := a.Superblock()
			oldData, newData := dataArea(t, sb, f.members[1]), dataArea(t, sb, newPath)
			tail := len(oldData) - 8192
			if !bytes.Equal(oldData[tail:], newData[tail:]) || bytes.Equal(newData[tail:], make([]byte, 8192)) {
				t.Fatal("a write during the replace did not reach the new member")
			}
			if sb.Members[1].Path != f.members[1] || sb.Members[1].State != meta.StateActive {
				t.Fatalf("member 1 is %+v while the replace runs; the old member must keep serving", sb.Members[1])
			}

			g.open()
			waitFor(t, "the swap", func() bool {
				st := a.Status()
				return st.Members[1].Path == newPath && st.Job == nil && st.Queued == 0
			})
			waitIdle(t, a)
			if j := a.Status().LastJob; j == nil || j.Kind != resync.KindRecover || !j.Finished || j.Done != sb.MemberDataSize {
				t.Fatalf("last job %+v, want a copy of the %d-byte data area", j, sb.MemberDataSize)
			}
			for _, sb := range []meta.Array{a.Superblock(), *f.stored()} {
				if mb := sb.Members[1]; mb.Path != newPath || mb.State != meta.StateActive || mb.UUID == oldUUID {
					t.Fatalf("member 1 recorded as %+v after the replace", mb)
				}
			}
			if !bytes.Equal(dataArea(t, sb, f.members[1]), dataArea(t, sb, newPath)) {
				t.Fatal("the new member's data area differs from the old one's")
			}
			m.write(a, 0, regionSize) // after the swap: the new member only
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check after the replace found %d mismatches", n)
			}
			failOthers(t, a, 1)
			m.verify(a)
			delete(f.open, a)
			a.Close()

			// The old disk is no longer a member: assembly uses the new one.
			if err := os.Remove(f.members[1]); err != nil {
				t.Fatal(err)
			}
			a = f.openArray()
			m.verify(a)
			f.close(a)
		})
	}
}

func TestReplaceRefused(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	other := newFixture(t, raid.LevelMirror, 2, false, nil)
	a := f.openArray()
	if err := a.Fail("0", false); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, old, path string
		refused         bool
		errPart         string
	}{
		{"failed member", "0", f.newFile("n0", memberSize), true, "not an active member"},
		{"unknown member", "7", f.newFile("n1", memberSize), false, "has no member 7"},
		{"too small", "1", f.newFile("small", memberSize/2), true, "too small"},
		{"with itself", "1", f.members[1], true, "already in array"},
		{"with another member", "1", f.members[2], true, "already in array"},
		{"with another array's member", "1", other.members[1], true, "belongs to array"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := f.stored()
			_, err := a.Replace(c.old, c.path, false)
			if err == nil || errors.Is(err, ErrRefused) != c.refused || !strings.Contains(err.Error(), c.errPart) {
				t.Fatalf("replace %s with %s: %v, want refused=%v with %q", c.old, c.path, err, c.refused, c.errPart)
			}
			if after := f.stored(); after.Events != before.Events || !a.Idle() {
				t.Fatal("a refused replace changed the array")
			}
		})
	}
	delete(f.open, a)
	a.Close()
}

// A replace must not bring back a member that failed while it ran, and a
// role cannot be replaced twice at once.
func TestReplaceRaces(t *testing.T) {
	t.Run("old member fails during the copy", func(t *testing.T) {
		f := newFixture(t, raid.LevelRaid35, 3, false, nil)
		g := newGate()
		a := f.openWith(gateRole(1, g))
		m := newModel(t, a)
		m.write(a, 0, int(a.Device().Size()))
		newPath := f.newFile("new1", memberSize)
		g.shut.Store(true)
		if _, err := a.Replace("1", newPath, false); err != nil {
			t.Fatal(err)
		}
		<-g.hit
		if err := a.Fail("1", false); err != nil {
			t.Fatal(err)
		}
		m.write(a, 0, int(a.Device().Size())) // degraded: member 1 gets none of it
		g.open()
		waitIdle(t, a)
		if mb := f.stored().Members[1]; mb.State == meta.StateActive {
			t.Fatalf("member 1 recorded as %+v: a failed member came back without its writes", mb)
		}
		m.verify(a)
		delete(f.open, a)
		a.Close()
		a = f.openArray()
		m.verify(a)
		f.close(a)
	})
	t.Run("second replace of the same role", func(t *testing.T) {
		f := newFixture(t, raid.LevelRaid35, 3, false, nil)
		g := newGate()
		a := f.openWith(gateRole(1, g))
		m := newModel(t, a)
		m.write(a, 0, int(a.Device().Size()))
		first, second := f.newFile("new1", memberSize), f.newFile("new2", memberSize)
		g.shut.Store(true)
		if _, err := a.Replace("1", first, false); err != nil {
			t.Fatal(err)
		}
		<-g.hit
		if _, err := a.Replace("1", second, false); !errors.Is(err, ErrRefused) {
			t.Fatalf("second replace of a role being replaced: %v, want a refusal", err)
		}
		g.open()
		waitIdle(t, a)
		if mb := f.stored().Members[1]; mb.Path != first || mb.State != meta.StateActive {
			t.Fatalf("member 1 recorded as %+v, want %s", mb, first)
		}
		if n := check(t, a, false); n != 0 {
			t.Fatalf("check found %d mismatches", n)
		}
		failOthers(t, a, 1)
		m.verify(a)
		delete(f.open, a)
		a.Close()
	})
}

func TestCheck(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			a := f.openArray()
			m := newModel(t, a)
			m.write(a, 0, int(a.Device().Size()))
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check of a consistent array found %d mismatches", n)
			}
			sb := a.Superblock()
			bad := []int64{0, 5*regionSize + 4096, a.Device().Size() - 4096}
			for _, off := range bad {
				corruptRedundancy(t, sb, off)
			}
			for range 2 { // a check changes nothing
				if n := check(t, a, false); n != int64(len(bad)) {
					t.Fatalf("check found %d mismatches, want %d", n, len(bad))
				}
			}
			if j := a.Status().LastJob; j == nil || j.Kind != resync.KindCheck || j.Mismatches != int64(len(bad)) {
				t.Fatalf("status last job %+v", j)
			}
			if n := check(t, a, true); n != int64(len(bad)) {
				t.Fatalf("repair found %d mismatches, want %d", n, len(bad))
			}
			if j := a.Status().LastJob; j == nil || j.Kind != resync.KindRepair {
				t.Fatalf("status last job %+v", j)
			}
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check after repair found %d mismatches", n)
			}
			m.verify(a)
			f.close(a)
		})
	}
	t.Run("degraded raid35", func(t *testing.T) {
		f := newFixture(t, raid.LevelRaid35, 3, false, nil)
		a := f.openArray()
		if err := a.Fail("2", false); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Check(t.Context(), false); !errors.Is(err, raid.ErrDegraded) {
			t.Fatalf("check of a degraded raid35: %v, want ErrDegraded", err)
		}
		f.close(a)
	})
	t.Run("cancelled wait", func(t *testing.T) {
		f := newFixture(t, raid.LevelRaid35, 3, true, nil)
		a := f.openWith(func(o *Options) { o.Throttle = slow }) // the initial sync holds the queue
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := a.Check(ctx, false); !errors.Is(err, context.Canceled) {
			t.Fatalf("check with a cancelled context: %v", err)
		}
		f.close(a)
	})
}

func TestOfflineUpdate(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	m.write(a, 0, int(a.Device().Size()))
	f.close(a)

	offline := func(action, ref, path string, force bool) (string, error) {
		return OfflineUpdate(f.stateDir, f.name, action, Request{Ref: ref, Path: path, Force: force}, raid.MemberOptions{})
	}
	mustOffline := func(action, ref, path, msgPart string) {
		t.Helper()
		msg, err := offline(action, ref, path, false)
		if err != nil || !strings.Contains(msg, msgPart) {
			t.Fatalf("%s %s %s: %q, %v; want a message with %q", action, ref, path, msg, err, msgPart)
		}
	}
	states := func(want string) {
		t.Helper()
		if got := memberStates(*f.stored()); got != want {
			t.Fatalf("member states %q, want %q", got, want)
		}
	}

	// fail, then the refusals an online array gives too.
	mustOffline("fail", "1", "", "member 1")
	states("active failed active")
	if _, err := offline("fail", "2", "", false); !errors.Is(err, ErrRefused) {
		t.Fatalf("offline fail of the last redundant member: %v", err)
	}
	if _, err := offline("remove", "0", "", false); !errors.Is(err, ErrRefused) {
		t.Fatalf("offline remove of an active member: %v", err)
	}
	if _, err := offline("add", "", f.newFile("small", memberSize/2), false); !errors.Is(err, ErrRefused) {
		t.Fatalf("offline add of a small device: %v", err)
	}
	if _, err := offline("explode", "1", "", false); err == nil || !strings.Contains(err.Error(), "unknown action") {
		t.Fatalf("unknown action: %v", err)
	}
	if _, err := OfflineUpdate(f.stateDir, "nope", "fail", Request{Ref: "1"}, raid.MemberOptions{}); err == nil {
		t.Fatal("offline update of an unknown array succeeded")
	}
	states("active failed active")

	// remove and add: the rebuild runs when the array is served.
	mustOffline("remove", "1", "", "removed 1")
	if mb := f.stored().Members[1]; mb.State != meta.StateMissing || mb.Path != "" {
		t.Fatalf("removed member recorded as %+v", mb)
	}
	new1 := f.newFile("new1", memberSize)
	mustOffline("add", "", new1, "rebuilt when the array is served")
	states("active recovering active")
	a = f.openArray()
	waitIdle(t, a)
	size := a.Device().Size()
	if j := a.Status().LastJob; j == nil || j.Kind != resync.KindRecover || j.Member != 1 || j.Done != size {
		t.Fatalf("last job %+v, want the recovery of member 1", j)
	}
	if n := check(t, a, false); n != 0 {
		t.Fatalf("check found %d mismatches", n)
	}
	f.close(a)
	states("active active active")

	// replace: the old member is failed, the new one rebuilt at serve.
	new2 := f.newFile("new2", memberSize)
	mustOffline("replace", "2", new2, "as member 2")
	states("active active recovering")
	if p := f.stored().Members[2].Path; p != new2 {
		t.Fatalf("member 2 is %s, want %s", p, new2)
	}
	// a device added while every role is in use becomes a spare
	spare := f.newFile("spare", memberSize)
	mustOffline("add", "", spare, "as a spare")
	a = f.openArray()
	waitIdle(t, a)
	if j := a.Status().LastJob; j == nil || j.Member != 2 || j.Done != size {
		t.Fatalf("last job %+v, want the recovery of member 2", j)
	}
	if n := check(t, a, false); n != 0 {
		t.Fatalf("check found %d mismatches", n)
	}
	if sp := a.Superblock().Spares; len(sp) != 1 || sp[0].Path != spare {
		t.Fatalf("spares %+v", sp)
	}
	failOthers(t, a, 2)
	m.verify(a)
	delete(f.open, a)
	a.Close()
}

func TestFailLinearRefused(t *testing.T) {
	f := newFixture(t, raid.LevelLinear, 2, false, nil)
	for _, force := range []bool{false, true} {
		_, err := OfflineUpdate(f.stateDir, f.name, "fail", Request{Ref: "0", Force: force}, raid.MemberOptions{})
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "no redundancy") {
			t.Errorf("offline fail of a linear member (force %v): %v, want a refusal saying it has no redundancy", force, err)
		}
	}
	a := f.openArray()
	if err := a.Fail("0", true); err == nil || !strings.Contains(err.Error(), "no redundancy") {
		t.Errorf("online fail of a linear member: %v", err)
	}
}

// TestDegradedMirrorResyncsLiveCopies checks that a mirror that stopped
// uncleanly while degraded, with two copies left, makes those two match
// over its dirty regions at once (a write in flight at the stop may have
// reached only one of them), keeps the regions dirty for the lost member,
// and turns read balancing on only then.
func TestDegradedMirrorResyncsLiveCopies(t *testing.T) {
	f := newFixture(t, raid.LevelMirror, 3, false, nil)
	fast := func(o *Options) { o.ClearDelay = 20 * time.Millisecond }
	a := f.openWith(fast)
	m := newModel(t, a)
	m.write(a, 0, int(a.Device().Size()))
	waitFor(t, "the marks of the first writes to clear", func() bool { return a.Status().DirtyRegions == 0 })
	if err := a.Fail(f.members[2], false); err != nil {
		t.Fatal(err)
	}
	m.writeRegions(a, 5)
	a.crash()
	delete(f.open, a)
	// The write reached member 0 and not member 1.
	corruptRedundancy(t, *f.stored(), 5*regionSize+4096)

	a = f.openWith(fast)
	waitIdle(t, a)
	if _, ok := f.log.find("unclean stop while degraded: resyncing dirty regions on the live copies", "regions=1"); !ok {
		t.Fatalf("no log of the resync:\n%s", f.log.all())
	}
	if n := check(t, a, false); n != 0 || !trusted(a) {
		t.Fatalf("check of the live copies: %d mismatches, read balancing %v; want 0 and true", n, trusted(a))
	}
	if got := a.Status().DirtyRegions; got != 1 {
		t.Fatalf("%d dirty regions after the resync, want 1 kept for the lost member", got)
	}
	m.verify(a)
	f.close(a)
}

// memExport serves mem over NBD on a unix socket until the test ends and
// returns its URI. The export's minimum block size is mem's block size.
func memExport(t *testing.T, mem *blockdev.Mem) string {
	t.Helper()
	_, uri := nbdtest.Unix(t, nbd.Export{Name: "m", Device: mem})
	return uri
}

// TestReaddAfterUnfinishedRebuild: a device that failed while it was
// being rebuilt does not hold the array's data, so adding it again
// rebuilds it whole, not only the regions written while it was away.
func TestReaddAfterUnfinishedRebuild(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	m.write(a, 0, int(a.Device().Size()))
	f.close(a) // healthy: the marks go
	g := newGate()
	a = f.openWith(gateRole(0, g))
	if err := a.Fail("1", false); err != nil {
		t.Fatal(err)
	}
	newPath := f.newFile("new1", memberSize)
	g.shut.Store(true)
	if _, err := a.Add(newPath, false); err != nil {
		t.Fatal(err)
	}
	<-g.hit // the rebuild waits on its first read
	if err := a.Fail(newPath, false); err != nil {
		t.Fatal(err)
	}
	g.open()
	waitIdle(t, a)
	if mb := f.stored().Members[1]; mb.State != meta.StateFailed {
		t.Fatalf("member 1 recorded as %+v after it failed during its rebuild", mb)
	}
	msg, err := a.Add(newPath, false)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(msg, "re-added") {
		t.Errorf("add of a device whose rebuild never finished: %q, want a whole rebuild", msg)
	}
	waitIdle(t, a)
	if mb := f.stored().Members[1]; mb.State != meta.StateActive || mb.Path != newPath {
		t.Fatalf("member 1 recorded as %+v after the add", mb)
	}
	failOthers(t, a, 1)
	m.verify(a)
	f.close(a)
}

// TestRebuildSuperseded: a rebuild still running when its role was failed
// and given a device again does not make the role active; the new
// device's own rebuild does.
func TestRebuildSuperseded(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	m.write(a, 0, int(a.Device().Size()))
	f.close(a)
	g := newHeldReads()
	a = f.openWith(func(o *Options) {
		o.Wrap = func(r int, dev blockdev.Device) blockdev.Device {
			if r == 0 {
				return &heldDev{Device: dev, h: g}
			}
			return dev
		}
	})
	if err := a.Fail("1", false); err != nil {
		t.Fatal(err)
	}
	first, second := f.newFile("new1", memberSize), f.newFile("new2", memberSize)
	g.hold(func(off int64) bool { return true })
	if _, err := a.Add(first, false); err != nil {
		t.Fatal(err)
	}
	at := <-g.held // the first rebuild waits on its first read, at the lowest offset
	if err := a.Fail(first, false); err != nil {
		t.Fatal(err)
	}
	if err := a.Remove(first); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add(second, false); err != nil {
		t.Fatal(err)
	}
	// The first rebuild goes on from where it was, into the second device;
	// the second rebuild, queued behind it, starts at the beginning: hold
	// it there.
	g.hold(func(off int64) bool { return off <= at })
	g.release()
	waitFor(t, "the first rebuild to end", func() bool {
		j := a.Status().LastJob
		return j != nil && j.Kind == resync.KindRecover
	})
	if st := a.sync.MemberStates()[1]; st != raid.MemberRecovering {
		t.Errorf("member 1 is %s after the first rebuild ended; the second has not run, want recovering", st)
	}
	if mb := f.stored().Members[1]; mb.State != meta.StateRecovering || mb.Path != second {
		t.Errorf("member 1 recorded as %+v before its rebuild ran", mb)
	}
	g.hold(nil)
	g.release()
	waitIdle(t, a)
	if mb := f.stored().Members[1]; mb.State != meta.StateActive || mb.Path != second {
		t.Fatalf("member 1 recorded as %+v after its rebuild", mb)
	}
	failOthers(t, a, 1)
	m.verify(a)
	f.close(a)
}

// heldReads holds the reads a predicate picks until release; held gets
// the offset of each read it holds.
type heldReads struct {
	mu   sync.Mutex
	pick func(off int64) bool
	rel  chan struct{}
	held chan int64
}

func newHeldReads() *heldReads {
	return &heldReads{rel: make(chan struct{}), held: make(chan int64, 64)}
}

// hold picks the reads to hold from now on (nil: none).
func (h *heldReads) hold(pick func(off int64) bool) {
	h.mu.Lock()
	h.pick = pick
	h.mu.Unlock()
}

// release lets the reads held so far go.
func (h *heldReads) release() {
	h.mu.Lock()
	close(h.rel)
	h.rel = make(chan struct{})
	h.mu.Unlock()
}

type heldDev struct {
	blockdev.Device
	h *heldReads
}

func (d *heldDev) ReadAt(p []byte, off int64) (int, error) {
	d.h.mu.Lock()
	rel := d.h.rel
	hold := d.h.pick != nil && d.h.pick(off)
	d.h.mu.Unlock()
	if hold {
		d.h.held <- off
		<-rel
	}
	return d.Device.ReadAt(p, off)
}
