package raid

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// sectorMapDev is a memory device whose Extents report every all-zero
// 512-byte sector as a hole that reads as zeroes, like a sparse file with
// 512-byte allocation units; it zeroes fast.
type sectorMapDev struct{ *blockdev.Mem }

func (d sectorMapDev) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(off, length, d.Size()); err != nil {
		return dst, err
	}
	// Like a file system, judge whole sectors even where the query cuts
	// one.
	from, to := off/512*512, min(d.Size(), (off+length+511)/512*512)
	buf := make([]byte, to-from)
	if _, err := d.ReadAt(buf, from); err != nil {
		return dst, err
	}
	for pos := off; pos < off+length; {
		s := pos / 512 * 512
		next := min(off+length, s+512)
		sector := buf[s-from : min(to, s+512)-from]
		var f blockdev.ExtentFlags
		if bytes.Count(sector, []byte{0}) == len(sector) {
			f = blockdev.ExtentHole | blockdev.ExtentZero
		}
		dst = blockdev.AppendExtent(dst, blockdev.Extent{Length: next - pos, Flags: f})
		pos = next
	}
	return dst, nil
}

func (d sectorMapDev) CanFastZero() bool { return true }

// plainDev hides the optional interfaces of the device it wraps.
type plainDev struct{ blockdev.Device }

func sectorMapDevs(n int, size int64) []blockdev.Device {
	devs := make([]blockdev.Device, n)
	for i := range devs {
		devs[i] = sectorMapDev{blockdev.NewMem(size, 512)}
	}
	return devs
}

// modelExtents is what an array over sectorMapDevs must report: a granule
// of gran bytes (clipped to the query) is a hole reading as zeroes exactly
// when all its logical bytes are zero (a Raid 3.5 block of zeroes has zero
// parity, and a zero mirror sector is zero on every copy).
func modelExtents(t *testing.T, dev blockdev.Device, off, length, gran int64) []blockdev.Extent {
	t.Helper()
	buf := make([]byte, length)
	if _, err := dev.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	// Granules that stick out of the query need their outside bytes too.
	from, to := off/gran*gran, min(dev.Size(), (off+length+gran-1)/gran*gran)
	full := make([]byte, to-from)
	if _, err := dev.ReadAt(full, from); err != nil {
		t.Fatal(err)
	}
	var out []blockdev.Extent
	for pos := off; pos < off+length; {
		g := pos / gran * gran
		next := min(off+length, g+gran)
		var f blockdev.ExtentFlags
		if bytes.Count(full[g-from:min(to, g+gran)-from], []byte{0}) == int(min(to, g+gran)-g) {
			f = blockdev.ExtentHole | blockdev.ExtentZero
		}
		out = blockdev.AppendExtent(out, blockdev.Extent{Length: next - pos, Flags: f})
		pos = next
	}
	return out
}

// checkExtentsModel writes and zeroes at random, then compares random
// Extents queries with modelExtents.
func checkExtentsModel(t *testing.T, dev blockdev.Device, gran int64, seed uint64) {
	t.Helper()
	x := dev.(blockdev.Extenter)
	rng := rand.New(rand.NewPCG(seed, 7))
	size := dev.Size()
	for i := 0; i < 60; i++ {
		off := rng.Int64N(size - 1)
		n := min(size-off, rng.Int64N(3*gran)+1)
		switch rng.IntN(3) {
		case 0:
			p := make([]byte, n)
			fill(p, uint64(i))
			if _, err := dev.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
		case 1:
			if err := dev.Zero(off, n); err != nil {
				t.Fatal(err)
			}
		}
		qoff := rng.Int64N(size)
		qlen := rng.Int64N(size-qoff) + 1
		if rng.IntN(2) == 0 {
			qlen = min(qlen, 4*gran)
		}
		got, err := x.Extents(nil, qoff, qlen)
		if err != nil {
			t.Fatal(err)
		}
		if want := modelExtents(t, dev, qoff, qlen, gran); !slices.Equal(got, want) {
			t.Fatalf("step %d: Extents(%d, %d)\n got %v\nwant %v", i, qoff, qlen, got, want)
		}
	}
}

func TestRaid35Extents(t *testing.T) {
	for _, g := range testGeometries() {
		t.Run(fmt.Sprintf("%dx%d-%s%d", g.Members, g.BlockSize, g.Parity, g.ParityChunk), func(t *testing.T) {
			g = g.WithDefaults()
			const blocks = 64
			f := int64(g.FragmentSize())
			r, err := NewRaid35(g, sectorMapDevs(g.Members, blocks*f), blocks*f, Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			es, err := r.Extents(nil, 0, r.Size())
			hz := blockdev.ExtentHole | blockdev.ExtentZero
			if err != nil || !slices.Equal(es, []blockdev.Extent{{Length: r.Size(), Flags: hz}}) {
				t.Fatalf("fresh array: %v, %v", es, err)
			}
			checkExtentsModel(t, r, int64(g.BlockSize), 1)
			if !r.CanFastZero() {
				t.Error("CanFastZero false over fast-zeroing members")
			}
			if _, err := r.Extents(nil, r.Size()-1, 2); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Errorf("out of range: %v", err)
			}
			// Degraded: unknown everywhere.
			r.Fail(1, errors.New("test"))
			es, err = r.Extents(nil, 100, 5000)
			if err != nil || !slices.Equal(es, []blockdev.Extent{{Length: 5000}}) {
				t.Fatalf("degraded: %v, %v", es, err)
			}
		})
	}
}

