package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// fuzzServer is a server with two exports that is never started; the fuzz
// targets drive its handshake and request handling directly.
func fuzzServer(tb testing.TB, lb *logBuffer) *Server {
	s, err := NewServer(Config{
		MaxPayload:  64 << 10,
		MaxInFlight: 4,
		Logger:      slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range []Export{
		{Name: "disk", Description: "fuzz disk", Device: blockdev.NewMem(1<<20, 512)},
		{Name: "ro", Device: blockdev.NewMem(64<<10, 4096), ReadOnly: true},
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

func FuzzHandshake(f *testing.F) {
	fixed := uint32(flagCFixedNewstyle | flagCNoZeroes)
	f.Add(seedOptions(fixed, optBytes(optList, nil), optBytes(optAbort, nil)))
	f.Add(seedOptions(fixed, optBytes(optInfo, goData("disk", infoName, infoBlockSize)), optBytes(optGo, goData("disk", infoName, infoBlockSize))))
	f.Add(seedOptions(fixed, optBytes(optStructuredReply, nil), optBytes(optGo, goData(""))))
	f.Add(seedOptions(0, optBytes(optExportName, []byte("ro"))))
	f.Add(seedOptions(fixed, optBytes(optGo, []byte{0, 0, 0, 9, 'd'})))
	// An option claiming a payload far beyond the limit (the input ends
	// first); large real payloads would slow the fuzzer down.
	f.Add(seedOptions(fixed, optBytes(0xffffffff, nil)[:12], []byte{0, 1, 0, 0, 1, 2, 3}))
	f.Add([]byte("\x00\x00\x00\x03IHAVEOPT\x00\x00\x00\x07\xff\xff\xff\xff"))

	lb := &logBuffer{}
	s := fuzzServer(f, lb)
	f.Fuzz(func(t *testing.T, data []byte) {
		h := handshake{
			s:        s,
			r:        bufio.NewReader(bytes.NewReader(data)),
			w:        bufio.NewWriter(io.Discard),
			shutting: func() bool { return false },
		}
		n, err := h.run()
		if err == nil && n.exp == nil {
			t.Fatal("handshake succeeded without an export")
		}
		if err != nil && n.exp != nil {
			t.Fatal("handshake failed but chose an export")
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

	lb := &logBuffer{}
	s := fuzzServer(f, lb)
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
		c.exp = exps[int(mode)%len(exps)]
		c.strict = mode&2 != 0
		c.readLoop()
		c.drain()
		if strings.Contains(lb.String(), "panic") {
			t.Fatalf("a request panicked:\n%s", lb.String())
		}
	})
}
