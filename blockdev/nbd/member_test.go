package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

func TestParseWriter(t *testing.T) {
	good := Writer{Array: [16]byte{1, 2, 3}, Slot: 7, Epoch: 42, RegionSize: 256 << 10, DataOffset: 1 << 20}
	cases := []struct {
		name    string
		payload []byte
		export  string
		want    Writer
		err     string
	}{
		{"round trip", marshalWriter("/dev/sdb", good), "/dev/sdb", good, ""},
		{"no marks", marshalWriter("d", Writer{Epoch: 1}), "d", Writer{Epoch: 1}, ""},
		{"empty", nil, "", Writer{}, "malformed export name"},
		{"name past the end", []byte{0, 0, 0, 9, 'a'}, "", Writer{}, "malformed export name"},
		{"short identity", marshalWriter("d", good)[:20], "", Writer{}, "identity is"},
		{"trailing bytes", append(marshalWriter("d", good), 0), "", Writer{}, "identity is"},
		{"region not a power of two", marshalWriter("d", Writer{RegionSize: 100 << 10}), "", Writer{}, "region size"},
		{"region too small", marshalWriter("d", Writer{RegionSize: 4096}), "", Writer{}, "region size"},
		{"region too large for one CLEAR", marshalWriter("d", Writer{RegionSize: 2 << 30}), "", Writer{}, "region size"},
		{"largest region", marshalWriter("d", Writer{RegionSize: 1 << 30}), "d", Writer{RegionSize: 1 << 30}, ""},
		{"data offset out of range", marshalWriter("d", Writer{DataOffset: 1 << 63}), "", Writer{}, "data offset"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name, w, err := parseWriter(c.payload)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("parseWriter = %v, want an error with %q", err, c.err)
				}
				return
			}
			if err != nil || name != c.export || w != c.want {
				t.Fatalf("parseWriter = %q %+v %v, want %q %+v", name, w, err, c.export, c.want)
			}
		})
	}
}

func TestParseDirtyContext(t *testing.T) {
	cases := []struct {
		name string
		slot uint32
		ok   bool
	}{
		{"ddraid:dirty/0", 0, true},
		{"ddraid:dirty/17", 17, true},
		{"ddraid:dirty/4294967295", 1<<32 - 1, true},
		{"ddraid:dirty/4294967296", 0, false},
		{"ddraid:dirty/", 0, false},
		{"ddraid:dirty/01", 0, false},
		{"ddraid:dirty/-1", 0, false},
		{"ddraid:dirty/1x", 0, false},
		{"ddraid:dirty", 0, false},
		{"base:allocation", 0, false},
	}
	for _, c := range cases {
		slot, ok := parseDirtyContext(c.name)
		if ok != c.ok || slot != c.slot {
			t.Errorf("parseDirtyContext(%q) = %d %v, want %d %v", c.name, slot, ok, c.slot, c.ok)
		}
	}
}

// maxRecorded bounds what a fakeMember records, so that fuzzing, which
// shares one for its whole run, does not grow without bound.
const maxRecorded = 1024

// fakeMember records what the server asks of a member export.
type fakeMember struct {
	dev *blockdev.Mem

	mu       sync.Mutex
	admitted []Writer
	admitErr error
	writeErr error
	clearErr error
	starts   []string // "off+len", with the device's first byte at that offset when the mark was asked for
	ends     int
	clears   []string
	closed   int
	dirty    []blockdev.Extent
}

func (f *fakeMember) Admit(w Writer) (Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.admitErr != nil {
		return nil, f.admitErr
	}
	if len(f.admitted) < maxRecorded {
		f.admitted = append(f.admitted, w)
	}
	return &fakeSession{f: f}, nil
}

func (f *fakeMember) Dirty(slot uint32, off, length int64, dst []blockdev.Extent) ([]blockdev.Extent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slot != 3 {
		return append(dst, blockdev.Extent{Length: length}), nil
	}
	return append(dst, f.dirty...), nil
}

type fakeSession struct{ f *fakeMember }

func (s *fakeSession) StartWrite(off, length int64) (func(), error) {
	f := s.f
	var b [1]byte
	f.dev.ReadAt(b[:], off)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.writeErr != nil {
		return nil, f.writeErr
	}
	if len(f.starts) < maxRecorded {
		f.starts = append(f.starts, fmt.Sprintf("%d+%d:%d", off, length, b[0]))
	}
	return func() { f.mu.Lock(); f.ends++; f.mu.Unlock() }, nil
}

