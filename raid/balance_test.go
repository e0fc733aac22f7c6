package raid

import (
	"bytes"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"pgregory.net/rapid"

	"github.com/ddraid/ddraid/blockdev"
)

// TestReadAround checks which members a small read reaches when one data
// member looks busy: the parity member in its place while parity is
// trusted, the busy member itself otherwise, and always the right data.
func TestReadAround(t *testing.T) {
	for _, g := range []Geometry{
		{Members: 3, Parity: ParityDedicated},
		{Members: 5, Parity: ParityDedicated},
		{Members: 9, Parity: ParityDedicated},
		{Members: 5, Parity: ParityRotating, ParityChunk: 4},
		{Members: 9, BlockSize: 65536, Parity: ParityRotating, ParityChunk: 16},
	} {
		g = g.WithDefaults()
		t.Run(geomName(g), func(t *testing.T) {
			b := int64(g.BlockSize)
			arr, counts := countedRaid35(t, g, 64)
			data := make([]byte, arr.Size())
			fill(data, 1)
			if _, err := arr.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name    string
				trusted bool
				n0, nb  int64
				busy    int32 // requests the busy member seems to have in flight
				around  bool
			}{
				{"trusted one block", true, 5, 1, 3, true},
				{"trusted partial block", true, 6, 1, 3, true},
				{"trusted four blocks", true, 8, 4, 3, true},
				{"not trusted", false, 5, 1, 3, false},
				{"busy by one only", true, 5, 1, 1, false},
				{"run too long", true, 16, balanceMaxBlocks + 1, 3, false},
			} {
				t.Run(tc.name, func(t *testing.T) {
					if !arr.oneParity(tc.n0, int(tc.nb)) && tc.around {
						t.Fatalf("case error: blocks %d+%d span two parity chunks in this layout", tc.n0, tc.nb)
					}
					pm := g.ParityMember(tc.n0)
					busy := g.DataMember(tc.n0, 1)
					before := seemBusy(t, arr, counts, tc.trusted, busy, tc.busy)
					off, n := tc.n0*b, tc.nb*b
					if tc.name == "trusted partial block" {
						off, n = off+100, b-300
					}
					got := make([]byte, n)
					if _, err := arr.ReadAt(got, off); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, data[off:off+n]) {
						t.Fatalf("read [%d, +%d) returned other data (first difference at %d)", off, n, firstDiff(got, data[off:off+n]))
					}
					around := arr.ReadsAround() - before
					if tc.around {
						if around != 1 || counts[busy].reads.Load() != 0 || counts[pm].reads.Load() == 0 {
							t.Fatalf("reads around %d, busy member %d read %d times, parity member %d read %d times; want 1, 0 and more than 0",
								around, busy, counts[busy].reads.Load(), pm, counts[pm].reads.Load())
						}
						return
					}
					if around != 0 || counts[busy].reads.Load() == 0 {
						t.Fatalf("reads around %d, busy member %d read %d times; want 0 and more than 0", around, busy, counts[busy].reads.Load())
					}
				})
			}
		})
	}
}

// seemBusy trusts arr's parity or not, makes member look as if it had busy
// more requests in flight until the test ends, zeroes the member counts
// and returns the reads-around count to measure from.
func seemBusy(t *testing.T, arr *Raid35, counts []*countDev, trusted bool, member int, busy int32) int64 {
	t.Helper()
	arr.TrustRedundancy(trusted)
	arr.queue[member].Add(busy)
	t.Cleanup(func() { arr.queue[member].Add(-busy) })
	for _, c := range counts {
		c.reset()
	}
	return arr.ReadsAround()
}

// TestReadAroundTwoMembers checks read balancing on a two-member raid35,
// where each member holds every block whole: a read goes to the other
// member when the data member is busy and the copies are trusted, and the
// data is right (TestReadAroundStaleParity shows a damaged copy).
func TestReadAroundTwoMembers(t *testing.T) {
	g := Geometry{Members: 2, Parity: ParityDedicated}.WithDefaults()
	b := int64(g.BlockSize)
	arr, counts := countedRaid35(t, g, 16)
	data := make([]byte, arr.Size())
	fill(data, 3)
	if _, err := arr.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	const n = 5
	dm := g.DataMember(n, 0)
	for _, tc := range []struct {
		name    string
		trusted bool
		busy    int32
		nb      int64
		from    int // the member that serves the read
	}{
		{"trusted, data member busy", true, 3, 1, 1 - dm},
		{"trusted, four blocks", true, 2, 4, 1 - dm},
		{"not trusted", false, 3, 1, dm},
		{"busy by one only", true, 1, 1, dm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := seemBusy(t, arr, counts, tc.trusted, dm, tc.busy)
			got := make([]byte, tc.nb*b)
			if _, err := arr.ReadAt(got, n*b); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[n*b:(n+tc.nb)*b]) {
				t.Fatalf("read returned other data (first difference at %d)", firstDiff(got, data[n*b:(n+tc.nb)*b]))
			}
			if counts[tc.from].reads.Load() != 1 || counts[1-tc.from].reads.Load() != 0 {
				t.Fatalf("member reads %d and %d, want only member %d once", counts[0].reads.Load(), counts[1].reads.Load(), tc.from)
			}
			if around := arr.ReadsAround() - before; (around == 1) != (tc.from != dm) || around > 1 {
				t.Fatalf("reads around %d", around)
			}
		})
	}
}

