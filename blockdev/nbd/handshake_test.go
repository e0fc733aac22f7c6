package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

func threeExports() []Export {
	a, _ := memExport("alpha", 1<<20, 512)
	b, _ := memExport("beta", 2<<20, 4096)
	c, _ := memExport("gamma", 3<<20, 1)
	c.Description = ""
	return []Export{b, c, a} // added out of order on purpose
}

func TestOptList(t *testing.T) {
	ts := startServer(t, false, threeExports())
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)
	r.sendOpt(optList, nil)
	want := []struct{ name, desc string }{{"alpha", "memory alpha"}, {"beta", "memory beta"}, {"gamma", ""}}
	for _, w := range want {
		rep := r.expectReply(optList, repServer)
		n := binary.BigEndian.Uint32(rep.data)
		if int(n) > len(rep.data)-4 {
			t.Fatalf("NBD_REP_SERVER name length %d exceeds reply length %d", n, len(rep.data))
		}
		name, desc := string(rep.data[4:4+n]), string(rep.data[4+n:])
		if name != w.name || desc != w.desc {
			t.Errorf("NBD_REP_SERVER = (%q, %q), want (%q, %q)", name, desc, w.name, w.desc)
		}
	}
	r.expectReply(optList, repAck)

	// LIST with data is invalid, and negotiation continues.
	r.sendOpt(optList, []byte("x"))
	r.expectReply(optList, repErrInvalid)
	r.sendOpt(optAbort, nil)
	r.expectReply(optAbort, repAck)
	r.expectEOF()
}

// infoSet turns NBD_REP_INFO payloads into a sorted list for comparison.
func infoSet(infos [][]byte) []string {
	var out []string
	for _, i := range infos {
		out = append(out, string(i))
	}
	slices.Sort(out)
	return out
}

func TestInfoThenGoAgree(t *testing.T) {
	tests := []struct {
		name               string
		bs                 int
		ro                 bool
		wantMin, wantPref  uint32
		wantFlagsBesidesRO uint16
	}{
		{"bs1", 1, false, 1, 4096, 0},
		{"bs512", 512, false, 512, 4096, 0},
		{"bs4096ro", 4096, true, 4096, 4096, FlagReadOnly},
		{"bs3000", 3000, false, 2048, 4096, 0},
		{"bs1M", 1 << 20, false, 64 << 10, 64 << 10, 0},
	}
	var exps []Export
	for _, tc := range tests {
		e, _ := memExport(tc.name, 4<<20, tc.bs)
		e.ReadOnly = tc.ro
		exps = append(exps, e)
	}
	ts := startServer(t, false, exps)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rawDial(t, ts.addr)
			r.greet(flagCFixedNewstyle | flagCNoZeroes)
			req := goData(tc.name, infoName, infoDescription, infoBlockSize, 999)
			r.sendOpt(optInfo, req)
			infos, final := r.infoReplies(optInfo)
			if final.typ != repAck {
				t.Fatalf("INFO final reply %#x %q", final.typ, final.data)
			}
			r.sendOpt(optGo, req)
			goInfos, final := r.infoReplies(optGo)
			if final.typ != repAck {
				t.Fatalf("GO final reply %#x %q", final.typ, final.data)
			}
			if !slices.Equal(infoSet(infos), infoSet(goInfos)) {
				t.Fatalf("INFO and GO disagree:\nINFO %x\nGO   %x", infos, goInfos)
			}
			seen := map[uint16][]byte{}
			for _, i := range infos {
				typ := binary.BigEndian.Uint16(i)
				if _, dup := seen[typ]; dup {
					t.Errorf("info type %d sent twice", typ)
				}
				seen[typ] = i[2:]
			}
			exp := seen[infoExport]
			if len(exp) != 10 {
				t.Fatalf("NBD_INFO_EXPORT payload %x", exp)
			}
			if size := binary.BigEndian.Uint64(exp); size != 4<<20 {
				t.Errorf("size %d", size)
			}
			wantFlags := uint16(FlagHasFlags|FlagSendFlush|FlagSendFUA|FlagSendTrim|FlagSendWriteZeroes|
				FlagCanMultiConn|FlagSendCache|FlagSendFastZero) | tc.wantFlagsBesidesRO
			if f := binary.BigEndian.Uint16(exp[8:]); f != wantFlags {
				t.Errorf("transmission flags %#x, want %#x", f, wantFlags)
			}
			if got := string(seen[infoName]); got != tc.name {
				t.Errorf("NBD_INFO_NAME %q", got)
			}
			if got := string(seen[infoDescription]); got != "memory "+tc.name {
				t.Errorf("NBD_INFO_DESCRIPTION %q", got)
			}
			bs := seen[infoBlockSize]
			if len(bs) != 12 {
				t.Fatalf("NBD_INFO_BLOCK_SIZE payload %x", bs)
			}
			gotMin, gotPref, gotMax := binary.BigEndian.Uint32(bs), binary.BigEndian.Uint32(bs[4:]), binary.BigEndian.Uint32(bs[8:])
			if gotMin != tc.wantMin || gotPref != tc.wantPref || gotMax != DefaultMaxPayload {
				t.Errorf("block sizes (%d, %d, %d), want (%d, %d, %d)", gotMin, gotPref, gotMax, tc.wantMin, tc.wantPref, DefaultMaxPayload)
			}

			// Transmission works right after the ACK (no padding).
			r.request(Request{Type: CmdRead, Cookie: 77, Length: uint32(tc.wantMin)}, nil)
			if errno, cookie, _ := r.simpleReply(int(tc.wantMin)); errno != 0 || cookie != 77 {
				t.Fatalf("READ after GO: errno %v cookie %d", errno, cookie)
			}
		})
	}
}

