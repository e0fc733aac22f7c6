package coord

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/ddraid/ddraid/raid/meta"
)

func testSuperblock() *meta.Array {
	return &meta.Array{
		Name: "data", UUID: meta.UUID{1, 2, 3}, Level: "raid35", BlockSize: 4096,
		DataOffset: meta.HeaderSize, Size: 1 << 20, RegionSize: 64 << 10,
		Members: []meta.Member{
			{Role: 0, UUID: meta.UUID{1}, Path: "h0:10810:/d", State: meta.StateActive},
			{Role: 1, UUID: meta.UUID{2}, Path: "h1:10810:/d", State: meta.StateActive},
			{Role: 2, UUID: meta.UUID{3}, Path: "h2:10810:/d", State: meta.StateActive},
		},
		Events: 7, Created: time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC),
	}
}

func TestWindowCodec(t *testing.T) {
	w := Window{Owner: "n2", Slot: 3, Lo: 4 << 20, Hi: 8 << 20, Seq: 9}
	got, err := DecodeWindow("n2", EncodeWindow(w))
	if err != nil || got != w {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, w)
	}
	ws := []Window{w, {Owner: "n2", Slot: 1, Lo: 0, Hi: 1, Seq: 10}}
	gotList, err := DecodeWindows("n2", EncodeWindows(ws))
	if err != nil || len(gotList) != 2 || gotList[0] != ws[0] || gotList[1] != ws[1] {
		t.Fatalf("list round trip: %+v, %v", gotList, err)
	}
	bad := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", make([]byte, windowBodySize-1)},
		{"long", make([]byte, windowBodySize+1)},
		{"negative", EncodeWindow(Window{Lo: -1, Hi: 5})},
	}
	for _, tc := range bad {
		if _, err := DecodeWindow("n", tc.b); !errors.Is(err, ErrBadBody) {
			t.Errorf("%s: %v, want ErrBadBody", tc.name, err)
		}
	}
	if _, err := DecodeWindows("n", make([]byte, windowBodySize+3)); !errors.Is(err, ErrBadBody) {
		t.Errorf("ragged window list: %v, want ErrBadBody", err)
	}
}

func TestSuperblockCodec(t *testing.T) {
	sb := testSuperblock()
	b, err := EncodeSuperblock(sb)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeSuperblock(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := EncodeSuperblock(got)
	if !bytes.Equal(b, b2) {
		t.Errorf("round trip changed the superblock:\n%s\n%s", b, b2)
	}
	invalid := testSuperblock()
	invalid.Members[1].State = "confused"
	if _, err := EncodeSuperblock(invalid); err == nil {
		t.Error("an invalid superblock was encoded")
	}
	for _, b := range [][]byte{nil, []byte("{"), []byte(`{"name":"x"}`), bytes.Repeat([]byte(" "), maxSuperblock+1)} {
		if _, err := DecodeSuperblock(b); !errors.Is(err, ErrBadBody) {
			t.Errorf("decode %.20q: %v, want ErrBadBody", b, err)
		}
	}
}

func TestSpecCodec(t *testing.T) {
	for _, ok := range []string{"h1:10810:/dev/sdb", "/var/lib/x.img", "nbd://h:1/e"} {
		if got, err := DecodeSpec([]byte(ok)); err != nil || got != ok {
			t.Errorf("%q: %q, %v", ok, got, err)
		}
	}
	for _, bad := range []string{"", "a\nb", "\xff", string(bytes.Repeat([]byte("a"), maxSpec+1))} {
		if _, err := DecodeSpec([]byte(bad)); !errors.Is(err, ErrBadBody) {
			t.Errorf("%.20q: %v, want ErrBadBody", bad, err)
		}
	}
}

func FuzzDecodeWindow(f *testing.F) {
	f.Add(EncodeWindow(Window{Slot: 1, Lo: 2, Hi: 3, Seq: 4}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := DecodeWindow("n", b)
		if err != nil {
			return
		}
		if w.Lo < 0 || w.Hi < 0 || !bytes.Equal(EncodeWindow(w), b) {
			t.Fatalf("decoded %+v from %x, which does not encode back", w, b)
		}
	})
}

func FuzzDecodeWindows(f *testing.F) {
	f.Add(EncodeWindows([]Window{{Slot: 1, Lo: 2, Hi: 3}, {Slot: 2}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ws, err := DecodeWindows("n", b)
		if err == nil && !bytes.Equal(EncodeWindows(ws), b) {
			t.Fatalf("decoded %+v from %x, which does not encode back", ws, b)
		}
	})
}

func FuzzDecodeSuperblock(f *testing.F) {
	b, _ := EncodeSuperblock(testSuperblock())
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sb, err := DecodeSuperblock(b)
		if err != nil {
			return
		}
		if err := sb.Validate(); err != nil {
			t.Fatalf("decoded an invalid superblock: %v", err)
		}
		if _, err := EncodeSuperblock(sb); err != nil {
			t.Fatalf("decoded superblock does not encode: %v", err)
		}
	})
}

func FuzzDecodeSpec(f *testing.F) {
	f.Add([]byte("h:10810:/dev/sdb"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSpec(b)
		if err == nil && (s == "" || s != string(b)) {
			t.Fatalf("DecodeSpec(%q) = %q", b, s)
		}
	})
}

func TestPlanGroups(t *testing.T) {
	tests := []struct {
		regions []uint64
		per     int
		want    []group
	}{
		{nil, 4, nil},
		{[]uint64{0, 1, 3}, 4, []group{{0, []uint64{0, 1, 3}}}},
		{[]uint64{3, 4, 9}, 4, []group{{0, []uint64{3}}, {1, []uint64{4}}, {2, []uint64{9}}}},
		{[]uint64{5}, 0, []group{{5, []uint64{5}}}},
	}
	for _, tc := range tests {
		got := planGroups(tc.regions, tc.per)
		if len(got) != len(tc.want) {
			t.Errorf("planGroups(%v, %d) = %v, want %v", tc.regions, tc.per, got, tc.want)
			continue
		}
		for i := range got {
			if got[i].K != tc.want[i].K || !equalU64(got[i].Regions, tc.want[i].Regions) {
				t.Errorf("planGroups(%v, %d) = %v, want %v", tc.regions, tc.per, got, tc.want)
			}
		}
	}
	lo, hi := group{Regions: []uint64{2, 3}}.span(100, 350)
	if lo != 200 || hi != 350 {
		t.Errorf("span clipped to the size: [%d, %d), want [200, 350)", lo, hi)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
