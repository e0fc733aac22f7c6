package array

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/bitmap"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// redundant are the geometries every bitmap and job test runs on.
var redundant = []struct {
	name  string
	level raid.Level
	n     int
}{
	{"raid35x3", raid.LevelRaid35, 3},
	{"raid35x5", raid.LevelRaid35, 5},
	{"mirror3", raid.LevelMirror, 3},
}

func TestCleanCloseClearsBitmap(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			a := f.openArray()
			if !a.Idle() {
				t.Fatal("an array created on new, zero members has background work")
			}
			m := newModel(t, a)
			m.writeRegions(a, 0, 7, 40)
			bs := a.Device().BlockSize()
			m.write(a, 11*regionSize-int64(bs), 2*bs) // crosses from region 10 into 11
			st := a.Status()
			if st.DirtyRegions != 5 || st.RegionSize != regionSize {
				t.Fatalf("dirty regions %d of %d bytes, want 5 of %d (0, 7, 10, 11, 40)", st.DirtyRegions, st.RegionSize, regionSize)
			}
			f.close(a)

			a = f.openArray()
			st = a.Status()
			if st.DirtyRegions != 0 || st.Job != nil || st.LastJob != nil || st.Queued != 0 || !a.Idle() {
				t.Fatalf("after a clean close: dirty %d, job %v, last job %v, queued %d", st.DirtyRegions, st.Job, st.LastJob, st.Queued)
			}
			if st.State != raid.ArrayClean {
				t.Fatalf("state %s, want clean", st.State)
			}
			m.verify(a)
			f.close(a)
		})
	}
}

func TestUncleanStopResyncsDirtyRegions(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			a := f.openArray()
			m := newModel(t, a)
			m.write(a, 0, int(a.Device().Size())) // real data everywhere
			f.close(a)

			a = f.openArray()
			dirty := []int64{3, 4, 10, 50}
			m.writeRegions(a, dirty...)
			if got := a.Status().DirtyRegions; got != len(dirty) {
				t.Fatalf("%d dirty regions before the crash, want %d", got, len(dirty))
			}
			a.crash()
			delete(f.open, a)

			// A torn stripe in a dirty region, which the resync must
			// repair, and a bad block in a clean one, which it must not
			// even read.
			sb := *f.stored()
			corruptRedundancy(t, sb, 10*regionSize+8192)
			corruptRedundancy(t, sb, 90*regionSize)

			a = f.openArray()
			waitIdle(t, a)
			st := a.Status()
			want := int64(len(dirty)) * regionSize
			if j := st.LastJob; j == nil || j.Kind != resync.KindResync || !j.Finished || j.Error != "" || j.Done != want || j.Total != want {
				t.Fatalf("last job %+v, want a finished resync of %d bytes", j, want)
			}
			if _, ok := f.log.find("unclean stop: resyncing dirty regions", "regions=4"); !ok {
				t.Fatalf("no log of the resync:\n%s", f.log.all())
			}
			var read int64
			for _, io := range st.MemberIO {
				read += io.ReadBytes
			}
			if read == 0 || read > int64(c.n)*want {
				t.Fatalf("resync read %d bytes from the members; the dirty regions are %d bytes on %d members", read, want, c.n)
			}
			if st.DirtyRegions != 0 {
				t.Fatalf("%d regions still dirty after the resync", st.DirtyRegions)
			}
			if n := check(t, a, false); n != 1 {
				t.Fatalf("check found %d mismatches, want 1 (the clean region's bad block only)", n)
			}
			if n := check(t, a, true); n != 1 {
				t.Fatalf("repair found %d mismatches, want 1", n)
			}
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check after repair found %d mismatches", n)
			}
			m.verify(a)
			f.close(a)
		})
	}
}

