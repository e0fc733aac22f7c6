package raid

import (
	"fmt"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestParseLevel(t *testing.T) {
	cases := []struct {
		in   string
		want Level
		err  string
	}{
		{"raid35", LevelRaid35, ""},
		{"Mirror", LevelMirror, ""},
		{" linear ", LevelLinear, ""},
		{"raid5", "", `unknown raid level "raid5" (valid: raid35, mirror, linear)`},
		{"", "", "unknown raid level"},
	}
	for _, c := range cases {
		got, err := ParseLevel(c.in)
		if got != c.want || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("ParseLevel(%q) = %q, %v; want %q, %q", c.in, got, err, c.want, c.err)
		}
	}
}

func TestParseParity(t *testing.T) {
	cases := []struct {
		in   string
		want Parity
		err  string
	}{
		{"rotating", ParityRotating, ""},
		{"DEDICATED", ParityDedicated, ""},
		{"left-symmetric", "", `unknown parity placement "left-symmetric" (valid: rotating, dedicated)`},
	}
	for _, c := range cases {
		got, err := ParseParity(c.in)
		if got != c.want || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("ParseParity(%q) = %q, %v; want %q, %q", c.in, got, err, c.want, c.err)
		}
	}
}

func TestGeometryValidate(t *testing.T) {
	cases := []struct {
		g   Geometry
		err string
	}{
		{Geometry{Members: 2, BlockSize: 512, Parity: ParityDedicated}, ""},
		{Geometry{Members: 3, BlockSize: 1024, Parity: ParityRotating, ParityChunk: 1}, ""},
		{Geometry{Members: 5, BlockSize: 4096, Parity: ParityRotating, ParityChunk: 16}, ""},
		{Geometry{Members: 9, BlockSize: 65536, Parity: ParityDedicated}, ""},
		{Geometry{Members: 4, BlockSize: 4096, Parity: ParityDedicated}, "raid35 needs 2, 3, 5 or 9 members, got 4"},
		{Geometry{Members: 1, BlockSize: 4096, Parity: ParityDedicated}, "raid35 needs 2, 3, 5 or 9 members, got 1"},
		{Geometry{Members: 17, BlockSize: 65536, Parity: ParityDedicated}, "raid35 needs 2, 3, 5 or 9 members, got 17"},
		{Geometry{Members: 3, BlockSize: 3000, Parity: ParityDedicated}, "block size 3000 is not a power of two"},
		{Geometry{Members: 3, BlockSize: 0, Parity: ParityDedicated}, "block size 0 is not a power of two"},
		{Geometry{Members: 3, BlockSize: -4096, Parity: ParityDedicated}, "block size -4096 is not a power of two"},
		{Geometry{Members: 3, BlockSize: 1 << 17, Parity: ParityDedicated}, "block size 131072 is larger than the maximum 65536"},
		{Geometry{Members: 9, BlockSize: 2048, Parity: ParityDedicated}, "block size 2048 is too small for 9 members: fragments would be 256 bytes, need at least 512 (block size 4096 or more)"},
		{Geometry{Members: 5, BlockSize: 4096, Parity: "diagonal"}, `unknown parity placement "diagonal"`},
		{Geometry{Members: 5, BlockSize: 4096, Parity: ParityRotating}, "parity chunk 0 must be at least 1 block"},
		{Geometry{Members: 5, BlockSize: 4096, Parity: ParityRotating, ParityChunk: -2}, "parity chunk -2 must be at least 1 block"},
	}
	for _, c := range cases {
		err := c.g.Validate()
		if (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%+v.Validate() = %v, want %q", c.g, err, c.err)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v.Validate() error spans lines: %q", c.g, err)
		}
	}
}

func TestGeometryDefaults(t *testing.T) {
	g := Geometry{Members: 5}.WithDefaults()
	want := Geometry{Members: 5, BlockSize: 4096, Parity: ParityRotating, ParityChunk: 16}
	if g != want {
		t.Fatalf("WithDefaults = %+v, want %+v", g, want)
	}
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	d := Geometry{Members: 3, Parity: ParityDedicated}.WithDefaults()
	if d.ParityChunk != 0 || d.BlockSize != 4096 {
		t.Fatalf("dedicated WithDefaults = %+v", d)
	}
	kept := Geometry{Members: 9, BlockSize: 8192, Parity: ParityRotating, ParityChunk: 3}
	if kept.WithDefaults() != kept {
		t.Fatalf("WithDefaults changed set fields: %+v", kept.WithDefaults())
	}
}

func TestGeometryNumbers(t *testing.T) {
	cases := []struct {
		m, b, k, f int
		blocks     int64 // in a 1 MiB + 100 byte data area
	}{
		{2, 4096, 0, 4096, 256},
		{3, 4096, 1, 2048, 512},
		{5, 4096, 2, 1024, 1024},
		{9, 4096, 3, 512, 2048},
		{9, 65536, 3, 8192, 128},
	}
	for _, c := range cases {
		g := Geometry{Members: c.m, BlockSize: c.b}.WithDefaults()
		if g.Order() != c.k || g.FragmentSize() != c.f || g.DataFragments() != c.m-1 || g.Blocks(1<<20+100) != c.blocks {
			t.Errorf("%dx%d: order %d fragment %d blocks %d, want %d %d %d", c.m, c.b, g.Order(), g.FragmentSize(), g.Blocks(1<<20+100), c.k, c.f, c.blocks)
		}
		if g.Blocks(0) != 0 || g.Blocks(-5) != 0 || g.Blocks(int64(c.f)-1) != 0 {
			t.Errorf("%dx%d: Blocks of a too-small area is not 0", c.m, c.b)
		}
	}
}