func TestInfoOnlyRequestedItems(t *testing.T) {
	e, _ := memExport("x", 1<<20, 512)
	ts := startServer(t, false, []Export{e})
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle)
	r.sendOpt(optInfo, goData("x"))
	infos, final := r.infoReplies(optInfo)
	if final.typ != repAck {
		t.Fatalf("final %#x", final.typ)
	}
	for _, i := range infos {
		switch typ := binary.BigEndian.Uint16(i); typ {
		case infoExport, infoBlockSize:
		default:
			t.Errorf("unrequested info type %d sent", typ)
		}
	}
}

func TestUnsupportedOptionsThenGo(t *testing.T) {
	e, mem := memExport("disk", 1<<20, 512)
	copy(mem.Bytes(), "hello")
	ts := startServer(t, false, []Export{e})
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{optPeekExport, nil},
		{11, nil}, // EXTENDED_HEADERS in newer specs
		{0, nil},
		{0xdeadbeef, bytes.Repeat([]byte{0xff}, 5000)},
	} {
		r.sendOpt(o.opt, o.data)
		r.expectReply(o.opt, repErrUnsup)
	}
	// An oversized option is skipped and refused, and parsing continues.
	r.sendOpt(optInfo, make([]byte, maxOptionPayload+1))
	r.expectReply(optInfo, repErrTooBig)

	r.sendOpt(optGo, goData("disk"))
	if _, final := r.infoReplies(optGo); final.typ != repAck {
		t.Fatalf("GO after unsupported options: %#x %q", final.typ, final.data)
	}
	r.request(Request{Type: CmdRead, Cookie: 1, Length: 5}, nil)
	if errno, _, data := r.simpleReply(5); errno != 0 || string(data) != "hello" {
		t.Fatalf("READ: errno %v data %q", errno, data)
	}
}