func TestInitialSync(t *testing.T) {
	cases := []struct {
		name        string
		level       raid.Level
		n           int
		prefill     bool // members held data before create
		assumeClean bool
		wantSync    bool
	}{
		{"raid35 on old disks", raid.LevelRaid35, 3, true, false, true},
		{"raid35x5 on old disks", raid.LevelRaid35, 5, true, false, true},
		{"mirror on old disks", raid.LevelMirror, 2, true, false, true},
		{"raid35 assume clean", raid.LevelRaid35, 3, true, true, false},
		{"mirror assume clean", raid.LevelMirror, 2, true, true, false},
		{"raid35 on new files", raid.LevelRaid35, 3, false, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, c.prefill, func(o *raid.CreateOptions) { o.AssumeClean = c.assumeClean })
			if got := f.stored().InitialSync; got != c.wantSync {
				t.Fatalf("superblock initial sync %v, want %v", got, c.wantSync)
			}
			a := f.openArray()
			waitIdle(t, a)
			st := a.Status()
			if !c.wantSync {
				if st.LastJob != nil {
					t.Fatalf("a job ran: %+v", st.LastJob)
				}
				mismatches := check(t, a, false)
				if c.prefill && mismatches == 0 {
					t.Fatal("members full of random bytes were consistent: the test proves nothing")
				}
				if !c.prefill && mismatches != 0 {
					t.Fatalf("new zero members have %d mismatches", mismatches)
				}
				f.close(a)
				return
			}
			size := a.Device().Size()
			if j := st.LastJob; j == nil || j.Kind != resync.KindResync || !j.Finished || j.Done != size {
				t.Fatalf("last job %+v, want a full resync of %d bytes", j, size)
			}
			if st.InitialSync || a.Superblock().InitialSync || f.stored().InitialSync {
				t.Fatal("initial sync still recorded after it finished")
			}
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check after the initial sync found %d mismatches", n)
			}
			m := newModel(t, a)
			f.close(a)
			a = f.openArray()
			if !a.Idle() || a.Status().LastJob != nil {
				t.Fatal("the initial sync ran again")
			}
			m.verify(a)
			f.close(a)
		})
	}
}

// slow is a throttle under which a job does one 4 MiB chunk, then waits
// for seconds: long enough to stop the array in the middle.
var slow = resync.Throttle{Max: 1 << 20}

// waitChunk waits until the running job has done at least one 4 MiB chunk.
func waitChunk(t *testing.T, a *Array) {
	t.Helper()
	waitFor(t, "the first chunk of the job", func() bool {
		j := a.Status().Job
		return j != nil && j.Done >= 4<<20
	})
}

func TestInitialSyncResumes(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, true, nil)
	a := f.openWith(func(o *Options) { o.Throttle = slow })
	waitChunk(t, a)
	f.close(a)
	sb := f.stored()
	if !sb.InitialSync || sb.SyncedTo != 4<<20 {
		t.Fatalf("stopped initial sync recorded as initial=%v synced to %d, want true and %d", sb.InitialSync, sb.SyncedTo, 4<<20)
	}
	a = f.openArray()
	waitIdle(t, a)
	size := a.Device().Size()
	if j := a.Status().LastJob; j == nil || !j.Finished || j.Done != size-4<<20 {
		t.Fatalf("resumed sync %+v, want the last %d bytes", j, size-4<<20)
	}
	if n := check(t, a, false); n != 0 {
		t.Fatalf("check after the resumed sync found %d mismatches", n)
	}
	if sb := f.stored(); sb.InitialSync || sb.SyncedTo != 0 {
		t.Fatalf("initial=%v synced to %d after the sync", sb.InitialSync, sb.SyncedTo)
	}
	f.close(a)
}

// TestRedundancyTrust checks when a raid35 or mirror array balances its
// reads over its redundancy (raid.ReadBalancer): not while the initial
// sync runs; once it is done; after a clean stop and after the resync of
// an unclean one; not after a check that found mismatches; again after a
// repair.
func TestRedundancyTrust(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) { testRedundancyTrust(t, c.level, c.n) })
	}
}