func (s *fakeSession) Clear(off, length int64) error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.f.clearErr != nil {
		return s.f.clearErr
	}
	if len(s.f.clears) < maxRecorded {
		s.f.clears = append(s.f.clears, fmt.Sprintf("%d+%d", off, length))
	}
	return nil
}

func (s *fakeSession) Close() {
	s.f.mu.Lock()
	s.f.closed++
	s.f.mu.Unlock()
}

func (f *fakeMember) snapshot() fakeMember {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeMember{admitted: append([]Writer(nil), f.admitted...), starts: append([]string(nil), f.starts...),
		ends: f.ends, clears: append([]string(nil), f.clears...), closed: f.closed}
}

func memberServer(t *testing.T, opts ...serverOpt) (*testServer, *fakeMember) {
	t.Helper()
	f := &fakeMember{dev: blockdev.NewMem(1<<20, 512)}
	plain, _ := memExport("plain", 1<<20, 512)
	ts := startServer(t, false, []Export{{Name: "/dev/m", Device: f.dev, Member: f}, plain}, opts...)
	return ts, f
}

func dialWith(t *testing.T, addr string, o ClientOptions) (*Client, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := NewClientWith(ctx, nc, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

func TestMemberExportWriter(t *testing.T) {
	ts, f := memberServer(t)
	w := Writer{Array: [16]byte{9}, Slot: 1, Epoch: 5, RegionSize: 64 << 10, DataOffset: 4096}
	c, err := dialWith(t, ts.addr, ClientOptions{Export: "/dev/m", Writer: &w})
	if err != nil {
		t.Fatalf("writer handshake: %v", err)
	}
	if _, err := c.WriteAt(bytes.Repeat([]byte{0xab}, 8192), 65536); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.Zero(0, 4096); err != nil {
		t.Fatalf("zero: %v", err)
	}
	if err := c.Trim(8192, 4096); err != nil {
		t.Fatalf("trim: %v", err)
	}
	if err := c.Clear(4096, 1<<19); err != nil {
		t.Fatalf("clear: %v", err)
	}
	c.Close()
	snap := f.snapshot()
	if len(snap.admitted) != 1 || snap.admitted[0] != w {
		t.Fatalf("admitted %+v, want %+v", snap.admitted, w)
	}
	// The mark is asked for before the write reaches the device (its
	// first byte is still 0 then), for every write-type command.
	want := []string{"65536+8192:0", "0+4096:0", "8192+4096:0"}
	if fmt.Sprint(snap.starts) != fmt.Sprint(want) || snap.ends != 3 {
		t.Fatalf("marks %v (ended %d), want %v", snap.starts, snap.ends, want)
	}
	if fmt.Sprint(snap.clears) != "[4096+524288]" {
		t.Fatalf("clears %v", snap.clears)
	}
	waitFor(t, "session closed", func() bool { return f.snapshot().closed == 1 })
}

func TestMemberExportRefusals(t *testing.T) {
	ts, f := memberServer(t)
	w := &Writer{Array: [16]byte{9}, Epoch: 1}

	// Without identity: reads work, writes are refused with EPERM.
	c, err := dialWith(t, ts.addr, ClientOptions{Export: "/dev/m"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("read without identity: %v", err)
	}
	if _, err := c.WriteAt(make([]byte, 512), 0); !errors.Is(err, EPERM) || errors.Is(err, ErrFenced) {
		t.Fatalf("write without identity = %v, want EPERM (not fenced)", err)
	}
	if err := c.Clear(0, 512); err == nil {
		t.Fatal("Clear without identity succeeded")
	}
	if err := c.do(Request{Type: CmdClear, Length: 512}, nil); err != EINVAL {
		t.Fatalf("raw CLEAR without identity = %v, want EINVAL", err)
	}

	// A plain export does not take identity.
	if _, err := dialWith(t, ts.addr, ClientOptions{Export: "plain", Writer: w}); err == nil || !strings.Contains(err.Error(), "ddraid agent") {
		t.Fatalf("writer identity on a plain export: %v", err)
	}
	// An unknown export.
	if _, err := dialWith(t, ts.addr, ClientOptions{Export: "nope", Writer: w}); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("writer identity on an unknown export: %v", err)
	}

	// Fenced at the handshake.
	f.mu.Lock()
	f.admitErr = fmt.Errorf("%w: slot 0 needs epoch 2", ErrFenced)
	f.mu.Unlock()
	_, err = dialWith(t, ts.addr, ClientOptions{Export: "/dev/m", Writer: w})
	if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "needs epoch 2") {
		t.Fatalf("fenced handshake: %v", err)
	}

	// Fenced once connected: every write-type command.
	f.mu.Lock()
	f.admitErr = nil
	f.mu.Unlock()
	c, err = dialWith(t, ts.addr, ClientOptions{Export: "/dev/m", Writer: w})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.writeErr = fmt.Errorf("%w: stale", ErrFenced)
	f.mu.Unlock()
	if _, err := c.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrFenced) || !errors.Is(err, EPERM) {
		t.Fatalf("fenced write = %v", err)
	}
	if err := c.Zero(0, 512); !errors.Is(err, ErrFenced) {
		t.Fatalf("fenced zero = %v", err)
	}
	f.mu.Lock()
	f.clearErr = fmt.Errorf("%w: stale", ErrFenced)
	f.mu.Unlock()
	if err := c.Clear(0, 512); !errors.Is(err, ErrFenced) {
		t.Fatalf("fenced clear = %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("read by a fenced writer: %v", err)
	}
	// Any other failure to mark is EIO, not fenced.
	f.mu.Lock()
	f.writeErr = errors.New("store broken")
	f.mu.Unlock()
	if _, err := c.WriteAt(make([]byte, 512), 0); !errors.Is(err, EIO) || errors.Is(err, ErrFenced) {
		t.Fatalf("write with a failing mark = %v, want EIO", err)
	}
	if snapshot(f.dev)[0] != 0 {
		t.Fatal("a refused write reached the device")
	}
}

// waitFor polls cond until it holds (testTimeout at most).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMemberDirtyContext(t *testing.T) {
	ts, f := memberServer(t)
	f.dirty = []blockdev.Extent{{Length: 65536}, {Length: 131072, Flags: StateDirty}, {Length: 1<<20 - 196608}}

	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)
	r.sendOpt(optStructuredReply, nil)
	r.expectReply(optStructuredReply, repAck)
	// LIST names the dirty context asked for; a plain export has none.
	r.sendOpt(optListMetaContext, metaData("/dev/m", "ddraid:dirty/3", "ddraid:bogus"))
	rep := r.expectReply(optListMetaContext, repMetaContext)
	if string(rep.data[4:]) != "ddraid:dirty/3" {
		t.Fatalf("LIST_META_CONTEXT reply %q", rep.data)
	}
	r.expectReply(optListMetaContext, repAck)
	r.sendOpt(optListMetaContext, metaData("plain", "ddraid:dirty/3"))
	r.expectReply(optListMetaContext, repAck)
	// Two dirty contexts at once are refused.
	r.sendOpt(optSetMetaContext, metaData("/dev/m", "ddraid:dirty/3", "ddraid:dirty/4"))
	r.expectReply(optSetMetaContext, repErrInvalid)
	// base:allocation and ddraid:dirty/3 together.
	r.sendOpt(optSetMetaContext, metaData("/dev/m", metaBaseAllocation, "ddraid:dirty/3"))
	rep = r.expectReply(optSetMetaContext, repMetaContext)
	if binary.BigEndian.Uint32(rep.data) != metaIDBaseAllocation {
		t.Fatalf("first context %x", rep.data)
	}
	rep = r.expectReply(optSetMetaContext, repMetaContext)
	if binary.BigEndian.Uint32(rep.data) != metaIDDirty || string(rep.data[4:]) != "ddraid:dirty/3" {
		t.Fatalf("second context %x", rep.data)
	}
	r.expectReply(optSetMetaContext, repAck)
	r.sendOpt(optGo, goData("/dev/m"))
	if _, final := r.infoReplies(optGo); final.typ != repAck {
		t.Fatalf("GO: %#x", final.typ)
	}
	r.request(Request{Type: CmdBlockStatus, Cookie: 1, Length: 1 << 20}, nil)
	cs := r.readChunks()
	if len(cs) != 2 {
		t.Fatalf("%d chunks, want one per context", len(cs))
	}
	if id := binary.BigEndian.Uint32(cs[0].payload); id != metaIDBaseAllocation || cs[0].flags&replyFlagDone != 0 {
		t.Fatalf("first chunk: context %d flags %d", id, cs[0].flags)
	}
	c := cs[1]
	if id := binary.BigEndian.Uint32(c.payload); id != metaIDDirty || c.flags&replyFlagDone == 0 {
		t.Fatalf("second chunk: context %d flags %d", id, c.flags)
	}
	var got []blockdev.Extent
	for p := c.payload[4:]; len(p) > 0; p = p[8:] {
		got = append(got, blockdev.Extent{Length: int64(binary.BigEndian.Uint32(p)), Flags: blockdev.ExtentFlags(binary.BigEndian.Uint32(p[4:]))})
	}
	if fmt.Sprint(got) != fmt.Sprint(f.dirty) {
		t.Fatalf("dirty extents %v, want %v", got, f.dirty)
	}
}

