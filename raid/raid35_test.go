package raid

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
	"pgregory.net/rapid"
)

// testGeometries covers every member count with its smallest block size
// and 4096 (8192 for nine members), rotating (small chunks, so small arrays
// rotate often) and dedicated parity.
func testGeometries() []Geometry {
	var gs []Geometry
	for _, m := range []int{2, 3, 5, 9} {
		minB := MinFragmentSize << Geometry{Members: m}.Order()
		sizes := []int{minB, 4096}
		if minB == 4096 {
			sizes[1] = 8192
		}
		for i, b := range sizes {
			gs = append(gs,
				Geometry{Members: m, BlockSize: b, Parity: ParityRotating, ParityChunk: 1 + 2*i},
				Geometry{Members: m, BlockSize: b, Parity: ParityDedicated})
		}
	}
	return gs
}

func TestRaid35Model(t *testing.T) {
	forEachXOR(t, func(t *testing.T) {
		for _, g := range testGeometries() {
			t.Run(geomName(g), func(t *testing.T) {
				rapid.Check(t, func(rt *rapid.T) { raid35Model(rt, g) })
			})
		}
	})
}

// raid35Model runs random IO against a healthy array and a byte-slice
// model, then checks every degraded view reads the same, then writes
// degraded and rebuilds the missing member.
func raid35Model(rt *rapid.T, g Geometry) {
	f, b := int64(g.FragmentSize()), int64(g.BlockSize)
	blocks := rapid.Int64Range(1, 40).Draw(rt, "blocks")
	dataSize := blocks*f + rapid.Int64Range(0, f-1).Draw(rt, "slack")
	mems := newMems(g.Members, dataSize+rapid.Int64Range(0, 2*f).Draw(rt, "spare"))
	cfg := Config{OnFail: func(m int, err error) { rt.Fatalf("unexpected OnFail(%d, %v)", m, err) }}
	arr, err := NewRaid35(g, asDevs(mems, -1), dataSize, cfg)
	if err != nil {
		rt.Fatalf("NewRaid35: %v", err)
	}
	if arr.Size() != blocks*b || arr.BlockSize() != int(b) || arr.Blocks() != blocks {
		rt.Fatalf("size %d block size %d blocks %d, want %d %d %d", arr.Size(), arr.BlockSize(), arr.Blocks(), blocks*b, b, blocks)
	}
	mt := &modelTarget{dev: arr, model: make([]byte, arr.Size()), bs: b, trim: trimBlocks(b), name: "healthy"}
	for range rapid.IntRange(1, 25).Draw(rt, "ops") {
		mt.step(rt)
	}
	mt.checkAll(rt)
	checkOutOfRange(rt, mt)
	if bad, err := arr.CheckBlocks(0, blocks); err != nil || bad != 0 {
		rt.Fatalf("healthy: CheckBlocks: %d mismatches, %v", bad, err)
	}

	// Every degraded view reads what the healthy array reads.
	for i := range g.Members {
		d, err := NewRaid35(g, asDevs(mems, i), dataSize, cfg)
		if err != nil {
			rt.Fatalf("NewRaid35 without member %d: %v", i, err)
		}
		if st := d.MemberStates(); st[i] != MemberMissing {
			rt.Fatalf("member %d state %q, want missing", i, st[i])
		}
		dt := &modelTarget{dev: d, model: mt.model, bs: b, name: fmt.Sprintf("member %d missing", i)}
		dt.checkAll(rt)
		for range 3 {
			off := rapid.Int64Range(0, arr.Size()-1).Draw(rt, "degraded read off")
			dt.checkRange(rt, off, rapid.Int64Range(0, min(3*b, arr.Size()-off)).Draw(rt, "degraded read len"))
		}
	}

	// Degraded writes, then rebuild the missing member from the others.
	miss := rapid.IntRange(0, g.Members-1).Draw(rt, "missing")
	d, err := NewRaid35(g, asDevs(mems, miss), dataSize, cfg)
	if err != nil {
		rt.Fatalf("NewRaid35 without member %d: %v", miss, err)
	}
	if _, err := d.CheckBlocks(0, blocks); !errors.Is(err, ErrDegraded) {
		rt.Fatalf("CheckBlocks on a degraded array: %v, want ErrDegraded", err)
	}
	dt := &modelTarget{dev: d, model: mt.model, bs: b, trim: trimBlocks(b), name: fmt.Sprintf("degraded writes, member %d missing", miss)}
	for range rapid.IntRange(1, 15).Draw(rt, "degraded ops") {
		dt.step(rt)
	}
	dt.checkAll(rt)
	rebuildByXOR(mems, miss, blocks*f)
	mt.name = "after rebuild"
	mt.checkAll(rt)
	if bad, err := arr.CheckBlocks(0, blocks); err != nil || bad != 0 {
		rt.Fatalf("after rebuild: CheckBlocks: %d mismatches, %v", bad, err)
	}
}