// trusted reports whether a balances reads over its redundancy.
func trusted(a *Array) bool {
	return a.sync.(interface{ RedundancyTrusted() bool }).RedundancyTrusted()
}

func testRedundancyTrust(t *testing.T, level raid.Level, n int) {
	f := newFixture(t, level, n, true, nil)
	a := f.openWith(func(o *Options) { o.Throttle = slow })
	waitChunk(t, a)
	if trusted(a) {
		t.Fatal("redundancy trusted while the initial sync runs")
	}
	f.close(a)
	a = f.openArray()
	waitIdle(t, a)
	if !trusted(a) {
		t.Fatal("redundancy not trusted after the initial sync")
	}
	m := newModel(t, a)
	f.close(a)

	a = f.openArray()
	if !trusted(a) {
		t.Fatal("redundancy not trusted after a clean stop")
	}
	m.writeRegions(a, 3, 9)
	a.crash()
	delete(f.open, a)
	a = f.openArray()
	waitIdle(t, a)
	if j := a.Status().LastJob; j == nil || j.Kind != resync.KindResync || !trusted(a) {
		t.Fatalf("after an unclean stop: last job %+v, redundancy trusted %v; want a resync and true", j, trusted(a))
	}

	corruptRedundancy(t, *f.stored(), 20*regionSize)
	if n := check(t, a, false); n != 1 || trusted(a) {
		t.Fatalf("check: %d mismatches, redundancy trusted %v; want 1 and false", n, trusted(a))
	}
	if _, ok := f.log.find("check found mismatches: read balancing is off", "mismatches=1"); !ok {
		t.Fatalf("no log of the mismatches:\n%s", f.log.all())
	}
	if n := check(t, a, true); n != 1 || !trusted(a) {
		t.Fatalf("repair: %d mismatches, redundancy trusted %v; want 1 and true", n, trusted(a))
	}
	m.verify(a)
	f.close(a)
}

// garbleStore overwrites every file of the bitmap store with garbage.
func garbleStore(t *testing.T, stateDir string) {
	t.Helper()
	dir := bitmap.Dir(stateDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) == 0 {
		t.Fatal("empty bitmap store")
	}
	junk := []byte(strings.Repeat("not a badger file ", 256))
	for _, e := range ents {
		if e.Type().IsRegular() {
			if err := os.WriteFile(filepath.Join(dir, e.Name()), junk, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestCorruptBitmapStoreFullResync(t *testing.T) {
	for _, c := range redundant {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.level, c.n, false, nil)
			a := f.openArray()
			m := newModel(t, a)
			m.write(a, 0, int(a.Device().Size()))
			f.close(a)
			garbleStore(t, f.stateDir)
			// Inconsistent redundancy far from any write: only a full
			// resync repairs it.
			sb := *f.stored()
			corruptRedundancy(t, sb, sb.Size-8192)

			a = f.openArray()
			if _, ok := f.log.find("WARN", "bitmap store is corrupt"); !ok {
				t.Fatalf("no warning about the corrupt store:\n%s", f.log.all())
			}
			aside, _ := filepath.Glob(filepath.Join(f.stateDir, "bitmap.corrupt-*"))
			if len(aside) != 1 {
				t.Fatalf("corrupt store set aside as %v, want one bitmap.corrupt-* directory", aside)
			}
			waitIdle(t, a)
			size := a.Device().Size()
			if j := a.Status().LastJob; j == nil || j.Kind != resync.KindResync || !j.Finished || j.Done != size {
				t.Fatalf("last job %+v, want a full resync of %d bytes", j, size)
			}
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check after the full resync found %d mismatches", n)
			}
			if c.level == raid.LevelRaid35 {
				m.verify(a) // parity was bad, not data
			}
			f.close(a)

			a = f.openArray()
			if !a.Idle() || a.Status().LastJob != nil {
				t.Fatal("the full resync ran again after a clean stop")
			}
			f.close(a)
		})
	}
}

