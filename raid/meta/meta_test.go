package meta

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

func sampleHeader() Header {
	return Header{Role: 3, ArrayUUID: NewUUID(), MemberUUID: NewUUID(), Members: 5, BlockSize: 4096,
		DataOffset: DataOffset, DataSize: 1 << 30, Events: 7, Level: "raid35", ArrayName: "data"}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := sampleHeader()
	dev := blockdev.NewMem(2*HeaderSize, 512)
	if err := WriteHeader(dev, &h); err != nil {
		t.Fatal(err)
	}
	got, err := ReadHeader(dev)
	if err != nil {
		t.Fatal(err)
	}
	h.Version = HeaderVersion
	if got != h {
		t.Fatalf("round trip: got %+v, want %+v", got, h)
	}
}

func TestHeaderErrors(t *testing.T) {
	good, err := (&Header{Level: "raid35", ArrayName: "x"}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"zeroes", make([]byte, HeaderSize), ErrNoHeader},
		{"short", good[:100], ErrNoHeader},
		{"flipped bit", mod(func(b []byte) { b[50] ^= 1 }), ErrCorrupt},
		{"bad checksum", mod(func(b []byte) { b[HeaderSize-1] ^= 0xff }), ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ParseHeader(c.b); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if _, err := (&Header{ArrayName: strings.Repeat("n", 65)}).Marshal(); err == nil {
		t.Error("long name accepted")
	}
	if _, err := ReadHeader(blockdev.NewMem(512, 512)); !errors.Is(err, ErrNoHeader) {
		t.Errorf("tiny device: %v", err)
	}
}

func FuzzParseHeader(f *testing.F) {
	h := sampleHeader()
	b, _ := h.Marshal()
	f.Add(b)
	f.Add(make([]byte, HeaderSize))
	f.Add([]byte("DDRAIDMB"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		// A header that parses must marshal back to the same block.
		out, err := h.Marshal()
		if err != nil {
			t.Fatalf("parsed header does not marshal: %v", err)
		}
		if h2, err := ParseHeader(out); err != nil || h2 != h {
			t.Fatalf("re-parse: %v %+v %+v", err, h2, h)
		}
	})
}

func TestUUID(t *testing.T) {
	u := NewUUID()
	v, err := ParseUUID(u.String())
	if err != nil || v != u {
		t.Fatalf("round trip %s: %v %s", u, err, v)
	}
	for _, s := range []string{"", "zz", strings.Repeat("g", 36), "0123456789abcdef0123456789abcdef0123"} {
		if _, err := ParseUUID(s); err == nil {
			t.Errorf("ParseUUID(%q) accepted", s)
		}
	}
}

func sampleArray(name string) *Array {
	return &Array{Name: name, UUID: NewUUID(), Level: "raid35", BlockSize: 4096, DataOffset: DataOffset, Size: 1 << 30,
		Members: []Member{{Role: 0, UUID: NewUUID(), Path: "/m0", State: StateActive}, {Role: 1, UUID: NewUUID(), Path: "/m1", State: StateMissing}},
		Created: time.Unix(1700000000, 0).UTC()}
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"b", "a"} {
		if err := s.Put(sampleArray(n)); err != nil {
			t.Fatal(err)
		}
	}
	names, err := s.List()
	if err != nil || strings.Join(names, ",") != "a,b" {
		t.Fatalf("List = %v, %v", names, err)
	}
	if _, err := s.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing: %v", err)
	}
	if err := s.Put(&Array{Name: "bad name!"}); err == nil {
		t.Fatal("invalid array stored")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopen: data persisted.
	s, err = Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Get("a")
	if err != nil || a.Members[1].State != StateMissing || a.Size != 1<<30 {
		t.Fatalf("Get a = %+v, %v", a, err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestStoreCorruptRecords(t *testing.T) {
	s, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	good := sampleArray("x")
	if err := s.Put(good); err != nil {
		t.Fatal(err)
	}
	v, closer, err := s.db.Get(key("x"))
	if err != nil {
		t.Fatal(err)
	}
	raw := append([]byte(nil), v...)
	closer.Close()
	cases := map[string][]byte{
		"empty":         {},
		"bit flip":      append(append([]byte(nil), raw[:20]...), append([]byte{raw[20] ^ 1}, raw[21:]...)...),
		"not json":      withCRC([]byte("{not json")),
		"invalid":       withCRC([]byte(`{"name":"x","members":[]}`)),
		"name mismatch": withCRC([]byte(strings.Replace(string(raw[4:]), `"name":"x"`, `"name":"y"`, 1))),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if err := s.PutRaw("x", b); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get("x"); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
		})
	}
}

func withCRC(js []byte) []byte {
	v := make([]byte, 4+len(js))
	binary.LittleEndian.PutUint32(v, crc32Checksum(js))
	copy(v[4:], js)
	return v
}

func TestStoreLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	released := make(chan error, 1)
	go func() { time.Sleep(30 * time.Millisecond); released <- s.Close() }()
	s2, err := Open(dir, 5*time.Second)
	if err != nil {
		t.Fatalf("open after release: %v", err)
	}
	s2.Close()
	if err := <-released; err != nil {
		t.Fatal(err)
	}
}

func TestValidateName(t *testing.T) {
	for _, n := range []string{"data", "a", "a.b-c_d", strings.Repeat("x", 64)} {
		if err := ValidateName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range []string{"", "-a", "a/b", "a b", strings.Repeat("x", 65), "..", "ä"} {
		if err := ValidateName(n); err == nil {
			t.Errorf("%q accepted", n)
		}
	}
}

func TestMemberFail(t *testing.T) {
	for _, c := range []struct {
		from         Member
		wantUnsynced bool
	}{
		{Member{State: StateActive}, false},
		{Member{State: StateRecovering}, true},
		{Member{State: StateRecovering, DirtyOnly: true}, true},
		{Member{State: StateFailed}, false},
		{Member{State: StateFailed, Unsynced: true}, true},
		{Member{State: StateMissing, Unsynced: true}, true},
	} {
		m := c.from
		m.Fail()
		if m.State != StateFailed || m.Unsynced != c.wantUnsynced {
			t.Errorf("%+v failed: %s, unsynced %v; want failed, %v", c.from, m.State, m.Unsynced, c.wantUnsynced)
		}
	}
}
