package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddraid/ddraid/internal/certs"
	"github.com/ddraid/ddraid/lockd"
)

// waitLimit bounds every wait for something that must happen; it is a
// deadlock guard, never a measure of speed.
const waitLimit = 30 * time.Second

// pki is a test CA with node certificates issued on demand.
type pki struct {
	ca *certs.CA
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca, err := certs.NewCA("lockd test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{ca: ca}
}

func (p *pki) node(t testing.TB, name string) tls.Certificate {
	t.Helper()
	kp, err := p.ca.IssueNode(name)
	if err != nil {
		t.Fatal(err)
	}
	return kp.TLSCertificate()
}

func (p *pki) issue(t testing.TB, req certs.Request) tls.Certificate {
	t.Helper()
	kp, err := p.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	return kp.TLSCertificate()
}

// msg is one delivered frame.
type msg struct {
	from  lockd.NodeID
	frame []byte
}

// inbox collects what a transport's handler receives.
type inbox struct {
	ch chan msg
}

func newInbox() *inbox { return &inbox{ch: make(chan msg, 1<<16)} }

func (b *inbox) handle(from lockd.NodeID, frame []byte) { b.ch <- msg{from, frame} }

// next returns the next delivered frame, failing the test after waitLimit.
func (b *inbox) next(t testing.TB) msg {
	t.Helper()
	select {
	case m := <-b.ch:
		return m
	case <-time.After(waitLimit):
		t.Fatal("no frame delivered")
		return msg{}
	}
}

// empty fails if anything was delivered.
func (b *inbox) empty(t testing.TB) {
	t.Helper()
	select {
	case m := <-b.ch:
		t.Fatalf("unexpected frame %q from %s", m.frame, m.from)
	default:
	}
}

// logRecorder is a slog handler that keeps every record's level and
// message, with attributes, for assertions.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
	attrs []slog.Attr
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var sb strings.Builder
	sb.WriteString(rec.Level.String() + " " + rec.Message)
	for _, a := range r.attrs {
		sb.WriteString(" " + a.String())
	}
	rec.Attrs(func(a slog.Attr) bool {
		sb.WriteString(" " + a.String())
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, sb.String())
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &logView{r, as}
}
func (r *logRecorder) WithGroup(string) slog.Handler { return r }

// logView is the recorder with attributes added by Logger.With.
type logView struct {
	r     *logRecorder
	attrs []slog.Attr
}

func (v *logView) Enabled(context.Context, slog.Level) bool { return true }
func (v *logView) Handle(ctx context.Context, rec slog.Record) error {
	rec = rec.Clone()
	rec.AddAttrs(v.attrs...)
	return v.r.Handle(ctx, rec)
}
func (v *logView) WithAttrs(as []slog.Attr) slog.Handler {
	return &logView{v.r, append(append([]slog.Attr(nil), v.attrs...), as...)}
}
func (v *logView) WithGroup(string) slog.Handler { return v }

// find reports whether a logged line contains every one of the parts.
func (r *logRecorder) find(parts ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
next:
	for _, l := range r.lines {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		return true
	}
	return false
}

// waitLog waits until a line with every part is logged.
func (r *logRecorder) waitLog(t testing.TB, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !r.find(parts...) {
		if time.Now().After(deadline) {
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no log line with %q; got:\n%s", parts, strings.Join(r.lines, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// node starts a transport for name with an inbox; it is closed at cleanup.
func (p *pki) start(t testing.TB, name string, mod func(*Config)) (*Transport, *inbox) {
	t.Helper()
	in := newInbox()
	cfg := Config{
		Name:        lockd.NodeID(name),
		Certificate: p.node(t, name),
		CA:          p.ca.Pool(),
		Handler:     in.handle,
		Logger:      discard,
	}
	if mod != nil {
		mod(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, in
}

// connect makes every transport a peer of every other.
func connect(t testing.TB, ts ...*Transport) {
	t.Helper()
	for _, a := range ts {
		for _, b := range ts {
			if a != b {
				if err := a.SetPeer(b.Name(), b.Addr().String()); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// rawDial opens a TLS connection to a transport with an arbitrary client
// certificate (or none), for tests that misbehave on purpose.
func rawDial(t testing.TB, tr *Transport, roots *certs.CA, cert *tls.Certificate) *tls.Conn {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots.Pool(), ServerName: string(tr.Name()), MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: waitLimit}, Config: cfg}
	c, err := d.DialContext(context.Background(), "tcp", tr.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.(*tls.Conn).SetDeadline(time.Now().Add(waitLimit))
	t.Cleanup(func() { c.Close() })
	return c.(*tls.Conn)
}

// frameBytes encodes payload as one frame.
func frameBytes(payload []byte) []byte {
	return append(appendFrameHeader(nil, len(payload)), payload...)
}

// readHelloAck reads the acceptor's answer to a hello.
func readHelloAck(c net.Conn) (string, error) {
	f, err := readFrame(c, helloMaxLen)
	if err != nil {
		return "", err
	}
	return parseHello(f)
}

// waitClosed reads until the connection ends and returns what ended it;
// any data read is an error of the test.
func waitClosed(t testing.TB, c net.Conn) {
	t.Helper()
	var buf bytes.Buffer
	_, err := io.Copy(&buf, c)
	if buf.Len() > 0 {
		t.Fatalf("acceptor sent %d unexpected bytes", buf.Len())
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("acceptor did not close the connection")
	}
}