// A stop (or crash) in the middle of the full resync that a corrupt store
// forced must not forget the rest of it: the store that replaced the
// corrupt one knows nothing of the old marks.
func TestCorruptBitmapStoreResyncSurvivesRestart(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "stop"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, raid.LevelRaid35, 3, false, nil)
			a := f.openArray()
			m := newModel(t, a)
			m.write(a, 0, int(a.Device().Size()))
			f.close(a)
			garbleStore(t, f.stateDir)

			a = f.openWith(func(o *Options) { o.Throttle = slow })
			waitChunk(t, a)
			if crash {
				a.crash()
				delete(f.open, a)
			} else {
				f.close(a)
			}
			sb := *f.stored()
			corruptRedundancy(t, sb, sb.Size-8192) // beyond the first chunk

			a = f.openArray()
			waitIdle(t, a)
			if j := a.Status().LastJob; j == nil || !j.Finished || j.Done == 0 {
				t.Fatalf("no resync after the restart: last job %+v", j)
			}
			if n := check(t, a, false); n != 0 {
				t.Fatalf("check found %d mismatches: the rest of the full resync was forgotten", n)
			}
			m.verify(a)
			f.close(a)
		})
	}
}

// Arrays of one state directory share its bitmap store; one process
// serves several of them (ddraid serve a b).
func TestArraysShareStateDir(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	var bMembers []string
	for _, n := range []string{"b0", "b1"} {
		bMembers = append(bMembers, filepath.Join(f.dir, n))
	}
	err := meta.View(f.stateDir, func(s *meta.Store) error {
		_, err := raid.Create(s, raid.CreateOptions{Name: "b", Level: raid.LevelMirror, Members: bMembers, CreateSize: memberSize, RegionSize: regionSize})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	openB := func() *Array {
		t.Helper()
		b := f.openWith(func(o *Options) { o.Name = "b" })
		return b
	}
	a := f.openArray()
	b := openB()
	ma, mb := newModel(t, a), newModel(t, b)
	ma.writeRegions(a, 1, 2)
	mb.writeRegions(b, 5)
	if da, db := a.Status().DirtyRegions, b.Status().DirtyRegions; da != 2 || db != 1 {
		t.Fatalf("dirty regions a %d b %d, want 2 and 1", da, db)
	}
	// a stops uncleanly, b cleanly: each keeps its own marks.
	a.crash()
	delete(f.open, a)
	f.close(b)
	b = openB()
	a = f.openArray()
	waitIdle(t, a)
	if j := a.Status().LastJob; j == nil || j.Done != 2*regionSize {
		t.Fatalf("a's resync %+v, want %d bytes", j, 2*regionSize)
	}
	if !b.Idle() || b.Status().LastJob != nil {
		t.Fatalf("b resynced after a clean stop: %+v", b.Status().LastJob)
	}
	ma.verify(a)
	mb.verify(b)
	f.close(a)
	f.close(b)
}

func TestLinearHasNoRedundancy(t *testing.T) {
	f := newFixture(t, raid.LevelLinear, 2, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	m.write(a, 0, 1<<20)
	st := a.Status()
	if st.DirtyRegions != 0 || st.RegionSize != 0 || !a.Idle() {
		t.Fatalf("linear array status %+v", st)
	}
	extra := f.newFile("extra", memberSize)
	for name, err := range map[string]error{
		"fail":    a.Fail("0", true),
		"remove":  a.Remove("0"),
		"add":     func() error { _, err := a.Add(extra, true); return err }(),
		"replace": func() error { _, err := a.Replace("0", extra, true); return err }(),
		"check":   func() error { _, err := a.Check(t.Context(), false); return err }(),
	} {
		if err == nil {
			t.Errorf("%s on a linear array succeeded", name)
		}
	}
	if !errors.Is(a.Remove("0"), ErrRefused) {
		t.Error("removing an active linear member is not refused")
	}
	m.verify(a)
	f.close(a)
}
