package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// fuzzServer is a server with three exports that is never started; the
// fuzz targets drive its handshake and request handling directly. With
// tlsMode other than TLSOff its TLS configuration has a certificate
// callback but no certificate, so any TLS handshake fails.
func fuzzServer(tb testing.TB, lb *logBuffer, tlsMode TLSMode) *Server {
	cfg := Config{
		MaxPayload:  64 << 10,
		MaxInFlight: 4,
		Logger:      slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelWarn})),
		TLSMode:     tlsMode,
	}
	if tlsMode != TLSOff {
		cfg.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("fuzz: no certificate")
		}}
	}
	s, err := NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	file, err := blockdev.OpenFile(filepath.Join(tb.TempDir(), "img"), blockdev.FileOptions{Create: true, CreateSize: 1 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { file.Close() })
	if _, err := file.WriteAt(bytes.Repeat([]byte{1}, 8192), 64<<10); err != nil {
		tb.Fatal(err)
	}
	member := &fakeMember{dev: blockdev.NewMem(1<<20, 512), dirty: []blockdev.Extent{{Length: 4096, Flags: StateDirty}}}
	for _, e := range []Export{
		{Name: "disk", Description: "fuzz disk", Device: blockdev.NewMem(1<<20, 512)},
		{Name: "ro", Device: blockdev.NewMem(64<<10, 4096), ReadOnly: true},
		{Name: "file", Device: file, TLSOnly: tlsMode != TLSOff},
		{Name: "member", Device: member.dev, Member: member},
	} {
		if err := s.AddExport(e); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

func seedOptions(cflags uint32, opts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, cflags)
	for _, o := range opts {
		b = append(b, o...)
	}
	return b
}

// FuzzHandshake feeds the option parser arbitrary client bytes. mode
// selects the server's TLS mode (off, optional or required; the TLS
// handshake itself always fails here).
func FuzzHandshake(f *testing.F) {
	fixed := uint32(flagCFixedNewstyle | flagCNoZeroes)
	f.Add(byte(0), seedOptions(fixed, optBytes(optList, nil), optBytes(optAbort, nil)))
	f.Add(byte(0), seedOptions(fixed, optBytes(optInfo, goData("disk", infoName, infoBlockSize)), optBytes(optGo, goData("disk", infoName, infoBlockSize))))
	f.Add(byte(0), seedOptions(fixed, optBytes(optStructuredReply, nil), optBytes(optGo, goData(""))))
	f.Add(byte(0), seedOptions(fixed, optBytes(optStructuredReply, nil),
		optBytes(optListMetaContext, metaData("disk")), optBytes(optListMetaContext, metaData("file", "base:", "x-a:b")),
		optBytes(optSetMetaContext, metaData("disk", "base:allocation")), optBytes(optGo, goData("disk"))))
	f.Add(byte(0), seedOptions(fixed, optBytes(optSetMetaContext, metaData("disk", "nocolon")), optBytes(optStartTLS, nil)))
	f.Add(byte(1), seedOptions(fixed, optBytes(optList, nil), optBytes(optInfo, goData("file")), optBytes(optStartTLS, nil)))
	f.Add(byte(2), seedOptions(fixed, optBytes(optGo, goData("disk")), optBytes(optStartTLS, []byte{1}), optBytes(optStartTLS, nil)))
	f.Add(byte(2), seedOptions(fixed, optBytes(optExportName, []byte("disk"))))
	f.Add(byte(0), seedOptions(0, optBytes(optExportName, []byte("ro"))))
	f.Add(byte(0), seedOptions(fixed, optBytes(optGo, []byte{0, 0, 0, 9, 'd'})))
	// An option claiming a payload far beyond the limit (the input ends
	// first); large real payloads would slow the fuzzer down.
	f.Add(byte(0), seedOptions(fixed, optBytes(0xffffffff, nil)[:12], []byte{0, 1, 0, 0, 1, 2, 3}))
	f.Add(byte(0), []byte("\x00\x00\x00\x03IHAVEOPT\x00\x00\x00\x07\xff\xff\xff\xff"))
	// ddraid's private option and contexts.
	w := Writer{Array: [16]byte{1}, Slot: 3, Epoch: 9, RegionSize: 64 << 10, DataOffset: 4096}
	f.Add(byte(0), seedOptions(fixed, optBytes(OptWriter, marshalWriter("member", w)), optBytes(optGo, goData("member"))))
	f.Add(byte(0), seedOptions(fixed, optBytes(OptWriter, marshalWriter("disk", w)), optBytes(OptWriter, marshalWriter("member", w)[:9]),
		optBytes(OptWriter, marshalWriter("member", w)), optBytes(optGo, goData("disk"))))
	f.Add(byte(0), seedOptions(fixed, optBytes(optStructuredReply, nil),
		optBytes(optListMetaContext, metaData("member", "ddraid:dirty/3", "ddraid:")),
		optBytes(optSetMetaContext, metaData("member", "base:allocation", "ddraid:dirty/3")), optBytes(optGo, goData("member"))))
	f.Add(byte(1), seedOptions(fixed, optBytes(OptWriter, marshalWriter("member", w)), optBytes(optStartTLS, nil)))
	f.Add(byte(0), seedOptions(fixed, optBytes(OptWriter, marshalWriter("member", w)), optBytes(optExportName, []byte("member"))))

	lb := &logBuffer{}
	servers := []*Server{fuzzServer(f, lb, TLSOff), fuzzServer(f, lb, TLSOptional), fuzzServer(f, lb, TLSRequired)}
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		s := servers[int(mode)%len(servers)]
		h := handshake{
			s:        s,
			r:        bufio.NewReader(bytes.NewReader(data)),
			w:        bufio.NewWriter(io.Discard),
			shutting: func() bool { return false },
		}
		n, err := h.run()
		if err != nil {
			h.dropSession()
		}
		if n.session != nil {
			if n.exp.Member == nil {
				t.Fatal("writer session on an export that is not a member export")
			}
			n.session.Close()
		}
		if err == nil && n.dirty >= 0 && (n.exp.Member == nil || !n.structured) {
			t.Fatal("dirty context without a member export and structured replies")
		}
		if err == nil && n.exp == nil {
			t.Fatal("handshake succeeded without an export")
		}
		if err != nil && n.exp != nil {
			t.Fatal("handshake failed but chose an export")
		}
		if err == nil {
			if n.exp.TLSOnly || s.cfg.TLSMode == TLSRequired {
				t.Fatal("transmission without TLS on a TLS-only export or a TLS-required server")
			}
			if n.blockStatus && !n.structured {
				t.Fatal("block status without structured replies")
			}
			if (n.tflags&FlagSendDF != 0) != n.structured {
				t.Fatalf("SEND_DF %v with structured replies %v", n.tflags&FlagSendDF != 0, n.structured)
			}
		}
	})
}

