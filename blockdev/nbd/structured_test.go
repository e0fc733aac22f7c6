package nbd

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// chunk is one structured reply chunk as received.
type chunk struct {
	flags, typ uint16
	cookie     uint64
	payload    []byte
}

// readChunk reads one structured reply chunk.
func (r *rawConn) readChunk() chunk {
	r.t.Helper()
	h := r.read(chunkHeaderLen)
	if m := binary.BigEndian.Uint32(h); m != magicStructReply {
		r.t.Fatalf("chunk magic %#x, want structured reply", m)
	}
	return chunk{
		flags:   binary.BigEndian.Uint16(h[4:]),
		typ:     binary.BigEndian.Uint16(h[6:]),
		cookie:  binary.BigEndian.Uint64(h[8:]),
		payload: r.read(int(binary.BigEndian.Uint32(h[16:]))),
	}
}

// readChunks reads chunks up to the one with NBD_REPLY_FLAG_DONE.
func (r *rawConn) readChunks() []chunk {
	r.t.Helper()
	var cs []chunk
	for {
		c := r.readChunk()
		cs = append(cs, c)
		if c.flags&replyFlagDone != 0 {
			return cs
		}
	}
}

// chunkErrno returns the error and message of an error chunk, or 0.
func chunkErrno(c chunk) (Errno, string) {
	if c.typ&(1<<15) == 0 || len(c.payload) < 6 {
		return 0, ""
	}
	n := binary.BigEndian.Uint16(c.payload[4:])
	return Errno(binary.BigEndian.Uint32(c.payload)), string(c.payload[6 : 6+int(n)])
}

// structuredGo negotiates structured replies, optionally base:allocation,
// and enters transmission on export name.
func structuredGo(t testing.TB, addr, name string, meta bool, infos ...uint16) *rawConn {
	t.Helper()
	r := rawDial(t, addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)
	r.sendOpt(optStructuredReply, nil)
	r.expectReply(optStructuredReply, repAck)
	if meta {
		r.sendOpt(optSetMetaContext, metaData(name, metaBaseAllocation))
		rep := r.expectReply(optSetMetaContext, repMetaContext)
		if id := binary.BigEndian.Uint32(rep.data); id != metaIDBaseAllocation || string(rep.data[4:]) != metaBaseAllocation {
			t.Fatalf("NBD_REP_META_CONTEXT %x", rep.data)
		}
		r.expectReply(optSetMetaContext, repAck)
	}
	r.sendOpt(optGo, goData(name, infos...))
	infosGot, final := r.infoReplies(optGo)
	if final.typ != repAck {
		t.Fatalf("GO: %#x %q", final.typ, final.data)
	}
	for _, i := range infosGot {
		if binary.BigEndian.Uint16(i) == infoExport {
			if f := binary.BigEndian.Uint16(i[10:]); f&FlagSendDF == 0 {
				t.Fatalf("transmission flags %#x lack SEND_DF after structured replies", f)
			}
		}
	}
	return r
}

// metaData builds the payload of NBD_OPT_LIST/SET_META_CONTEXT.
func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

func TestStructuredReplyOption(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e})
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)

	// Without structured replies, no SEND_DF.
	r.sendOpt(optInfo, goData("disk"))
	infos, _ := r.infoReplies(optInfo)
	for _, i := range infos {
		if binary.BigEndian.Uint16(i) == infoExport && binary.BigEndian.Uint16(i[10:])&FlagSendDF != 0 {
			t.Fatal("SEND_DF advertised without structured replies")
		}
	}
	r.sendOpt(optStructuredReply, []byte{1})
	r.expectReply(optStructuredReply, repErrInvalid)
	r.sendOpt(optStructuredReply, nil)
	r.expectReply(optStructuredReply, repAck)
	r.sendOpt(optStructuredReply, nil) // repeating it is harmless
	r.expectReply(optStructuredReply, repAck)
	r.sendOpt(optStartTLS, nil)
	r.expectReply(optStartTLS, repErrPolicy) // TLS is off
	r.sendOpt(optInfo, goData("disk"))
	infos, _ = r.infoReplies(optInfo)
	for _, i := range infos {
		if binary.BigEndian.Uint16(i) == infoExport && binary.BigEndian.Uint16(i[10:])&FlagSendDF == 0 {
			t.Fatal("SEND_DF missing with structured replies")
		}
	}
}