// rebuildByXOR recomputes member miss as the byte-by-byte XOR of the
// others over [0, n): the XOR of all fragments of a block is zero whatever
// their roles.
func rebuildByXOR(mems []*blockdev.Mem, miss int, n int64) {
	out := mems[miss].Bytes()[:n]
	clear(out)
	for j, m := range mems {
		if j == miss {
			continue
		}
		for x, v := range m.Bytes()[:n] {
			out[x] ^= v
		}
	}
}

// TestRaid35Parity runs random IO through every XOR path, checks parity
// against a byte-by-byte XOR of the members, and checks that CheckBlocks
// finds a corrupted fragment.
func TestRaid35Parity(t *testing.T) {
	forEachXOR(t, func(t *testing.T) {
		for _, g := range testGeometries() {
			t.Run(geomName(g), func(t *testing.T) {
				f, b := int64(g.FragmentSize()), int64(g.BlockSize)
				const blocks = 32
				mems := newMems(g.Members, blocks*f)
				arr, err := NewRaid35(g, asDevs(mems, -1), blocks*f, Config{})
				if err != nil {
					t.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(1, 2))
				for i := range 200 {
					off := rng.Int64N(arr.Size())
					n := rng.Int64N(min(4*b, arr.Size()-off) + 1)
					p := make([]byte, n)
					fill(p, uint64(i))
					switch i % 4 {
					case 0:
						off, n = off/b*b, min((n+b-1)/b*b, arr.Size()-off/b*b)
						p = make([]byte, n)
						fill(p, uint64(i))
						fallthrough
					case 1, 2:
						if _, err := arr.WriteAt(p, off); err != nil {
							t.Fatal(err)
						}
					case 3:
						if err := arr.Zero(off, n); err != nil {
							t.Fatal(err)
						}
					}
				}
				// Reference check: the XOR of every member is zero.
				for x := range blocks * f {
					var v byte
					for _, m := range mems {
						v ^= m.Bytes()[x]
					}
					if v != 0 {
						t.Fatalf("block %d: members XOR to %#x at member offset %d", x/f, v, x)
					}
				}
				if bad, err := arr.CheckBlocks(0, blocks); err != nil || bad != 0 {
					t.Fatalf("CheckBlocks: %d, %v", bad, err)
				}
				// Corrupt one byte of one fragment of blocks 5 and 20.
				for _, n := range []int64{5, 20} {
					mems[int(n)%g.Members].Bytes()[n*f+7] ^= 0x40
				}
				if bad, err := arr.CheckBlocks(0, blocks); err != nil || bad != 2 {
					t.Fatalf("CheckBlocks after corrupting 2 blocks: %d, %v", bad, err)
				}
				if bad, err := arr.CheckBlocks(6, 20); err != nil || bad != 0 {
					t.Fatalf("CheckBlocks(6, 20): %d, %v", bad, err)
				}
				if _, err := arr.CheckBlocks(0, blocks+1); !errors.Is(err, blockdev.ErrOutOfRange) {
					t.Fatalf("CheckBlocks past the end: %v", err)
				}
			})
		}
	})
}

// stretches counts the maximal runs of blocks [n0, n0+nb) in which member m
// holds data.
func stretches(g Geometry, m int, n0, nb int64) int64 {
	var cnt int64
	in := false
	for n := n0; n < n0+nb; n++ {
		data := g.ParityMember(n) != m
		if data && !in {
			cnt++
		}
		in = data
	}
	return cnt
}

