package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every blocking step of a test so that a bug fails the
// test instead of hanging it.
const testTimeout = 20 * time.Second

// logBuffer collects a test server's log; it is printed when the test fails
// and can be searched by the test.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) contains(s string) bool { return bytes.Contains([]byte(l.String()), []byte(s)) }

// testServer is a Server on a loopback TCP listener and, optionally, a unix
// socket, shut down when the test ends.
type testServer struct {
	*Server
	addr     string // TCP host:port
	sock     string // unix socket path, "" if none
	log      *logBuffer
	serveErr chan error
	shutOnce sync.Once
	// flushMayFail accepts a Shutdown error from devices that fail Flush.
	flushMayFail bool
}

type serverOpt func(*Config)

func withMaxPayload(n int) serverOpt  { return func(c *Config) { c.MaxPayload = n } }
func withMaxInFlight(n int) serverOpt { return func(c *Config) { c.MaxInFlight = n } }
func withMaxConns(n int) serverOpt    { return func(c *Config) { c.MaxConnections = n } }
func withHandshake(d time.Duration) serverOpt {
	return func(c *Config) { c.HandshakeTimeout = d }
}
func withTLS(mode TLSMode, cfg *tls.Config) serverOpt {
	return func(c *Config) { c.TLSMode, c.TLS = mode, cfg }
}

// newTestLogger logs text into lb, at Debug level when debug is set and
// Info otherwise.
func newTestLogger(lb *logBuffer, debug bool) *slog.Logger {
	lvl := slog.LevelInfo
	if debug {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: lvl}))
}

// startServer serves exps on 127.0.0.1:0 (and a unix socket when unix is
// set) until the test ends.
func startServer(t testing.TB, unix bool, exps []Export, opts ...serverOpt) *testServer {
	t.Helper()
	lb := &logBuffer{}
	cfg := Config{Logger: slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	for _, e := range exps {
		if err := s.AddExport(e); err != nil {
			t.Fatalf("AddExport(%q): %v", e.Name, err)
		}
	}
	ts := &testServer{Server: s, log: lb, serveErr: make(chan error, 2)}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ts.addr = l.Addr().String()
	go func() { ts.serveErr <- s.Serve(l) }()
	n := 1
	if unix {
		ts.sock = filepath.Join(shortTempDir(t), "nbd.sock")
		ul, err := Listen("unix:" + ts.sock)
		if err != nil {
			t.Fatalf("Listen unix: %v", err)
		}
		go func() { ts.serveErr <- s.Serve(ul) }()
		n++
	}
	t.Cleanup(func() {
		ts.shutdown(t)
		for i := 0; i < n; i++ {
			select {
			case err := <-ts.serveErr:
				if err != nil {
					t.Errorf("Serve returned %v after Shutdown, want nil", err)
				}
			case <-time.After(testTimeout):
				t.Errorf("Serve did not return after Shutdown")
			}
		}
		if t.Failed() {
			t.Logf("server log:\n%s", lb.String())
		}
	})
	return ts
}

// shutdown shuts the server down once, failing the test on error.
func (ts *testServer) shutdown(t testing.TB) {
	ts.shutOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := ts.Shutdown(ctx); err != nil && !(ts.flushMayFail && ctx.Err() == nil) {
			t.Errorf("Shutdown: %v", err)
		}
	})
}