func TestMetaContextOptions(t *testing.T) {
	a, _ := memExport("a", 1<<20, 512)
	b, _ := memExport("b", 1<<20, 512)
	ts := startServer(t, false, []Export{a, b})
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)

	// Both need structured replies first.
	r.sendOpt(optListMetaContext, metaData("a"))
	r.expectReply(optListMetaContext, repErrInvalid)
	r.sendOpt(optSetMetaContext, metaData("a", metaBaseAllocation))
	r.expectReply(optSetMetaContext, repErrInvalid)
	r.sendOpt(optStructuredReply, nil)
	r.expectReply(optStructuredReply, repAck)

	list := func(data []byte) []string {
		t.Helper()
		r.sendOpt(optListMetaContext, data)
		var names []string
		for {
			rep := r.readOptReply()
			if rep.typ == repAck {
				return names
			}
			if rep.typ != repMetaContext {
				t.Fatalf("LIST_META_CONTEXT reply %#x %q", rep.typ, rep.data)
			}
			if id := binary.BigEndian.Uint32(rep.data); id != 0 {
				t.Errorf("LIST_META_CONTEXT id %d, want 0", id)
			}
			names = append(names, string(rep.data[4:]))
		}
	}
	for _, tc := range []struct {
		name    string
		queries []string
		want    []string
	}{
		{"all", nil, []string{metaBaseAllocation}},
		{"namespace", []string{"base:"}, []string{metaBaseAllocation}},
		{"exact", []string{"base:allocation"}, []string{metaBaseAllocation}},
		{"twice", []string{"base:allocation", "base:"}, []string{metaBaseAllocation}},
		{"unknown leaf", []string{"base:nope"}, nil},
		{"other namespace", []string{"qemu:dirty-bitmap:x", "x-foo:"}, nil},
	} {
		if got := list(metaData("a", tc.queries...)); !slices.Equal(got, tc.want) {
			t.Errorf("LIST %s: %q, want %q", tc.name, got, tc.want)
		}
	}

	bad := metaData("a", "base:allocation")
	binary.BigEndian.PutUint32(bad[len(bad)-19:], 500) // query longer than the data
	for _, tc := range []struct {
		name string
		data []byte
		want uint32
	}{
		{"query past end", bad, repErrInvalid},
		{"no colon", metaData("a", "allocation"), repErrInvalid},
		{"trailing bytes", append(metaData("a", "base:allocation"), 0), repErrInvalid},
		{"short", []byte{0, 0}, repErrInvalid},
		{"unknown export", metaData("zz", "base:allocation"), repErrUnknown},
	} {
		for _, opt := range []uint32{optListMetaContext, optSetMetaContext} {
			r.sendOpt(opt, tc.data)
			if rep := r.readOptReply(); rep.typ != tc.want {
				t.Errorf("%s (option %d): reply %#x %q, want %#x", tc.name, opt, rep.typ, rep.data, tc.want)
			}
		}
	}

	// SET with "base:" selects nothing; with base:allocation, ID 1.
	r.sendOpt(optSetMetaContext, metaData("a", "base:"))
	r.expectReply(optSetMetaContext, repAck)
	r.sendOpt(optSetMetaContext, metaData("a", "base:allocation", "x-y:z"))
	rep := r.expectReply(optSetMetaContext, repMetaContext)
	if id := binary.BigEndian.Uint32(rep.data); id != metaIDBaseAllocation {
		t.Fatalf("context id %d", id)
	}
	r.expectReply(optSetMetaContext, repAck)

	// The context was set for "a", but the client goes to "b": no block
	// status there.
	r.sendOpt(optGo, goData("b"))
	if _, final := r.infoReplies(optGo); final.typ != repAck {
		t.Fatalf("GO: %#x", final.typ)
	}
	r.request(Request{Type: CmdBlockStatus, Cookie: 5, Length: 4096}, nil)
	c := r.readChunk()
	if errno, msg := chunkErrno(c); errno != EINVAL || c.cookie != 5 || c.flags&replyFlagDone == 0 || !strings.Contains(msg, "metadata context") {
		t.Fatalf("BLOCK_STATUS without context: chunk %+v errno %v %q", c, errno, msg)
	}
}