func TestOptInfoGoErrors(t *testing.T) {
	one, _ := memExport("only", 1<<20, 512)
	two, _ := memExport("second", 1<<20, 512)
	single := startServer(t, false, []Export{one})
	double := startServer(t, false, []Export{one, two})

	short := goData("only")[:5]
	lying := goData("only")
	binary.BigEndian.PutUint32(lying, 1000) // name longer than the data
	badCount := goData("only", infoName)
	binary.BigEndian.PutUint16(badCount[8:], 3) // claims 3 requests, carries 1
	tests := []struct {
		name    string
		addr    string
		data    []byte
		wantTyp uint32
	}{
		{"unknown", single.addr, goData("nope"), repErrUnknown},
		{"default single", single.addr, goData(""), repAck},
		{"default ambiguous", double.addr, goData(""), repErrUnknown},
		{"short", single.addr, short, repErrInvalid},
		{"name past end", single.addr, lying, repErrInvalid},
		{"bad request count", single.addr, badCount, repErrInvalid},
		{"long name", single.addr, goData(strings.Repeat("n", 5000)), repErrInvalid},
	}
	for _, tc := range tests {
		for _, opt := range []uint32{optInfo, optGo} {
			t.Run(tc.name+"/"+map[uint32]string{optInfo: "INFO", optGo: "GO"}[opt], func(t *testing.T) {
				r := rawDial(t, tc.addr)
				r.greet(flagCFixedNewstyle | flagCNoZeroes)
				r.sendOpt(opt, tc.data)
				infos, final := r.infoReplies(opt)
				if final.typ != tc.wantTyp {
					t.Fatalf("final reply %#x %q, want %#x", final.typ, final.data, tc.wantTyp)
				}
				if final.typ != repAck && len(infos) > 0 {
					t.Errorf("%d NBD_REP_INFO before an error", len(infos))
				}
				if final.typ == repAck && opt == optGo {
					return
				}
				// Negotiation continues after INFO or an error.
				r.sendOpt(optGo, goData("only"))
				if _, final := r.infoReplies(optGo); final.typ != repAck {
					t.Fatalf("GO afterwards: %#x", final.typ)
				}
			})
		}
	}
}

func TestOptExportName(t *testing.T) {
	e, mem := memExport("disk", 1<<20, 512)
	copy(mem.Bytes(), "abc")
	ro, _ := memExport("ro", 2<<20, 512)
	ro.ReadOnly = true
	ts := startServer(t, false, []Export{e, ro})
	tests := []struct {
		name      string
		cflags    uint32
		export    string
		size      uint64
		readOnly  bool
		wantZeros bool
	}{
		{"no zeroes", flagCFixedNewstyle | flagCNoZeroes, "disk", 1 << 20, false, false},
		{"with zeroes", flagCFixedNewstyle, "disk", 1 << 20, false, true},
		{"plain newstyle", 0, "disk", 1 << 20, false, true},
		{"plain newstyle no zeroes", flagCNoZeroes, "ro", 2 << 20, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rawDial(t, ts.addr)
			r.greet(tc.cflags)
			r.sendOpt(optExportName, []byte(tc.export))
			b := r.read(10)
			if size := binary.BigEndian.Uint64(b); size != tc.size {
				t.Errorf("size %d, want %d", size, tc.size)
			}
			flags := binary.BigEndian.Uint16(b[8:])
			if flags&FlagHasFlags == 0 || (flags&FlagReadOnly != 0) != tc.readOnly {
				t.Errorf("flags %#x", flags)
			}
			if tc.wantZeros {
				if z := r.read(zeroPadLen); !bytes.Equal(z, make([]byte, zeroPadLen)) {
					t.Errorf("padding not zero: %x", z)
				}
			}
			// The next bytes must be the reply to our first request.
			r.request(Request{Type: CmdRead, Cookie: 5, Length: 3}, nil)
			errno, cookie, data := r.simpleReply(3)
			if errno != 0 || cookie != 5 {
				t.Fatalf("READ: errno %v cookie %d", errno, cookie)
			}
			if tc.export == "disk" && string(data) != "abc" {
				t.Errorf("READ data %q", data)
			}
		})
	}
}