// fuzzConn is a net.Conn whose peer is a fixed byte stream; writes vanish.
type fuzzConn struct{ r *bytes.Reader }

func (c fuzzConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c fuzzConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c fuzzConn) Close() error                       { return nil }
func (c fuzzConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c fuzzConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "fuzz-peer", Net: "unix"} }
func (c fuzzConn) SetDeadline(t time.Time) error      { return nil }
func (c fuzzConn) SetReadDeadline(t time.Time) error  { return nil }
func (c fuzzConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzRequest feeds the request reader and executor arbitrary bytes after
// a handshake. mode picks the export (bits 0-1: disk, ro, file, member),
// whether block sizes were negotiated (bit 2), structured replies (bit
// 3), base:allocation (bit 4), a writer session on the member export (bit
// 5) and its ddraid:dirty/3 context (bit 6).
func FuzzRequest(f *testing.F) {
	req := func(r Request, payload ...byte) []byte {
		var h [requestHeaderLen]byte
		r.encode(&h)
		return append(h[:], payload...)
	}
	f.Add(byte(0), req(Request{Type: CmdRead, Length: 512}))
	f.Add(byte(1), req(Request{Type: CmdWrite, Flags: CmdFlagFUA, Offset: 512, Length: 4}, 1, 2, 3, 4))
	f.Add(byte(2), req(Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Length: 1 << 30}))
	f.Add(byte(3), append(req(Request{Type: CmdTrim, Offset: 1<<64 - 1, Length: 2}), req(Request{Type: CmdDisc})...))
	f.Add(byte(0), req(Request{Type: CmdWrite, Length: 1 << 31}))
	f.Add(byte(1), req(Request{Type: 0xffff, Flags: 0xffff, Offset: 1 << 63, Length: 0xffffffff}))
	f.Add(byte(0), []byte("garbage that is not a request at all"))
	f.Add(byte(0x1a), append(req(Request{Type: CmdBlockStatus, Length: 1 << 20}), req(Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Offset: 4096, Length: 100})...))
	f.Add(byte(0x0a), append(req(Request{Type: CmdRead, Flags: CmdFlagDF, Offset: 60 << 10, Length: 16 << 10}), req(Request{Type: CmdRead, Offset: 1000, Length: 64 << 10})...))
	f.Add(byte(0x0e), req(Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole | CmdFlagFastZero, Offset: 4096, Length: 8192}))
	f.Add(byte(0x08), req(Request{Type: CmdBlockStatus, Length: 512}))
	f.Add(byte(0x23), append(req(Request{Type: CmdWrite, Offset: 4096, Length: 4}, 1, 2, 3, 4), req(Request{Type: CmdClear, Length: 1 << 20})...))
	f.Add(byte(0x03), append(req(Request{Type: CmdWrite, Length: 2}, 1, 2), req(Request{Type: CmdClear, Offset: 512, Length: 512})...))
	f.Add(byte(0x5b), append(req(Request{Type: CmdBlockStatus, Length: 1 << 20}), req(Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Length: 8192})...))
	f.Add(byte(0x4b), req(Request{Type: CmdBlockStatus, Offset: 1 << 19, Length: 4096}))

	lb := &logBuffer{}
	s := fuzzServer(f, lb, TLSOff)
	exps := s.list()
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		if len(data) >= requestHeaderLen {
			var h [requestHeaderLen]byte
			copy(h[:], data)
			if r, err := parseRequest(&h); err == nil {
				var back [requestHeaderLen]byte
				r.encode(&back)
				if back != h {
					t.Fatalf("request %+v does not round-trip: %x vs %x", r, back, h)
				}
			}
		}
		c := newConn(s, fuzzConn{bytes.NewReader(data)}, "fuzz")
		c.exp = exps[int(mode&3)%len(exps)]
		c.strict = mode&4 != 0
		c.structured = mode&8 != 0
		c.blockStatus = c.structured && mode&16 != 0
		if fm, ok := c.exp.Member.(*fakeMember); ok {
			if mode&32 != 0 {
				c.session = &fakeSession{f: fm}
			}
			if c.structured && mode&64 != 0 {
				c.dirty = 3
			}
		}
		c.readAll()
		c.drain()
		if strings.Contains(lb.String(), "panic") {
			t.Fatalf("a request panicked:\n%s", lb.String())
		}
	})
}