// TestReadAroundStaleParity shows why reads go around a member only while
// parity is trusted: with a block's parity (on two members: its copy)
// damaged, a trusted read around returns wrong data and an untrusted one
// the right data.
func TestReadAroundStaleParity(t *testing.T) {
	for _, members := range []int{5, 2} {
		g := Geometry{Members: members, Parity: ParityDedicated}.WithDefaults()
		t.Run(geomName(g), func(t *testing.T) {
			f, b := int64(g.FragmentSize()), int64(g.BlockSize)
			const blocks = 8
			mems := newMems(g.Members, blocks*f)
			arr, err := NewRaid35(g, asDevs(mems, -1), blocks*f, Config{})
			if err != nil {
				t.Fatal(err)
			}
			data := make([]byte, arr.Size())
			fill(data, 2)
			if _, err := arr.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			const n = 3
			mems[g.ParityMember(n)].Bytes()[n*f] ^= 0xff // parity no longer matches block n
			arr.queue[g.DataMember(n, 0)].Add(5)
			got := make([]byte, b)
			for _, trusted := range []bool{false, true} {
				arr.TrustRedundancy(trusted)
				if _, err := arr.ReadAt(got, n*b); err != nil {
					t.Fatal(err)
				}
				if right := bytes.Equal(got, data[n*b:(n+1)*b]); right == trusted {
					t.Fatalf("trusted %v: read returned the right data: %v", trusted, right)
				}
			}
		})
	}
}

// yieldDev gives up the processor before every read, so that reads of one
// run from several members spread out in time and writes land between
// them.
type yieldDev struct{ blockdev.Device }

func (y yieldDev) ReadAt(p []byte, off int64) (int, error) {
	for range 20 {
		runtime.Gosched()
	}
	return y.Device.ReadAt(p, off)
}

// TestReadAroundDuringWrites has readers go around a busy member while
// writers rewrite the same blocks: every block read must be one of the
// versions written, never a mix rebuilt from fragments of two writes.
func TestReadAroundDuringWrites(t *testing.T) {
	g := Geometry{Members: 5, Parity: ParityDedicated}.WithDefaults()
	f, b := int64(g.FragmentSize()), int64(g.BlockSize)
	const blocks = 4
	devs := make([]blockdev.Device, g.Members)
	for i := range devs {
		devs[i] = yieldDev{blockdev.NewMem(blocks*f, 512)}
	}
	arr, err := NewRaid35(g, devs, blocks*f, Config{})
	if err != nil {
		t.Fatal(err)
	}
	versions := make([][]byte, 3)
	for i := range versions {
		versions[i] = make([]byte, b)
		fill(versions[i], uint64(10+i))
	}
	for n := range int64(blocks) {
		if _, err := arr.WriteAt(versions[0], n*b); err != nil {
			t.Fatal(err)
		}
	}
	arr.TrustRedundancy(true)
	arr.queue[g.DataMember(0, 2)].Add(5)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				v := versions[(i+w)%len(versions)]
				if _, err := arr.WriteAt(v, int64(i%blocks)*b); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	got := make([]byte, b)
	for i := range 2000 {
		n := int64(i % blocks)
		if _, err := arr.ReadAt(got, n*b); err != nil {
			t.Fatal(err)
		}
		ok := false
		for _, v := range versions {
			ok = ok || bytes.Equal(got, v)
		}
		if !ok {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("read %d of block %d returned none of the versions written", i, n)
		}
	}
	stop.Store(true)
	wg.Wait()
	if arr.ReadsAround() == 0 {
		t.Fatal("no read went around the busy member")
	}
}

// TestReadAroundModel runs random writes and reads with parity trusted and
// random members made to look busy: every read returns what was written.
func TestReadAroundModel(t *testing.T) {
	for _, g := range testGeometries() {
		if g.Members < 3 {
			continue
		}
		t.Run(geomName(g), func(t *testing.T) {
			rapid.Check(t, func(rt *rapid.T) {
				f, b := int64(g.FragmentSize()), int64(g.BlockSize)
				blocks := rapid.Int64Range(1, 40).Draw(rt, "blocks")
				arr, err := NewRaid35(g, asDevs(newMems(g.Members, blocks*f), -1), blocks*f, Config{})
				if err != nil {
					rt.Fatalf("NewRaid35: %v", err)
				}
				arr.TrustRedundancy(true)
				mt := &modelTarget{dev: arr, model: make([]byte, arr.Size()), bs: b, trim: trimBlocks(b), name: "trusted"}
				for range rapid.IntRange(1, 30).Draw(rt, "ops") {
					m := rapid.IntRange(0, g.Members-1).Draw(rt, "busy member")
					q := rapid.Int32Range(0, 4).Draw(rt, "busy by")
					arr.queue[m].Add(q)
					mt.step(rt)
					off := rapid.Int64Range(0, arr.Size()-1).Draw(rt, "read off")
					mt.checkRange(rt, off, rapid.Int64Range(0, min(3*b, arr.Size()-off)).Draw(rt, "read len"))
					arr.queue[m].Add(-q)
				}
				mt.checkAll(rt)
			})
		})
	}
}