func TestHandshakeHardDisconnects(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e})
	tests := []struct {
		name   string
		cflags uint32
		send   []byte
	}{
		{"unknown client flag", flagCFixedNewstyle | 1<<5, nil},
		{"bad option magic", flagCFixedNewstyle, []byte("NOTMAGIC\x00\x00\x00\x07\x00\x00\x00\x00")},
		{"unknown export name", flagCFixedNewstyle, optBytes(optExportName, []byte("nope"))},
		{"export name too long", flagCFixedNewstyle, optBytes(optExportName, make([]byte, 5000))},
		{"plain newstyle GO", 0, optBytes(optGo, goData("disk"))},
		{"truncated option", flagCFixedNewstyle, optBytes(optGo, goData("disk"))[:20]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rawDial(t, ts.addr)
			r.greet(tc.cflags)
			r.write(tc.send)
			if tc.name == "truncated option" {
				r.c.(interface{ CloseWrite() error }).CloseWrite()
			}
			r.expectEOF()
		})
	}
	// The server is unaffected.
	c := dial(t, ts.addr, "disk")
	if _, err := c.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}

func TestOptAbort(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e})
	for _, data := range [][]byte{nil, []byte("ignored")} {
		r := rawDial(t, ts.addr)
		r.greet(flagCFixedNewstyle | flagCNoZeroes)
		r.sendOpt(optAbort, data)
		if rep := r.expectReply(optAbort, repAck); len(rep.data) != 0 {
			t.Errorf("ACK carries %q", rep.data)
		}
		r.expectEOF()
	}
	// A client that sends ABORT and leaves at once does not upset the server.
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle)
	r.sendOpt(optAbort, nil)
	r.c.Close()
	c := dial(t, ts.addr, "disk")
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e}, withHandshake(50*time.Millisecond))
	r := rawDial(t, ts.addr)
	r.read(18) // greeting; then stay silent
	r.expectEOF()
}

func TestShutdownDuringHandshake(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e})
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle)
	r.sendOpt(optList, nil)
	r.expectReply(optList, repServer)
	r.expectReply(optList, repAck)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	r.expectEOF()
}

func TestAddExportErrors(t *testing.T) {
	s, err := NewServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	mem := blockdev.NewMem(4096, 512)
	if err := s.AddExport(Export{Name: "a", Device: mem}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []Export{
		{Name: "", Device: mem},
		{Name: "a", Device: mem},
		{Name: "b"},
		{Name: "nul\x00", Device: mem},
		{Name: strings.Repeat("x", 4097), Device: mem},
		{Name: "c", Description: strings.Repeat("x", 4097), Device: mem},
		{Name: "d", Device: mem, MinBlockSize: 3000},
		{Name: "e", Device: mem, MinBlockSize: 128 << 10},
		{Name: "f", Device: mem, MinBlockSize: -512},
	} {
		if err := s.AddExport(e); err == nil {
			t.Errorf("AddExport(%q) succeeded", e.Name)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	d := DefaultConfig()
	if d.MaxPayload != 32<<20 || d.MaxConnections != 1024 || d.MaxInFlight != 128 || d.Logger == nil {
		t.Errorf("DefaultConfig = %+v", d)
	}
	for _, cfg := range []Config{
		{MaxPayload: 1000},
		{MaxPayload: 2 << 30},
		{MaxConnections: -1},
		{MaxInFlight: -1},
		{MaxInFlight: 1 << 20},
		{HandshakeTimeout: -time.Second},
	} {
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("NewServer(%+v) succeeded", cfg)
		}
	}
}

func TestMinBlockSizeOverride(t *testing.T) {
	s, err := NewServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name            string
		devBS, min      int
		wantMin, wantPr uint32
	}{
		{"device", 4096, 0, 4096, 4096},
		{"512 on a 4k array", 4096, 512, 512, 4096},
		{"512 on a 64k array", 64 << 10, 512, 512, 64 << 10},
		{"4k on a 512 device", 512, 4096, 4096, 4096},
	}
	for _, c := range cases {
		if err := s.AddExport(Export{Name: c.name, Device: blockdev.NewMem(1<<20, c.devBS), MinBlockSize: c.min}); err != nil {
			t.Fatal(err)
		}
		x := s.lookup(c.name)
		if x.minBS != c.wantMin || x.prefBS != c.wantPr {
			t.Errorf("%s: min %d preferred %d, want %d %d", c.name, x.minBS, x.prefBS, c.wantMin, c.wantPr)
		}
	}
}