func TestGeometryPlacement(t *testing.T) {
	rot := Geometry{Members: 5, BlockSize: 4096, Parity: ParityRotating, ParityChunk: 2}
	ded := Geometry{Members: 5, BlockSize: 4096, Parity: ParityDedicated}
	cases := []struct {
		g       Geometry
		block   int64
		parity  int
		members string // data members 0..M-2
	}{
		{rot, 0, 0, "[1 2 3 4]"},
		{rot, 1, 0, "[1 2 3 4]"},
		{rot, 2, 1, "[2 3 4 0]"},
		{rot, 9, 4, "[0 1 2 3]"},
		{rot, 10, 0, "[1 2 3 4]"},
		{ded, 0, 4, "[0 1 2 3]"},
		{ded, 12345, 4, "[0 1 2 3]"},
	}
	for _, c := range cases {
		var got []int
		for d := range c.g.Members - 1 {
			got = append(got, c.g.DataMember(c.block, d))
		}
		if p := c.g.ParityMember(c.block); p != c.parity || fmt.Sprint(got) != c.members {
			t.Errorf("%s block %d: parity %d data %v, want %d %s", geomName(c.g), c.block, p, got, c.parity, c.members)
		}
	}
}

// drawGeometry draws any valid geometry.
func drawGeometry(t *rapid.T) Geometry {
	m := rapid.SampledFrom([]int{2, 3, 5, 9}).Draw(t, "members")
	k := Geometry{Members: m}.Order()
	shift := rapid.IntRange(9+k, 16).Draw(t, "block shift")
	g := Geometry{Members: m, BlockSize: 1 << shift, Parity: rapid.SampledFrom([]Parity{ParityRotating, ParityDedicated}).Draw(t, "parity")}
	if g.Parity == ParityRotating {
		g.ParityChunk = rapid.IntRange(1, 40).Draw(t, "chunk")
	}
	if err := g.Validate(); err != nil {
		t.Fatalf("drew an invalid geometry: %v", err)
	}
	return g
}

// TestGeometryMapping checks, for random geometries and windows of blocks,
// that every logical byte maps to exactly one (member, offset) place, that
// parity sits on a member distinct from the data, and that data and parity
// together cover every member byte of the window exactly once.
func TestGeometryMapping(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		g := drawGeometry(t)
		n0 := rapid.Int64Range(0, 1<<40).Draw(t, "first block")
		nb := rapid.Int64Range(1, max(1, (256<<10)/int64(g.BlockSize))).Draw(t, "blocks")
		checkMapping(t, g, n0, nb)
	})
}

// TestGeometryMappingAll runs the mapping check once for every valid
// geometry (member count, block size, parity placement).
func TestGeometryMappingAll(t *testing.T) {
	for _, m := range []int{2, 3, 5, 9} {
		for b := 512; b <= MaxBlockSize; b *= 2 {
			for _, g := range []Geometry{
				{Members: m, BlockSize: b, Parity: ParityDedicated},
				{Members: m, BlockSize: b, Parity: ParityRotating, ParityChunk: 1},
				{Members: m, BlockSize: b, Parity: ParityRotating, ParityChunk: 16},
			} {
				if g.Validate() != nil {
					continue
				}
				// A full parity rotation, or 256 KiB of blocks if less.
				nb := min(max(int64(m*g.ParityChunk+1), 3), max(3, (256<<10)/int64(b)))
				checkMapping(t, g, 0, nb)
				checkMapping(t, g, 1<<33+7, nb)
			}
		}
	}
}

func checkMapping(t interface{ Fatalf(string, ...any) }, g Geometry, n0, nb int64) {
	b, f, m := int64(g.BlockSize), int64(g.FragmentSize()), g.Members
	// owner[member][offset-n0*F] counts the places that map there.
	owner := make([][]uint8, m)
	for i := range owner {
		owner[i] = make([]uint8, nb*f)
	}
	for n := n0; n < n0+nb; n++ {
		p := g.ParityMember(n)
		if p < 0 || p >= m {
			t.Fatalf("%s block %d: parity member %d", geomName(g), n, p)
		}
		if g.Role(n, p) != m-1 {
			t.Fatalf("%s block %d: Role of the parity member is %d", geomName(g), n, g.Role(n, p))
		}
		seen := map[int]bool{p: true}
		for d := range m - 1 {
			dm := g.DataMember(n, d)
			if seen[dm] {
				t.Fatalf("%s block %d: data fragment %d on member %d, already used", geomName(g), n, d, dm)
			}
			seen[dm] = true
			if g.Role(n, dm) != d {
				t.Fatalf("%s block %d: Role(member %d) = %d, want %d", geomName(g), n, dm, g.Role(n, dm), d)
			}
		}
		for x := range f { // parity bytes
			owner[p][(n-n0)*f+x]++
		}
		for in := range b { // data bytes
			mem, off := g.Locate(n*b + in)
			if off < n*f || off >= (n+1)*f {
				t.Fatalf("%s byte %d of block %d: member offset %d outside the block's fragment", geomName(g), in, n, off)
			}
			if mem != g.DataMember(n, int(in/f)) || off != n*f+in%f {
				t.Fatalf("%s byte %d of block %d: Locate = (%d, %d)", geomName(g), in, n, mem, off)
			}
			owner[mem][off-n0*f]++
		}
	}
	for i := range owner {
		for x, c := range owner[i] {
			if c != 1 {
				t.Fatalf("%s: member %d offset %d has %d owners, want 1", geomName(g), i, n0*f+int64(x), c)
			}
		}
	}
}