func TestStructuredRead(t *testing.T) {
	const size = 1 << 20
	e, mem := memExport("disk", size, 512)
	// Data in the 64 KiB pieces 1 and 3, zeroes elsewhere.
	copy(mem.Bytes()[64<<10:], bytes.Repeat([]byte{1}, 64<<10))
	copy(mem.Bytes()[3*64<<10+100:], []byte{2})
	ts := startServer(t, false, []Export{e})
	r := structuredGo(t, ts.addr, "disk", false)

	// reassemble checks the chunks of a READ of [off, off+n) and returns
	// the data they describe, and how many hole chunks there were.
	reassemble := func(cs []chunk, cookie, off uint64, n int) ([]byte, int) {
		t.Helper()
		out := make([]byte, n)
		covered := make([]bool, n)
		holes := 0
		for i, c := range cs {
			if c.cookie != cookie {
				t.Fatalf("chunk cookie %d, want %d", c.cookie, cookie)
			}
			if (c.flags&replyFlagDone != 0) != (i == len(cs)-1) {
				t.Fatalf("DONE flag on chunk %d of %d", i, len(cs))
			}
			var at uint64
			var length int
			switch c.typ {
			case replyTypeOffsetData:
				at, length = binary.BigEndian.Uint64(c.payload), len(c.payload)-8
				copy(out[at-off:], c.payload[8:])
			case replyTypeOffsetHole:
				at, length = binary.BigEndian.Uint64(c.payload), int(binary.BigEndian.Uint32(c.payload[8:]))
				holes++
			case replyTypeNone:
				continue
			default:
				t.Fatalf("unexpected chunk type %#x", c.typ)
			}
			if at < off || at+uint64(length) > off+uint64(n) || length == 0 {
				t.Fatalf("chunk [%d, +%d) outside the read [%d, +%d)", at, length, off, n)
			}
			for j := at - off; j < at-off+uint64(length); j++ {
				if covered[j] {
					t.Fatalf("chunks overlap at %d", off+j)
				}
				covered[j] = true
			}
		}
		for j, ok := range covered {
			if !ok {
				t.Fatalf("byte %d not covered", off+uint64(j))
			}
		}
		return out, holes
	}

	want := snapshot(mem)
	for i, tc := range []struct {
		off, n    int
		flags     uint16
		wantHoles int
		wantCount int
	}{
		{0, 256 << 10, 0, 2, 4},             // hole, data, hole, data
		{0, 64 << 10, 0, 1, 1},              // all zero: one hole chunk
		{64 << 10, 4096, 0, 0, 1},           // data: one chunk
		{0, 256 << 10, CmdFlagDF, 0, 1},     // DF: one data chunk with the zeroes in it
		{1000, 200 << 10, 0, 2, 4},          // unaligned
		{size - 512, 512, CmdFlagFUA, 1, 1}, // FUA is accepted
	} {
		cookie := uint64(100 + i)
		r.request(Request{Type: CmdRead, Flags: tc.flags, Cookie: cookie, Offset: uint64(tc.off), Length: uint32(tc.n)}, nil)
		cs := r.readChunks()
		got, holes := reassemble(cs, cookie, uint64(tc.off), tc.n)
		if !bytes.Equal(got, want[tc.off:tc.off+tc.n]) {
			t.Fatalf("read %d: data differs", i)
		}
		if holes != tc.wantHoles || len(cs) != tc.wantCount {
			t.Errorf("read %d: %d chunks with %d holes, want %d with %d", i, len(cs), holes, tc.wantCount, tc.wantHoles)
		}
	}

	// A zero-length read is a lone NONE chunk.
	r.request(Request{Type: CmdRead, Cookie: 9, Offset: 512}, nil)
	if c := r.readChunk(); c.typ != replyTypeNone || c.flags != replyFlagDone || c.cookie != 9 || len(c.payload) != 0 {
		t.Fatalf("zero-length read: %+v", c)
	}
	// Errors come as error chunks with a message, for READ and the rest.
	for _, tc := range []struct {
		req  Request
		want Errno
	}{
		{Request{Type: CmdRead, Cookie: 10, Offset: size, Length: 512}, EINVAL},
		{Request{Type: CmdRead, Cookie: 11, Flags: CmdFlagReqOne, Length: 512}, EINVAL},
		{Request{Type: CmdWriteZeroes, Cookie: 12, Offset: size, Length: 512}, ENOSPC},
		{Request{Type: 77, Cookie: 13}, EINVAL},
	} {
		r.request(tc.req, nil)
		c := r.readChunk()
		errno, msg := chunkErrno(c)
		if c.typ != replyTypeError || c.flags != replyFlagDone || c.cookie != tc.req.Cookie || errno != tc.want || msg == "" {
			t.Errorf("%v: chunk %+v errno %v %q, want error chunk %v", tc.req.Type, c, errno, msg, tc.want)
		}
	}
	// Successful commands without data get simple replies.
	r.request(Request{Type: CmdWrite, Cookie: 14, Offset: 0, Length: 4}, []byte("abcd"))
	if errno, cookie, _ := r.simpleReply(0); errno != 0 || cookie != 14 {
		t.Fatalf("WRITE: %v %d", errno, cookie)
	}
	r.request(Request{Type: CmdDisc}, nil)
	r.expectEOF()
}

