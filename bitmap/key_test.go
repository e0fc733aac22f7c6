package bitmap

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestDirtyKeyRoundTrip(t *testing.T) {
	tests := []struct {
		array  string
		slot   int
		region uint64
	}{
		{"a", 0, 0},
		{"data", 3, 17},
		{"x.y_z-1", MaxSlot, 1<<64 - 1},
		// Binary parts that contain '/' bytes must not confuse the decoder.
		{"slash", '/', '/'<<8 | '/'},
		{strings.Repeat("n", MaxArrayNameLen), 1 << 20, 1 << 40},
	}
	for _, tc := range tests {
		k := appendDirtyKey(nil, tc.array, tc.slot, tc.region)
		if !bytes.HasPrefix(k, slotPrefix(tc.array, tc.slot)) || !bytes.HasPrefix(k, arrayPrefix(tc.array)) {
			t.Errorf("%q: key lacks its prefixes", k)
		}
		d, err := decodeKey(k)
		if err != nil {
			t.Fatalf("decode %q: %v", k, err)
		}
		want := decodedKey{Kind: kindDirty, Array: tc.array, Slot: tc.slot, Region: tc.region}
		if d != want {
			t.Errorf("decode %q = %+v, want %+v", k, d, want)
		}
		if err := checkValue(d, nil); err != nil {
			t.Errorf("empty value of %q: %v", k, err)
		}
		if err := checkValue(d, []byte{1}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("non-empty value of %q: %v, want ErrCorrupt", k, err)
		}
	}
}

// Keys of one slot sort by region, so Dirty returns sorted regions.
func TestDirtyKeysSortByRegion(t *testing.T) {
	prev := appendDirtyKey(nil, "a", 1, 0)
	for _, r := range []uint64{1, 255, 256, 1 << 32, 1<<64 - 1} {
		k := appendDirtyKey(nil, "a", 1, r)
		if bytes.Compare(prev, k) >= 0 {
			t.Fatalf("key of region %d does not sort after the previous one", r)
		}
		prev = k
	}
}

func TestDecodeKeyRejects(t *testing.T) {
	valid := appendDirtyKey(nil, "arr", 2, 9)
	tests := []struct {
		name string
		key  []byte
	}{
		{"empty", nil},
		{"unknown prefix", []byte("x/arr")},
		{"bare dirty prefix", []byte("d/")},
		{"dirty too short", valid[:len(valid)-1]},
		{"dirty without name", valid[len("d/arr"):]},
		{"dirty missing separator", bytes.Replace(bytes.Clone(valid), []byte("arr/"), []byte("arrx"), 1)},
		{"dirty name with slash", appendDirtyKey(nil, "a/b", 0, 0)},
		{"dirty name with NUL", appendDirtyKey(nil, "a\x00", 0, 0)},
		{"bare geometry prefix", []byte("g/")},
		{"geometry name with slash", []byte("g/a/b")},
		{"format with suffix", []byte("fx")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d, err := decodeKey(tc.key); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeKey(%q) = %+v, %v; want ErrCorrupt", tc.key, d, err)
			}
		})
	}
}

func TestCheckValue(t *testing.T) {
	geo := decodedKey{Kind: kindGeometry, Array: "a"}
	be := func(v uint64) []byte {
		return []byte{byte(v >> 56), byte(v >> 48), byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
	}
	tests := []struct {
		name string
		d    decodedKey
		v    []byte
		ok   bool
	}{
		{"format", decodedKey{Kind: kindFormat}, []byte(formatValue), true},
		{"format other version", decodedKey{Kind: kindFormat}, []byte("ddraid-bitmap/2"), false},
		{"geometry 4 MiB", geo, be(4 << 20), true},
		{"geometry 64 KiB", geo, be(MinRegionSize), true},
		{"geometry not a power of two", geo, be(3 << 20), false},
		{"geometry too small", geo, be(4096), false},
		{"geometry short", geo, []byte{1, 2}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkValue(tc.d, tc.v)
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("checkValue = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestCheckNames(t *testing.T) {
	for _, bad := range []string{"", "a/b", "a\x00", strings.Repeat("n", MaxArrayNameLen+1)} {
		if checkArray(bad) == nil {
			t.Errorf("checkArray(%q) accepted", bad)
		}
	}
	for _, bad := range []int{-1, MaxSlot + 1} {
		if checkSlot(bad) == nil {
			t.Errorf("checkSlot(%d) accepted", bad)
		}
	}
}

// FuzzDecodeKey: the decoder never panics, and whatever it accepts encodes
// back to the same bytes.
func FuzzDecodeKey(f *testing.F) {
	f.Add([]byte(formatKey))
	f.Add(appendDirtyKey(nil, "arr", 1, 2))
	f.Add(appendDirtyKey(nil, "a", '/', '/'))
	f.Add(geometryKey("arr"))
	f.Add([]byte("d//\x00\x00\x00\x00/\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, k []byte) {
		d, err := decodeKey(k)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			return
		}
		var back []byte
		switch d.Kind {
		case kindFormat:
			back = []byte(formatKey)
		case kindDirty:
			back = appendDirtyKey(nil, d.Array, d.Slot, d.Region)
		case kindGeometry:
			back = geometryKey(d.Array)
		default:
			t.Fatalf("unknown kind %d", d.Kind)
		}
		if !bytes.Equal(back, k) {
			t.Fatalf("decode %q gives %+v, which encodes to %q", k, d, back)
		}
	})
}