// shortTempDir returns a temporary directory with a path short enough for a
// unix socket (108 bytes), removed when the test ends.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatalf("MkdirTemp: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// dial connects a Client to the test server's TCP address.
func dial(t testing.TB, addr, export string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, export)
	if err != nil {
		t.Fatalf("Dial(%s, %q): %v", addr, export, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// memExport returns an export of a fresh memory device.
func memExport(name string, size int64, bs int) (Export, *blockdev.Mem) {
	m := blockdev.NewMem(size, bs)
	return Export{Name: name, Description: "memory " + name, Device: m}, m
}

// snapshot copies a memory device's content through its lock, which
// orders the copy after the server's writes for the race detector (the
// network round trip that really orders them is invisible to it).
func snapshot(m *blockdev.Mem) []byte {
	b := make([]byte, m.Size())
	if _, err := m.ReadAt(b, 0); err != nil {
		panic(err)
	}
	return b
}

// pattern returns n bytes derived from seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

// --- raw protocol access for handshake and framing tests ---

// rawConn speaks the protocol byte by byte.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func rawDial(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawConn) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.br, b); err != nil {
		r.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server greeting, checks it, and sends client flags.
func (r *rawConn) greet(cflags uint32) {
	r.t.Helper()
	g := r.read(18)
	if m := binary.BigEndian.Uint64(g); m != magicInit {
		r.t.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(g[8:]); m != magicOpt {
		r.t.Fatalf("greeting IHAVEOPT %#x", m)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		r.t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], cflags)
	r.write(b[:])
}

func optBytes(opt uint32, data []byte) []byte {
	b := make([]byte, optHeaderLen+len(data))
	binary.BigEndian.PutUint64(b, magicOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[optHeaderLen:], data)
	return b
}

func (r *rawConn) sendOpt(opt uint32, data []byte) {
	r.t.Helper()
	r.write(optBytes(opt, data))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (r *rawConn) readOptReply() optReply {
	r.t.Helper()
	h := r.read(optReplyHeaderLen)
	if m := binary.BigEndian.Uint64(h); m != magicOptReply {
		r.t.Fatalf("option reply magic %#x", m)
	}
	return optReply{
		opt:  binary.BigEndian.Uint32(h[8:]),
		typ:  binary.BigEndian.Uint32(h[12:]),
		data: r.read(int(binary.BigEndian.Uint32(h[16:]))),
	}
}

// expectReply reads one option reply and checks its option and type.
func (r *rawConn) expectReply(opt, typ uint32) optReply {
	r.t.Helper()
	rep := r.readOptReply()
	if rep.opt != opt || rep.typ != typ {
		r.t.Fatalf("option reply (opt %d, type %#x, %q), want (opt %d, type %#x)", rep.opt, rep.typ, rep.data, opt, typ)
	}
	return rep
}

// infoReplies reads NBD_REP_INFO replies up to the final reply, which is
// returned separately.
func (r *rawConn) infoReplies(opt uint32) (infos [][]byte, final optReply) {
	r.t.Helper()
	for {
		rep := r.readOptReply()
		if rep.opt != opt {
			r.t.Fatalf("reply to option %d while waiting for %d", rep.opt, opt)
		}
		if rep.typ != repInfo {
			return infos, rep
		}
		infos = append(infos, rep.data)
	}
}

// expectEOF checks that the server closes the connection without sending
// anything more.
func (r *rawConn) expectEOF() {
	r.t.Helper()
	b, err := io.ReadAll(r.br)
	if len(b) != 0 {
		r.t.Fatalf("read %d more bytes (%x...), want the connection closed", len(b), b[:min(len(b), 32)])
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.t.Fatalf("server did not close the connection: %v", err)
		}
		// A reset is as good as a close.
	}
}

// goData builds the payload of NBD_OPT_INFO / NBD_OPT_GO.
func goData(name string, infos ...uint16) []byte {
	b := make([]byte, 4+len(name)+2+2*len(infos))
	binary.BigEndian.PutUint32(b, uint32(len(name)))
	copy(b[4:], name)
	binary.BigEndian.PutUint16(b[4+len(name):], uint16(len(infos)))
	for i, v := range infos {
		binary.BigEndian.PutUint16(b[4+len(name)+2+2*i:], v)
	}
	return b
}

// request sends a raw transmission request with an optional payload.
func (r *rawConn) request(req Request, payload []byte) {
	r.t.Helper()
	var h [requestHeaderLen]byte
	req.encode(&h)
	r.write(append(h[:], payload...))
}

// simpleReply reads a simple reply header and, when it succeeded, n bytes
// of payload.
func (r *rawConn) simpleReply(n int) (Errno, uint64, []byte) {
	r.t.Helper()
	h := r.read(replyHeaderLen)
	if m := binary.BigEndian.Uint32(h); m != magicSimpleReply {
		r.t.Fatalf("reply magic %#x", m)
	}
	errno := Errno(binary.BigEndian.Uint32(h[4:]))
	cookie := binary.BigEndian.Uint64(h[8:])
	var data []byte
	if errno == 0 && n > 0 {
		data = r.read(n)
	}
	return errno, cookie, data
}

// rawGo runs a fixed newstyle handshake with NBD_OPT_GO for name.
func rawGo(t testing.TB, addr, name string, infos ...uint16) *rawConn {
	t.Helper()
	r := rawDial(t, addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)
	r.sendOpt(optGo, goData(name, infos...))
	if _, final := r.infoReplies(optGo); final.typ != repAck {
		t.Fatalf("NBD_OPT_GO %q: final reply %#x %q", name, final.typ, final.data)
	}
	return r
}

// --- test devices ---

// gateDevice wraps a device; when armed, each data call waits until the
// test releases it, after announcing itself on entered.
type gateDevice struct {
	blockdev.Device
	armed   atomic.Bool
	entered chan string
	release chan struct{}
	flushes atomic.Int64
	active  atomic.Int64
	maxSeen atomic.Int64
}

func newGateDevice(d blockdev.Device) *gateDevice {
	return &gateDevice{Device: d, entered: make(chan string, 1024), release: make(chan struct{})}
}

// enter counts a call as active (until the caller's deferred exit) and,
// when armed, blocks it until released.
func (g *gateDevice) enter(op string, off int64) {
	n := g.active.Add(1)
	for {
		m := g.maxSeen.Load()
		if n <= m || g.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if !g.armed.Load() {
		return
	}
	g.entered <- fmt.Sprintf("%s@%d", op, off)
	<-g.release
}

func (g *gateDevice) exit() { g.active.Add(-1) }

func (g *gateDevice) ReadAt(p []byte, off int64) (int, error) {
	g.enter("read", off)
	defer g.exit()
	return g.Device.ReadAt(p, off)
}

func (g *gateDevice) WriteAt(p []byte, off int64) (int, error) {
	g.enter("write", off)
	defer g.exit()
	return g.Device.WriteAt(p, off)
}

func (g *gateDevice) Flush() error {
	g.flushes.Add(1)
	return g.Device.Flush()
}

// awaitEntered waits for a gated call to arrive.
func (g *gateDevice) awaitEntered(t testing.TB) string {
	t.Helper()
	select {
	case s := <-g.entered:
		return s
	case <-time.After(testTimeout):
		t.Fatalf("no device call arrived")
		return ""
	}
}

// selectiveGate blocks only the reads at one offset until released.
type selectiveGate struct {
	blockdev.Device
	blockOff int64
	entered  chan struct{}
	release  chan struct{}
}

func (g *selectiveGate) ReadAt(p []byte, off int64) (int, error) {
	if off == g.blockOff {
		g.entered <- struct{}{}
		<-g.release
	}
	return g.Device.ReadAt(p, off)
}

// errDevice fails every call with err.
type errDevice struct {
	blockdev.Device
	err error
}

func (d errDevice) ReadAt(p []byte, off int64) (int, error)  { return 0, d.err }
func (d errDevice) WriteAt(p []byte, off int64) (int, error) { return 0, d.err }
func (d errDevice) Flush() error                             { return d.err }
func (d errDevice) Trim(off, length int64) error             { return d.err }
func (d errDevice) Zero(off, length int64) error             { return d.err }

// countingDevice counts flushes.
type countingDevice struct {
	blockdev.Device
	flushes atomic.Int64
}

func (d *countingDevice) Flush() error {
	d.flushes.Add(1)
	return d.Device.Flush()
}