// statusDescs decodes a BLOCK_STATUS chunk into extents.
func statusDescs(t *testing.T, c chunk) []blockdev.Extent {
	t.Helper()
	if c.typ != replyTypeBlockStatus || c.flags&replyFlagDone == 0 || len(c.payload) < 12 || (len(c.payload)-4)%8 != 0 {
		t.Fatalf("not a final BLOCK_STATUS chunk: %+v", c)
	}
	if id := binary.BigEndian.Uint32(c.payload); id != metaIDBaseAllocation {
		t.Fatalf("context id %d", id)
	}
	var es []blockdev.Extent
	for p := c.payload[4:]; len(p) > 0; p = p[8:] {
		es = append(es, blockdev.Extent{Length: int64(binary.BigEndian.Uint32(p)), Flags: blockdev.ExtentFlags(binary.BigEndian.Uint32(p[4:]))})
	}
	return es
}

func TestBlockStatus(t *testing.T) {
	const size = 4 << 20
	f, err := blockdev.OpenFile(filepath.Join(t.TempDir(), "img"), blockdev.FileOptions{Create: true, CreateSize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // after the server's shutdown
	if _, err := f.WriteAt(bytes.Repeat([]byte{9}, 64<<10), 1<<20); err != nil {
		t.Fatal(err)
	}
	plain := plainDevice{blockdev.NewMem(1<<20, 512)}
	ts := startServer(t, false, []Export{
		{Name: "file", Device: f},
		{Name: "plain", Device: plain},
	})
	hz := blockdev.ExtentHole | blockdev.ExtentZero

	r := structuredGo(t, ts.addr, "file", true)
	for i, tc := range []struct {
		off, n uint64
		flags  uint16
		want   []blockdev.Extent
	}{
		{0, size, 0, []blockdev.Extent{{Length: 1 << 20, Flags: hz}, {Length: 64 << 10}, {Length: size - 1<<20 - 64<<10, Flags: hz}}},
		{0, size, CmdFlagReqOne, []blockdev.Extent{{Length: 1 << 20, Flags: hz}}},
		{1<<20 + 4096, 8192, 0, []blockdev.Extent{{Length: 8192}}},
		// This client did not negotiate block sizes: an unaligned query
		// keeps its unaligned start and end.
		{1<<20 - 100, 300, 0, []blockdev.Extent{{Length: 100, Flags: hz}, {Length: 200}}},
		{size - 512, 512, CmdFlagFUA, []blockdev.Extent{{Length: 512, Flags: hz}}},
	} {
		cookie := uint64(i + 1)
		r.request(Request{Type: CmdBlockStatus, Flags: tc.flags, Cookie: cookie, Offset: tc.off, Length: uint32(tc.n)}, nil)
		c := r.readChunk()
		if c.cookie != cookie {
			t.Fatalf("cookie %d", c.cookie)
		}
		if got := statusDescs(t, c); !slices.Equal(got, tc.want) {
			t.Errorf("BLOCK_STATUS %d (%d, %d, flags %d): %v, want %v", i, tc.off, tc.n, tc.flags, got, tc.want)
		}
	}
	for _, tc := range []struct {
		req  Request
		want Errno
	}{
		{Request{Type: CmdBlockStatus, Cookie: 20, Offset: size, Length: 512}, EINVAL},
		{Request{Type: CmdBlockStatus, Cookie: 21, Offset: 0, Length: 0}, EINVAL},
		{Request{Type: CmdBlockStatus, Cookie: 22, Flags: CmdFlagDF, Length: 512}, EINVAL},
		{Request{Type: CmdBlockStatus, Cookie: 23, Flags: CmdFlagNoHole, Length: 512}, EINVAL},
	} {
		r.request(tc.req, nil)
		if errno, _ := chunkErrno(r.readChunk()); errno != tc.want {
			t.Errorf("%+v: errno %v, want %v", tc.req, errno, tc.want)
		}
	}

	// A client that negotiated block sizes gets EINVAL for a misaligned
	// query, and a device without extents reports flags 0.
	r = structuredGo(t, ts.addr, "plain", true, infoBlockSize)
	r.request(Request{Type: CmdBlockStatus, Cookie: 30, Offset: 100, Length: 512}, nil)
	if errno, _ := chunkErrno(r.readChunk()); errno != EINVAL {
		t.Errorf("misaligned BLOCK_STATUS: %v", errno)
	}
	r.request(Request{Type: CmdBlockStatus, Cookie: 31, Offset: 512, Length: 1 << 19}, nil)
	if got := statusDescs(t, r.readChunk()); !slices.Equal(got, []blockdev.Extent{{Length: 1 << 19}}) {
		t.Errorf("plain device: %v", got)
	}
}

// plainDevice hides every optional interface of the device it wraps and
// counts the calls that reach it.
type plainDevice struct{ blockdev.Device }

// zeroCounter counts Zero and WriteAt calls.
type zeroCounter struct {
	plainDevice
	zeroes, writes *atomic.Int64
}

func (z zeroCounter) Zero(off, n int64) error { z.zeroes.Add(1); return z.plainDevice.Zero(off, n) }
func (z zeroCounter) WriteAt(p []byte, off int64) (int, error) {
	z.writes.Add(1)
	return z.plainDevice.WriteAt(p, off)
}

func TestWriteZeroesFlags(t *testing.T) {
	const size = 1 << 20
	mem := blockdev.NewMem(size, 512)
	zc := zeroCounter{plainDevice{mem}, new(atomic.Int64), new(atomic.Int64)}
	file, err := blockdev.OpenFile(filepath.Join(t.TempDir(), "img"), blockdev.FileOptions{Create: true, CreateSize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
	ts := startServer(t, false, []Export{{Name: "plain", Device: zc}, {Name: "file", Device: file}})

	fill := func() { copy(mem.Bytes(), bytes.Repeat([]byte{0xaa}, size)) }
	for _, structured := range []bool{false, true} {
		var r *rawConn
		if structured {
			r = structuredGo(t, ts.addr, "plain", false)
		} else {
			r = rawGo(t, ts.addr, "plain")
		}
		errnoOf := func(req Request) Errno {
			t.Helper()
			r.request(req, nil)
			if !structured {
				errno, _, _ := r.simpleReply(0)
				return errno
			}
			h := r.read(4)
			if binary.BigEndian.Uint32(h) == magicSimpleReply {
				rest := r.read(replyHeaderLen - 4)
				return Errno(binary.BigEndian.Uint32(rest))
			}
			rest := r.read(chunkHeaderLen - 4)
			payload := r.read(int(binary.BigEndian.Uint32(rest[12:])))
			errno, _ := chunkErrno(chunk{typ: binary.BigEndian.Uint16(rest[2:]), payload: payload})
			return errno
		}

		// FAST_ZERO on a device that cannot say it is fast: ENOTSUP at
		// once, nothing touched.
		fill()
		zc.zeroes.Store(0)
		zc.writes.Store(0)
		for _, flags := range []uint16{CmdFlagFastZero, CmdFlagFastZero | CmdFlagNoHole, CmdFlagFastZero | CmdFlagFUA} {
			if errno := errnoOf(Request{Type: CmdWriteZeroes, Flags: flags, Length: 8192}); errno != ENOTSUP {
				t.Fatalf("flags %#x: errno %v, want ENOTSUP", flags, errno)
			}
		}
		if zc.zeroes.Load() != 0 || zc.writes.Load() != 0 || snapshot(mem)[0] != 0xaa {
			t.Fatal("a refused fast zero touched the device")
		}
		// NO_HOLE on it: zeroes are written, not punched.
		if errno := errnoOf(Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole, Length: 600 << 10}); errno != 0 {
			t.Fatalf("NO_HOLE zero: %v", errno)
		}
		if zc.zeroes.Load() != 0 || zc.writes.Load() == 0 || !bytes.Equal(snapshot(mem)[:600<<10], make([]byte, 600<<10)) {
			t.Fatalf("NO_HOLE zero: %d Zero calls, %d writes", zc.zeroes.Load(), zc.writes.Load())
		}
		// Plain zero uses Zero.
		if errno := errnoOf(Request{Type: CmdWriteZeroes, Offset: 600 << 10, Length: 4096}); errno != 0 || zc.zeroes.Load() != 1 {
			t.Fatalf("zero: %v, %d Zero calls", errno, zc.zeroes.Load())
		}
	}

	// A sparse file zeroes fast, with or without holes.
	r := structuredGo(t, ts.addr, "file", false)
	for i, flags := range []uint16{CmdFlagFastZero, CmdFlagFastZero | CmdFlagNoHole, CmdFlagNoHole} {
		r.request(Request{Type: CmdWriteZeroes, Flags: flags, Cookie: uint64(i), Length: 64 << 10}, nil)
		if errno, _, _ := r.simpleReply(0); errno != 0 {
			t.Fatalf("file zero flags %#x: %v", flags, errno)
		}
	}
}