// TestRaid35IOCounts checks the member IO pattern: an aligned write of a
// run is one WriteAt per member over the run's fragments and no ReadAt
// (runs over 4 MiB are cut into 4 MiB runs); an aligned read is one ReadAt
// per member stretch of data.
func TestRaid35IOCounts(t *testing.T) {
	gs := append(testGeometries(),
		Geometry{Members: 5},
		Geometry{Members: 9, BlockSize: 65536, Parity: ParityRotating, ParityChunk: 2})
	for _, g := range gs {
		g = g.WithDefaults()
		t.Run(geomName(g), func(t *testing.T) {
			f, b := int64(g.FragmentSize()), int64(g.BlockSize)
			const blocks = 100
			arr, counts := countedRaid35(t, g, blocks)
			for _, run := range []struct{ n0, nb int64 }{{0, 1}, {3, 1}, {2, 37}, {0, blocks}, {50, 2}} {
				p := make([]byte, run.nb*b)
				fill(p, uint64(run.n0))
				for _, c := range counts {
					c.reset()
				}
				if _, err := arr.WriteAt(p, run.n0*b); err != nil {
					t.Fatal(err)
				}
				// One WriteAt per member per run of at most maxRunBytes.
				var want []ioRange
				for n := run.n0; n < run.n0+run.nb; n += maxRunBytes / b {
					want = append(want, ioRange{n * f, min(maxRunBytes/b, run.n0+run.nb-n) * f})
				}
				for i, c := range counts {
					if c.reads.Load() != 0 || fmt.Sprint(c.writeLog) != fmt.Sprint(want) {
						t.Fatalf("write blocks %d+%d: member %d: %d reads, writes %v, want 0 reads, writes %v",
							run.n0, run.nb, i, c.reads.Load(), c.writeLog, want)
					}
					c.reset()
				}
				q := make([]byte, len(p))
				if _, err := arr.ReadAt(q, run.n0*b); err != nil {
					t.Fatal(err)
				}
				if i := firstDiff(p, q); i >= 0 {
					t.Fatalf("read back differs at byte %d", i)
				}
				for i, c := range counts {
					var want int64
					for n := run.n0; n < run.n0+run.nb; n += maxRunBytes / b {
						want += stretches(g, i, n, min(maxRunBytes/b, run.n0+run.nb-n))
					}
					if c.reads.Load() != want || c.writes.Load() != 0 {
						t.Fatalf("read blocks %d+%d: member %d: %d reads %v and %d writes, want %d reads",
							run.n0, run.nb, i, c.reads.Load(), c.readLog, c.writes.Load(), want)
					}
				}
			}
			// A 512-byte write at 1536 works (read-modify-write unless the
			// block is 512 bytes) and reads back.
			model := make([]byte, arr.Size())
			if _, err := arr.ReadAt(model, 0); err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 512)
			fill(p, 1536)
			for _, c := range counts {
				c.reset()
			}
			if _, err := arr.WriteAt(p, 1536); err != nil {
				t.Fatal(err)
			}
			for i, c := range counts {
				// Read the block's data fragments (none if the block is
				// a whole 512 bytes), then write every fragment once.
				wantReads := stretches(g, i, 1536/b, 1)
				if b == 512 {
					wantReads = 0
				}
				if c.writes.Load() != 1 || c.reads.Load() != wantReads {
					t.Fatalf("512@1536: member %d: %d writes %d reads, want 1 and %d", i, c.writes.Load(), c.reads.Load(), wantReads)
				}
			}
			copy(model[1536:], p)
			mt := &modelTarget{dev: arr, model: model, bs: b, name: "after 512@1536"}
			mt.checkRange(t, 1536, 512)
			mt.checkAll(t)
			if bad, err := arr.CheckBlocks(0, blocks); err != nil || bad != 0 {
				t.Fatalf("CheckBlocks: %d, %v", bad, err)
			}
		})
	}
}

// TestRaid35Faults injects EIO into one member in the middle of random IO:
// the array keeps serving correct data, OnFail is called exactly once, and
// a second failing member makes IO fail with an error (and no panic).
func TestRaid35Faults(t *testing.T) {
	forEachXOR(t, func(t *testing.T) {
		for _, g := range testGeometries() {
			for _, kind := range []string{"reads", "writes", "all"} {
				t.Run(geomName(g)+"/"+kind, func(t *testing.T) { raid35Faults(t, g, kind) })
			}
		}
	})
}

