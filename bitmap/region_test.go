package bitmap

import (
	"errors"
	"slices"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// The harness array: 17 regions of 64 KiB, the last one 5 KiB long.
const (
	rs64k    = MinRegionSize
	testSize = 1<<20 + 5<<10
)

func TestRegionMath(t *testing.T) {
	h := newHarness(t)
	b := h.b
	if b.RegionSize() != rs64k || b.NumRegions() != 17 {
		t.Fatalf("region size %d, %d regions; want %d, 17", b.RegionSize(), b.NumRegions(), rs64k)
	}
	tests := []struct {
		name        string
		off, length int64
		first, n    uint64
	}{
		{"zero length", 100, 0, 0, 0},
		{"zero length at boundary", rs64k, 0, 1, 0},
		{"first byte", 0, 1, 0, 1},
		{"last byte of region 0", rs64k - 1, 1, 0, 1},
		{"first byte of region 1", rs64k, 1, 1, 1},
		{"whole region 0", 0, rs64k, 0, 1},
		{"crossing one boundary by one byte", rs64k - 1, 2, 0, 2},
		{"aligned two regions", rs64k, 2 * rs64k, 1, 2},
		{"unaligned over three", rs64k + 1, 2 * rs64k, 1, 3},
		{"last partial region", 16 * rs64k, 5 << 10, 16, 1},
		{"into the last partial region", 16*rs64k - 512, 1024, 15, 2},
		{"whole array", 0, testSize, 0, 17},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first, n := b.RegionsOf(tc.off, tc.length)
			if n != tc.n || (n > 0 && first != tc.first) {
				t.Fatalf("RegionsOf(%d, %d) = %d+%d, want %d+%d", tc.off, tc.length, first, n, tc.first, tc.n)
			}
			if n > 0 && b.Region(tc.off) != first {
				t.Fatalf("Region(%d) = %d, want %d", tc.off, b.Region(tc.off), first)
			}
		})
	}
}

func TestRegionRange(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		r           uint64
		off, length int64
	}{
		{0, 0, rs64k},
		{1, rs64k, rs64k},
		{15, 15 * rs64k, rs64k},
		{16, 16 * rs64k, 5 << 10}, // last, partial
		{17, testSize, 0},         // beyond the array
		{1 << 60, testSize, 0},
	}
	for _, tc := range tests {
		off, length := h.b.RegionRange(tc.r)
		if off != tc.off || length != tc.length {
			t.Errorf("RegionRange(%d) = %d+%d, want %d+%d", tc.r, off, length, tc.off, tc.length)
		}
	}
	// The ranges tile the array.
	var next int64
	for r := range h.b.NumRegions() {
		off, length := h.b.RegionRange(r)
		if off != next || length <= 0 {
			t.Fatalf("region %d at %d+%d, want it at %d", r, off, length, next)
		}
		next = off + length
	}
	if next != testSize {
		t.Fatalf("regions end at %d, array at %d", next, testSize)
	}
}

func TestExactRegionSizeArray(t *testing.T) {
	h := newHarness(t, withSize(4*rs64k))
	if h.b.NumRegions() != 4 {
		t.Fatalf("%d regions, want 4", h.b.NumRegions())
	}
	if off, length := h.b.RegionRange(3); off != 3*rs64k || length != rs64k {
		t.Fatalf("last region %d+%d", off, length)
	}
}

// StartWrite marks exactly the regions a write touches, durably.
func TestStartWriteMarksTouchedRegions(t *testing.T) {
	tests := []struct {
		name        string
		off, length int64
		want        []uint64
	}{
		{"zero length", 3 * rs64k, 0, nil},
		{"inside one region", rs64k + 10, 100, regions(1)},
		{"crossing a boundary", 2*rs64k - 512, 1024, regions(1, 2)},
		{"spanning four", rs64k - 1, 2*rs64k + 2, regions(0, 1, 2, 3)},
		{"last partial region", testSize - 1, 1, regions(16)},
		{"whole array", 0, testSize, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			end, err := h.b.StartWrite(tc.off, tc.length)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.stored(); !slices.Equal(got, tc.want) {
				t.Fatalf("store holds %v during the write, want %v", got, tc.want)
			}
			if got := h.b.Dirty(); !slices.Equal(got, tc.want) {
				t.Fatalf("Dirty() = %v, want %v", got, tc.want)
			}
			wantInFlight := 1
			if tc.length == 0 {
				wantInFlight = 0
			}
			if st := h.b.Stats(); st.InFlight != wantInFlight {
				t.Fatalf("InFlight %d, want %d", st.InFlight, wantInFlight)
			}
			end()
			if st := h.b.Stats(); st.InFlight != 0 || st.Dirty != len(tc.want) || st.Marks != uint64(len(tc.want)) {
				t.Fatalf("after end: %+v", st)
			}
		})
	}
}

func TestStartWriteOutOfRange(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ off, length int64 }{
		{-1, 10}, {0, -1}, {testSize, 1}, {testSize - 1, 2}, {testSize + 1, 0}, {1 << 62, 1 << 62},
	} {
		if _, err := h.b.StartWrite(tc.off, tc.length); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("StartWrite(%d, %d) = %v, want ErrOutOfRange", tc.off, tc.length, err)
		}
	}
	if got := h.stored(); len(got) != 0 {
		t.Fatalf("out-of-range writes marked %v", got)
	}
	if st := h.b.Stats(); st.InFlight != 0 || st.MarkSyncs != 0 {
		t.Fatalf("out-of-range writes left %+v", st)
	}
}