// FuzzQueryDirty feeds the client side of the dirty query arbitrary
// server bytes: it must fail cleanly, never panic or loop.
func FuzzQueryDirty(f *testing.F) {
	optReply := func(opt, typ uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	greeting := binary.BigEndian.AppendUint64(nil, magicInit)
	greeting = binary.BigEndian.AppendUint64(greeting, magicOpt)
	greeting = binary.BigEndian.AppendUint16(greeting, flagFixedNewstyle|flagNoZeroes)
	meta := append(binary.BigEndian.AppendUint32(nil, metaIDDirty), "ddraid:dirty/0"...)
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, 8192)
	info = binary.BigEndian.AppendUint16(info, FlagHasFlags)
	chunk := func(cookie uint64, descs ...uint32) []byte {
		b := binary.BigEndian.AppendUint32(nil, magicStructReply)
		b = binary.BigEndian.AppendUint16(b, replyFlagDone)
		b = binary.BigEndian.AppendUint16(b, replyTypeBlockStatus)
		b = binary.BigEndian.AppendUint64(b, cookie)
		b = binary.BigEndian.AppendUint32(b, uint32(4+4*len(descs)))
		b = binary.BigEndian.AppendUint32(b, metaIDDirty)
		for _, d := range descs {
			b = binary.BigEndian.AppendUint32(b, d)
		}
		return b
	}
	valid := append(append(append(append(append(append([]byte{}, greeting...),
		optReply(optStructuredReply, repAck, nil)...),
		optReply(optSetMetaContext, repMetaContext, meta)...),
		optReply(optSetMetaContext, repAck, nil)...),
		append(optReply(optGo, repInfo, info), optReply(optGo, repAck, nil)...)...),
		chunk(1, 4096, 1, 4096, 0)...)
	c := &Client{nc: fuzzConn{bytes.NewReader(nil)}, br: bufio.NewReader(bytes.NewReader(valid))}
	ext, err := c.queryDirty(ClientOptions{Export: "d"}, 0)
	if err != nil || len(ext) != 2 || ext[0] != (blockdev.Extent{Length: 4096, Flags: StateDirty}) || ext[1] != (blockdev.Extent{Length: 4096}) {
		f.Fatalf("the valid transcript gives %v, %v", ext, err)
	}
	f.Add(valid)
	f.Add(append(valid[:len(valid)-20], chunk(1, 0, 1)...))
	f.Add(append(valid[:len(valid)-20], chunk(7, 4096, 1)...))
	f.Add(greeting)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &Client{nc: fuzzConn{bytes.NewReader(nil)}, br: bufio.NewReader(bytes.NewReader(data))}
		ext, err := c.queryDirty(ClientOptions{Export: "d"}, 0)
		if err != nil {
			return
		}
		var sum int64
		for _, e := range ext {
			if e.Length <= 0 {
				t.Fatalf("extent of length %d", e.Length)
			}
			sum += e.Length
		}
		if sum != c.info.Size {
			t.Fatalf("extents cover %d bytes of a %d-byte export", sum, c.info.Size)
		}
	})
}