func raid35Faults(t *testing.T, g Geometry, kind string) {
	f, b := int64(g.FragmentSize()), int64(g.BlockSize)
	const blocks = 48
	faults := make([]*faultDev, g.Members)
	devs := make([]blockdev.Device, g.Members)
	for i := range devs {
		faults[i] = &faultDev{Device: blockdev.NewMem(blocks*f, 512), failReads: kind != "writes", failWrites: kind != "reads"}
		devs[i] = faults[i]
	}
	var log failLog
	arr, err := NewRaid35(g, devs, blocks*f, Config{OnFail: log.onFail})
	if err != nil {
		t.Fatal(err)
	}
	mt := &modelTarget{dev: arr, model: make([]byte, arr.Size()), bs: b, trim: trimBlocks(b), name: "faults"}
	rng := rand.New(rand.NewPCG(uint64(g.Members), uint64(g.BlockSize)))
	randomIO := func(count int) {
		for i := range count {
			off := rng.Int64N(arr.Size())
			n := rng.Int64N(min(3*b, arr.Size()-off)) + 1
			switch i % 4 {
			case 0:
				off = off / b * b
				n = min((n+b-1)/b*b, arr.Size()-off)
				fallthrough
			case 1:
				p := make([]byte, n)
				fill(p, rng.Uint64())
				if _, err := arr.WriteAt(p, off); err != nil {
					t.Fatalf("write %d@%d: %v", n, off, err)
				}
				copy(mt.model[off:], p)
			case 2:
				mt.checkRange(t, off, n)
			case 3:
				if err := arr.Zero(off, n); err != nil {
					t.Fatalf("zero %d@%d: %v", n, off, err)
				}
				clear(mt.model[off : off+n])
			}
		}
	}
	randomIO(40)
	bad := rng.IntN(g.Members)
	if kind == "reads" && g.Parity == ParityDedicated {
		bad = rng.IntN(g.Members - 1) // healthy reads never touch the parity member
	}
	faults[bad].arm(int64(rng.IntN(5)))
	randomIO(80)
	mt.checkAll(t)
	if err := arr.Flush(); err != nil {
		t.Fatalf("flush with one failed member: %v", err)
	}
	calls := log.get()
	if len(calls) != 1 || calls[0].member != bad || !errors.Is(calls[0].err, syscall.EIO) {
		t.Fatalf("OnFail calls %v, want one for member %d with EIO", calls, bad)
	}
	var me *MemberError
	if !errors.As(calls[0].err, &me) || me.Member != bad || !strings.HasPrefix(me.Error(), "raid35: ") {
		t.Fatalf("OnFail error %v is not a MemberError for member %d", calls[0].err, bad)
	}
	if st := arr.MemberStates(); st[bad] != MemberFailed {
		t.Fatalf("states %v, want member %d failed", st, bad)
	}
	if faults[bad].failures.Load() == 0 {
		t.Fatal("the fault was never hit")
	}
	arr.Fail(bad, errors.New("again")) // idempotent
	if len(log.get()) != 1 {
		t.Fatal("Fail on a failed member called OnFail again")
	}

	// A second member fails: IO now errors, nothing panics.
	second := (bad + 1) % g.Members
	faults[second].arm(0)
	faults[second].tripped.Store(true)
	p := make([]byte, 3*b)
	_, werr := arr.WriteAt(p, 0)
	_, rerr := arr.ReadAt(p, b/2)
	zerr := arr.Zero(0, 2*b)
	for _, err := range []error{werr, rerr, zerr, arr.Flush()} {
		if err == nil {
			t.Fatal("IO with two failed members succeeded")
		}
		if !errors.Is(err, ErrArrayFailed) {
			t.Fatalf("error %v does not wrap ErrArrayFailed", err)
		}
	}
	if !isIOError(werr) || !strings.Contains(werr.Error(), fmt.Sprintf("member %d", second)) {
		t.Fatalf("write error %q should wrap EIO from member %d", werr, second)
	}
	if calls := log.get(); len(calls) != 2 || calls[1].member != second {
		t.Fatalf("OnFail calls %v, want a second one for member %d", calls, second)
	}
	if err := arr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := arr.ReadAt(p, 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

func TestRaid35Fail(t *testing.T) {
	g := Geometry{Members: 3, BlockSize: 4096}
	mems := newMems(3, 64<<10)
	var log failLog
	arr, err := NewRaid35(g, asDevs(mems, -1), 64<<10, Config{OnFail: log.onFail})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8192)
	fill(p, 5)
	if _, err := arr.WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	arr.Fail(1, nil)
	arr.Fail(1, nil)
	arr.Fail(7, nil) // out of range: ignored
	if c := log.get(); len(c) != 1 || c[0].member != 1 || c[0].err != nil {
		t.Fatalf("OnFail calls %v", c)
	}
	if st := arr.MemberStates(); fmt.Sprint(st) != "[active failed active]" {
		t.Fatalf("states %v", st)
	}
	mt := &modelTarget{dev: arr, model: make([]byte, arr.Size()), bs: 4096, name: "member 1 failed"}
	copy(mt.model[4096:], p)
	mt.checkAll(t)
	arr.Fail(0, nil)
	if _, err := arr.ReadAt(p, 0); !errors.Is(err, ErrArrayFailed) {
		t.Fatalf("read with 2 failed members: %v", err)
	}
}

func TestNewRaid35Errors(t *testing.T) {
	mem := func(n int64) blockdev.Device { return blockdev.NewMem(n, 512) }
	cases := []struct {
		name string
		g    Geometry
		devs []blockdev.Device
		size int64
		want string
	}{
		{"bad geometry", Geometry{Members: 4}, []blockdev.Device{mem(4096), mem(4096), mem(4096), mem(4096)}, 4096, "raid35 needs 2, 3, 5 or 9 members, got 4"},
		{"device count", Geometry{Members: 3}, []blockdev.Device{mem(4096), mem(4096)}, 4096, "geometry has 3 members but 2 devices"},
		{"two missing", Geometry{Members: 3}, []blockdev.Device{mem(4096), nil, nil}, 4096, "2 of 3 members missing"},
		{"small member", Geometry{Members: 3}, []blockdev.Device{mem(4096), mem(2048), mem(4096)}, 4096, "member 1 is 2048 bytes"},
		{"no block", Geometry{Members: 3}, []blockdev.Device{mem(4096), mem(4096), mem(4096)}, 1000, "holds no 2048-byte fragment"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewRaid35(c.g, c.devs, c.size, Config{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestRaid35Concurrent hammers one array with overlapping unaligned writes,
// zeroes and reads from several goroutines, then checks that parity is
// consistent and every degraded view agrees with the healthy one.
func TestRaid35Concurrent(t *testing.T) {
	for _, g := range []Geometry{
		{Members: 5, BlockSize: 4096, Parity: ParityRotating, ParityChunk: 3},
		{Members: 2, BlockSize: 512, Parity: ParityRotating, ParityChunk: 2},
		{Members: 9, BlockSize: 4096, Parity: ParityDedicated},
	} {
		t.Run(geomName(g), func(t *testing.T) {
			f, b := int64(g.FragmentSize()), int64(g.BlockSize)
			const blocks = 16
			mems := newMems(g.Members, blocks*f)
			arr, err := NewRaid35(g, asDevs(mems, -1), blocks*f, Config{})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for w := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					p := make([]byte, 3*b)
					for i := range 150 {
						off := rng.Int64N(arr.Size())
						n := rng.Int64N(min(3*b, arr.Size()-off)) + 1
						var err error
						switch i % 5 {
						case 0:
							err = arr.Zero(off, n)
						case 1:
							_, err = arr.ReadAt(p[:n], off)
						case 2:
							err = arr.Trim(off, n)
						default:
							fill(p[:n], rng.Uint64())
							_, err = arr.WriteAt(p[:n], off)
						}
						if err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if bad, err := arr.CheckBlocks(0, blocks); err != nil || bad != 0 {
				t.Fatalf("CheckBlocks after concurrent IO: %d, %v", bad, err)
			}
			healthy := make([]byte, arr.Size())
			if _, err := arr.ReadAt(healthy, 0); err != nil {
				t.Fatal(err)
			}
			for i := range g.Members {
				d, err := NewRaid35(g, asDevs(mems, i), blocks*f, Config{})
				if err != nil {
					t.Fatal(err)
				}
				mt := &modelTarget{dev: d, model: healthy, bs: b, name: fmt.Sprintf("member %d missing", i)}
				mt.checkAll(t)
			}
		})
	}
}

// TestRaid35DisjointConcurrent has each goroutine own a region and verify
// its own writes while the others write theirs.
func TestRaid35DisjointConcurrent(t *testing.T) {
	g := Geometry{Members: 5, BlockSize: 4096, Parity: ParityRotating, ParityChunk: 2}
	const blocks, workers = 64, 8
	f, b := int64(g.FragmentSize()), int64(g.BlockSize)
	arr, err := NewRaid35(g, asDevs(newMems(5, blocks*f), 2), blocks*f, Config{})
	if err != nil {
		t.Fatal(err)
	}
	region := arr.Size() / workers
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			model := make([]byte, region)
			base := int64(w) * region
			for range 100 {
				off := rng.Int64N(region)
				n := rng.Int64N(min(2*b, region-off)) + 1
				p := make([]byte, n)
				fill(p, rng.Uint64())
				if _, err := arr.WriteAt(p, base+off); err != nil {
					t.Error(err)
					return
				}
				copy(model[off:], p)
				q := make([]byte, region)
				if _, err := arr.ReadAt(q, base); err != nil {
					t.Error(err)
					return
				}
				if i := firstDiff(q, model); i >= 0 {
					t.Errorf("worker %d: byte %d differs", w, i)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestRaid35Large(t *testing.T) {
	// A request larger than one 4 MiB run, unaligned at both ends.
	g := Geometry{Members: 3, BlockSize: 4096, Parity: ParityRotating, ParityChunk: 16}
	f := int64(g.FragmentSize())
	const blocks = 2600
	arr, err := NewRaid35(g, asDevs(newMems(3, blocks*f), -1), blocks*f, Config{})
	if err != nil {
		t.Fatal(err)
	}
	mt := &modelTarget{dev: arr, model: make([]byte, arr.Size()), bs: 4096, name: "large"}
	p := make([]byte, arr.Size()-1000)
	fill(p, 42)
	if _, err := arr.WriteAt(p, 700); err != nil {
		t.Fatal(err)
	}
	copy(mt.model[700:], p)
	mt.checkAll(t)
	mt.checkRange(t, 333, arr.Size()-4000)
	if err := arr.Zero(100, arr.Size()-200); err != nil {
		t.Fatal(err)
	}
	clear(mt.model[100 : arr.Size()-100])
	mt.checkAll(t)
	if bad, err := arr.CheckBlocks(0, blocks); err != nil || bad != 0 {
		t.Fatalf("CheckBlocks: %d, %v", bad, err)
	}
}

// TestNesting builds arrays of arrays: a raid35 over raid35s whose block
// size is the outer fragment size, a mirror of raid35s and a linear of
// both, and runs the model over the top.
func TestNesting(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		inner := Geometry{Members: 3, BlockSize: 2048, Parity: ParityRotating, ParityChunk: 2}
		outer := Geometry{Members: 3, BlockSize: 4096, Parity: ParityDedicated}
		const blocks = 24 // outer blocks
		innerData := int64(blocks * 2048 / 2)
		var arrays []blockdev.Device
		for range 3 {
			a, err := NewRaid35(inner, asDevs(newMems(3, innerData), -1), innerData, Config{})
			if err != nil {
				rt.Fatal(err)
			}
			arrays = append(arrays, a)
		}
		top, err := NewRaid35(outer, arrays, blocks*2048, Config{})
		if err != nil {
			rt.Fatal(err)
		}
		m1, _ := NewRaid35(inner, asDevs(newMems(3, 8192), -1), 8192, Config{})
		m2, _ := NewRaid35(inner, asDevs(newMems(3, 8192), 0), 8192, Config{})
		mirror, err := NewMirror([]blockdev.Device{m1, m2}, 16384, Config{})
		if err != nil {
			rt.Fatal(err)
		}
		lin, err := NewLinear([]blockdev.Device{top, mirror}, Config{})
		if err != nil {
			rt.Fatal(err)
		}
		if lin.Size() != blocks*4096+16384 || lin.BlockSize() != 4096 {
			rt.Fatalf("linear size %d block size %d", lin.Size(), lin.BlockSize())
		}
		mt := &modelTarget{dev: lin, model: make([]byte, lin.Size()), bs: 4096, name: "nested"}
		mt.trim = func(model []byte, off, n int64) {
			// The raid35 part zeroes whole outer blocks; the mirror part
			// zeroes its whole range.
			end := off + n
			if off < top.Size() {
				trimBlocks(4096)(model[:top.Size()], off, min(end, top.Size())-off)
			}
			if end > top.Size() {
				from := max(off, top.Size())
				clear(model[from:end])
			}
		}
		for range rapid.IntRange(1, 30).Draw(rt, "ops") {
			mt.step(rt)
		}
		mt.checkAll(rt)
		if bad, err := top.CheckBlocks(0, blocks); err != nil || bad != 0 {
			rt.Fatalf("outer parity: %d, %v", bad, err)
		}
		for i, a := range arrays {
			if bad, err := a.(*Raid35).CheckBlocks(0, a.(*Raid35).Blocks()); err != nil || bad != 0 {
				rt.Fatalf("inner array %d parity: %d, %v", i, bad, err)
			}
		}
		if err := lin.Close(); err != nil {
			rt.Fatal(err)
		}
	})
}

// TestRaid35GatheredWrites writes the same random runs to an array over
// files (member writes gathered with pwritev) and one over memory devices
// (gathered by copying), through both XOR paths, and checks that every
// member ends up byte-identical and that the runs read back.
func TestRaid35GatheredWrites(t *testing.T) {
	forEachXOR(t, func(t *testing.T) {
		gs := append(testGeometries(), Geometry{Members: 9, BlockSize: 4096, Parity: ParityRotating, ParityChunk: 16})
		for _, g := range gs {
			t.Run(geomName(g), func(t *testing.T) {
				g = g.WithDefaults()
				f, b := int64(g.FragmentSize()), int64(g.BlockSize)
				const blocks = 700
				mems := newMems(g.Members, blocks*f)
				files := make([]blockdev.Device, g.Members)
				for i := range files {
					d, err := blockdev.OpenFile(fmt.Sprintf("%s/m%d", t.TempDir(), i), blockdev.FileOptions{Create: true, CreateSize: blocks * f})
					if err != nil {
						t.Fatal(err)
					}
					files[i] = d
				}
				onMem, err := NewRaid35(g, asDevs(mems, -1), blocks*f, Config{})
				if err != nil {
					t.Fatal(err)
				}
				onFile, err := NewRaid35(g, files, blocks*f, Config{})
				if err != nil {
					t.Fatal(err)
				}
				defer onFile.Close()
				rng := rand.New(rand.NewPCG(7, uint64(g.Members)))
				for i := range 60 {
					n0 := rng.Int64N(blocks)
					nb := 1 + rng.Int64N(blocks-n0)
					off, n := n0*b, nb*b
					if i%3 == 2 { // unaligned: read-modify-write at both ends
						off += rng.Int64N(b)
						n = max(1, n-rng.Int64N(b)-(off-n0*b))
					}
					p := make([]byte, n)
					fill(p, uint64(i))
					for _, a := range []*Raid35{onMem, onFile} {
						if _, err := a.WriteAt(p, off); err != nil {
							t.Fatal(err)
						}
					}
					got := make([]byte, n)
					if _, err := onFile.ReadAt(got, off); err != nil {
						t.Fatal(err)
					}
					if string(got) != string(p) {
						t.Fatalf("write %d (%d bytes at %d) reads back differently", i, n, off)
					}
				}
				for m := range g.Members {
					got := make([]byte, blocks*f)
					if _, err := files[m].ReadAt(got, 0); err != nil {
						t.Fatal(err)
					}
					want := mems[m].Bytes()
					for x := range want {
						if got[x] != want[x] {
							t.Fatalf("member %d differs at byte %d (block %d): file %#x, memory %#x", m, x, int64(x)/f, got[x], want[x])
						}
					}
				}
			})
		}
	})
}