func TestClientStartTLS(t *testing.T) {
	pki := newTestPKI(t)
	srvTLS, err := LoadTLSConfig(pki.ServerCert, pki.ServerKey, pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	ts, f := memberServer(t, withTLS(TLSRequired, srvTLS))
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(pki.CA)
	pool.AppendCertsFromPEM(caPEM)
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(pki.ClientDir, "client-cert.pem"), filepath.Join(pki.ClientDir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rogueCert, err := tls.LoadX509KeyPair(filepath.Join(pki.RogueDir, "client-cert.pem"), filepath.Join(pki.RogueDir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	w := &Writer{Epoch: 1}
	cases := []struct {
		name string
		tls  *tls.Config
		ok   bool
	}{
		{"no TLS", nil, false},
		{"no client certificate", &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, false},
		{"certificate of another CA", &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{rogueCert}}, false},
		{"unknown server CA", &tls.Config{ServerName: "127.0.0.1", Certificates: []tls.Certificate{clientCert}}, false},
		{"valid", &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{clientCert}}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl, err := dialWith(t, ts.addr, ClientOptions{Export: "/dev/m", TLS: c.tls, Writer: w})
			if !c.ok {
				if err == nil {
					t.Fatal("handshake succeeded")
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			data := bytes.Repeat([]byte{0x5a}, 4096)
			if _, err := cl.WriteAt(data, 8192); err != nil {
				t.Fatalf("write over TLS: %v", err)
			}
			got := make([]byte, 4096)
			if _, err := cl.ReadAt(got, 8192); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read over TLS: %v", err)
			}
		})
	}
	if n := len(f.snapshot().admitted); n != 1 {
		t.Fatalf("%d writers admitted, want only the one with a valid certificate", n)
	}
}

func queryDirty(t *testing.T, addr string, o ClientOptions, slot uint32) ([]blockdev.Extent, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return QueryDirty(ctx, nc, o, slot)
}

func TestQueryDirty(t *testing.T) {
	ts, f := memberServer(t)
	f.dirty = []blockdev.Extent{{Length: 65536}, {Length: 65536, Flags: StateDirty}, {Length: 65536, Flags: StateDirty},
		{Length: 1<<20 - 196608}}
	got, err := queryDirty(t, ts.addr, ClientOptions{Export: "/dev/m"}, 3)
	want := []blockdev.Extent{{Length: 65536}, {Length: 131072, Flags: StateDirty}, {Length: 1<<20 - 196608}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("QueryDirty(slot 3) = %v %v, want %v", got, err, want)
	}
	if got, err := queryDirty(t, ts.addr, ClientOptions{Export: "/dev/m"}, 5); err != nil || fmt.Sprint(got) != fmt.Sprint([]blockdev.Extent{{Length: 1 << 20}}) {
		t.Fatalf("QueryDirty(slot 5) = %v %v, want one clean extent", got, err)
	}
	if _, err := queryDirty(t, ts.addr, ClientOptions{Export: "plain"}, 0); err == nil || !strings.Contains(err.Error(), "does not offer") {
		t.Fatalf("QueryDirty of a plain export = %v", err)
	}
	if _, err := queryDirty(t, ts.addr, ClientOptions{Export: "nope"}, 0); err == nil {
		t.Fatal("QueryDirty of an unknown export succeeded")
	}
}