func TestMirrorExtents(t *testing.T) {
	m, err := NewMirror(sectorMapDevs(3, 256<<10), 256<<10, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	checkExtentsModel(t, m, 512, 2)
	if !m.CanFastZero() {
		t.Error("CanFastZero false over fast-zeroing members")
	}
	m.Fail(0, errors.New("test"))
	if es, err := m.Extents(nil, 0, 4096); err != nil || !slices.Equal(es, []blockdev.Extent{{Length: 4096}}) {
		t.Fatalf("degraded: %v, %v", es, err)
	}
}

func TestLinearExtents(t *testing.T) {
	devs := sectorMapDevs(3, 0)
	for i, size := range []int64{64 << 10, 4096, 100 << 10} {
		devs[i] = sectorMapDev{blockdev.NewMem(size, 512)}
	}
	l, err := NewLinear(devs, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkExtentsModel(t, l, 512, 3)
	if !l.CanFastZero() {
		t.Error("CanFastZero false over fast-zeroing members")
	}

	// A member without extents reports flags 0 for its part.
	mixed, err := NewLinear([]blockdev.Device{sectorMapDev{blockdev.NewMem(8192, 512)}, plainDev{blockdev.NewMem(8192, 512)}}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer mixed.Close()
	es, err := mixed.Extents(nil, 4096, 8192)
	want := []blockdev.Extent{{Length: 4096, Flags: blockdev.ExtentHole | blockdev.ExtentZero}, {Length: 4096}}
	if err != nil || !slices.Equal(es, want) {
		t.Fatalf("mixed: %v, %v, want %v", es, err, want)
	}
	if mixed.CanFastZero() {
		t.Error("CanFastZero true with a member that cannot")
	}
}

func TestLinearZeroNoHole(t *testing.T) {
	a, b := blockdev.NewMem(8192, 512), blockdev.NewMem(8192, 512)
	fill(a.Bytes(), 1)
	fill(b.Bytes(), 2)
	l, err := NewLinear([]blockdev.Device{a, b}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.ZeroNoHole(4096, 8192); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes()[4096:], make([]byte, 4096)) || !bytes.Equal(b.Bytes()[:4096], make([]byte, 4096)) {
		t.Fatal("range not zeroed")
	}

	c := blockdev.NewMem(8192, 512)
	fill(c.Bytes(), 3)
	before := bytes.Clone(c.Bytes())
	l2, err := NewLinear([]blockdev.Device{blockdev.NewMem(8192, 512), plainDev{c}}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := l2.ZeroNoHole(0, 16384); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("ZeroNoHole over a plain member: %v", err)
	}
	if !bytes.Equal(c.Bytes(), before) {
		t.Fatal("a refused ZeroNoHole changed data")
	}
}

func TestCanFastZeroMembers(t *testing.T) {
	devs := sectorMapDevs(3, 64<<10)
	devs[2] = plainDev{devs[2]}
	r, err := NewRaid35(Geometry{Members: 3}, devs, 64<<10, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.CanFastZero() {
		t.Error("raid35 claims fast zero with a plain member")
	}
	// Once the plain member is lost, the live ones decide.
	r.Fail(2, errors.New("test"))
	if !r.CanFastZero() {
		t.Error("raid35 refuses fast zero when every live member can")
	}
	r.Fail(0, errors.New("test"))
	if r.CanFastZero() {
		t.Error("failed raid35 claims fast zero")
	}
}

// TestRaid35ExtentsOnFiles runs the real stack: sparse member files under
// sections, as Assemble builds it.
func TestRaid35ExtentsOnFiles(t *testing.T) {
	dir := t.TempDir()
	const memberSize = 4 << 20
	devs := make([]blockdev.Device, 5)
	for i := range devs {
		f, err := blockdev.OpenFile(filepath.Join(dir, "m"+string(rune('0'+i))), blockdev.FileOptions{Create: true, CreateSize: memberSize + 1<<20})
		if err != nil {
			t.Fatal(err)
		}
		sec, err := blockdev.NewSection(f, 1<<20, memberSize)
		if err != nil {
			t.Fatal(err)
		}
		devs[i] = &closingSection{sec, f}
	}
	r, err := NewRaid35(Geometry{Members: 5}, devs, memberSize, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// One block far in: 1 KiB fragments, so a 4 KiB file block covers
	// four logical blocks.
	p := make([]byte, 4096)
	fill(p, 9)
	if _, err := r.WriteAt(p, 1000*4096); err != nil {
		t.Fatal(err)
	}
	es, err := r.Extents(nil, 0, r.Size())
	if err != nil {
		t.Fatal(err)
	}
	hz := blockdev.ExtentHole | blockdev.ExtentZero
	want := []blockdev.Extent{{Length: 1000 * 4096, Flags: hz}, {Length: 4 * 4096}, {Length: r.Size() - 1004*4096, Flags: hz}}
	if !slices.Equal(es, want) {
		t.Fatalf("got %v, want %v", es, want)
	}
	if !r.CanFastZero() {
		t.Error("raid35 on sparse files cannot fast zero")
	}
	if err := r.Zero(1000*4096, 4*4096); err != nil {
		t.Fatal(err)
	}
	if es, _ := r.Extents(nil, 0, r.Size()); !slices.Equal(es, []blockdev.Extent{{Length: r.Size(), Flags: hz}}) {
		t.Fatalf("after Zero: %v", es)
	}
}

// closingSection is a member data area that closes its file.
type closingSection struct {
	*blockdev.Section
	f *blockdev.File
}

func (c *closingSection) Close() error { return c.f.Close() }
