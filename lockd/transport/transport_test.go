package transport

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/internal/certs"
	"github.com/ddraid/ddraid/lockd"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seqFrame is a data frame carrying its sender and a sequence number, so
// receivers can check order and completeness.
func seqFrame(from lockd.NodeID, seq uint32, size int) []byte {
	f := make([]byte, 4+len(from), max(size, 4+len(from)))
	binary.BigEndian.PutUint32(f, seq)
	copy(f[4:], from)
	return f[:cap(f)]
}

func parseSeq(t testing.TB, m msg) uint32 {
	t.Helper()
	if len(m.frame) < 4+len(m.from) || lockd.NodeID(m.frame[4:4+len(m.from)]) != m.from {
		t.Fatalf("frame from %s does not name its sender: %q", m.from, m.frame)
	}
	return binary.BigEndian.Uint32(m.frame)
}

func TestManyFramesBothWays(t *testing.T) {
	p := newPKI(t)
	names := []lockd.NodeID{"n1", "n2", "n3"}
	var trs []*Transport
	var ins []*inbox
	for _, n := range names {
		tr, in := p.start(t, string(n), nil)
		trs, ins = append(trs, tr), append(ins, in)
	}
	connect(t, trs...)

	const perPeer = 3000
	// Every node sends to every node, itself included, with frames of
	// varying size interleaved across destinations.
	errs := make(chan error, len(trs))
	for i, tr := range trs {
		go func() {
			for seq := range uint32(perPeer) {
				for _, to := range names {
					size := 8 + int(seq%97)*int(seq%13)
					if err := tr.Send(to, seqFrame(names[i], seq, size)); err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range trs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, in := range ins {
		next := map[lockd.NodeID]uint32{}
		for range perPeer * len(names) {
			m := in.next(t)
			seq := parseSeq(t, m)
			if seq != next[m.from] {
				t.Fatalf("%s: frame %d from %s, want %d", names[i], seq, m.from, next[m.from])
			}
			if want := max(8+int(seq%97)*int(seq%13), 4+len(m.from)); len(m.frame) != want {
				t.Fatalf("%s: frame %d from %s has %d bytes, want %d", names[i], seq, m.from, len(m.frame), want)
			}
			next[m.from]++
		}
		in.empty(t)
	}
	for i, tr := range trs {
		st := tr.Stats()
		if st.Sent != perPeer*3 || st.Received != perPeer*2 || st.Dropped != 0 {
			t.Errorf("%s stats %+v", names[i], st)
		}
	}
}

func TestReconnectAfterPeerRestart(t *testing.T) {
	p := newPKI(t)
	a, _ := p.start(t, "a", func(c *Config) { c.BackoffMax = 50 * time.Millisecond })
	b, bin := p.start(t, "b", nil)
	addr := b.Addr().String()
	connect(t, a, b)

	if err := a.Send("b", []byte("before")); err != nil {
		t.Fatal(err)
	}
	if m := bin.next(t); m.from != "a" || string(m.frame) != "before" {
		t.Fatalf("got %q from %s", m.frame, m.from)
	}
	b.Close()

	// The restarted b listens on the same address with a new certificate.
	b2, b2in := p.start(t, "b", func(c *Config) { c.Listen = addr })
	_ = b2
	// Frames sent while a has not noticed the restart may be lost; keep
	// sending numbered frames until one arrives, then check that what
	// arrives is in order and nothing after the first one is missing.
	deadline := time.Now().Add(waitLimit)
	var first uint32
	got := false
	for seq := uint32(0); !got; seq++ {
		if time.Now().After(deadline) {
			t.Fatal("no frame reached the restarted peer")
		}
		if err := a.Send("b", seqFrame("a", seq, 16)); err != nil && !errors.Is(err, ErrQueueFull) {
			t.Fatal(err)
		}
		select {
		case m := <-b2in.ch:
			first, got = parseSeq(t, m), true
		case <-time.After(2 * time.Millisecond):
		}
	}
	// Drain the frames a had queued beyond first, then send a marker.
	if err := a.Send("b", []byte("after")); err != nil {
		t.Fatal(err)
	}
	want := first + 1
	for {
		m := b2in.next(t)
		if string(m.frame) == "after" {
			break
		}
		if seq := parseSeq(t, m); seq != want {
			t.Fatalf("after reconnect got frame %d, want %d", seq, want)
		}
		want++
	}
}

func TestHandshakeRefusals(t *testing.T) {
	p := newPKI(t)
	rogue := newPKI(t)
	log := &logRecorder{}
	b, bin := p.start(t, "b", func(c *Config) { c.Logger = slog.New(log) })
	n1 := p.node(t, "n1")
	rogueN1 := rogue.node(t, "n1")
	serverOnly := p.issue(t, certs.Request{CommonName: "n1", Usage: certs.Server})

	tests := []struct {
		name   string
		cert   *tls.Certificate
		hello  []byte
		accept bool
		log    string
	}{
		{"valid", &n1, helloFrame("n1"), true, ""},
		{"claims another name", &n1, helloFrame("n2"), false, `claims to be "n2"`},
		{"claims acceptor's name", ptr(p.node(t, "b")), helloFrame("b"), false, "own name"},
		{"certificate from another CA", &rogueN1, helloFrame("n1"), false, "TLS handshake"},
		{"no client certificate", nil, helloFrame("n1"), false, "TLS handshake"},
		{"server-only certificate", &serverOnly, helloFrame("n1"), false, "TLS handshake"},
		{"bad magic", &n1, frameBytes([]byte("XXXX\x01\x02n1")), false, "no magic"},
		{"bad version", &n1, frameBytes([]byte("DDLK\x07\x02n1")), false, "protocol version 7"},
		{"name length lies", &n1, frameBytes([]byte("DDLK\x01\x05n1")), false, "name length 5"},
		{"bad name bytes", &n1, frameBytes([]byte("DDLK\x01\x02n\x00")), false, "not allowed"},
		{"oversized hello", &n1, binary.BigEndian.AppendUint32(nil, 1<<30), false, "frame too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := rawDial(t, b, p.ca, tt.cert)
			// A TLS 1.3 client finishes its handshake before the server
			// has checked the client certificate; a refusal shows on the
			// first read.
			if _, err := c.Write(tt.hello); err != nil && tt.accept {
				t.Fatal(err)
			}
			c.Write(frameBytes([]byte("payload " + tt.name)))
			name, err := readHelloAck(c)
			if tt.accept {
				if err != nil || name != "b" {
					t.Fatalf("ack: %q, %v", name, err)
				}
				if m := bin.next(t); m.from != "n1" || string(m.frame) != "payload "+tt.name {
					t.Fatalf("delivered %q from %s", m.frame, m.from)
				}
				return
			}
			if err == nil {
				t.Fatalf("acceptor answered the hello as %q", name)
			}
			log.waitLog(t, "WARN", "refused connection", tt.log)
			bin.empty(t)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestDialerChecksPeerIdentity(t *testing.T) {
	p := newPKI(t)
	rogue := newPKI(t)
	a, _ := p.start(t, "a", nil)
	b, _ := p.start(t, "b", nil)
	// c's certificate comes from another CA.
	c, _ := rogue.start(t, "c", func(cfg *Config) { cfg.CA = p.ca.Pool() })

	tests := []struct {
		name       string
		peer       lockd.NodeID
		addr, want string
	}{
		{"valid", "b", b.Addr().String(), ""},
		{"address of another node", "x", b.Addr().String(), "certificate is valid for b, not x"},
		{"untrusted CA", "c", c.Addr().String(), "unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr := newPeer(a, tt.peer, tt.addr)
			defer pr.stop()
			conn, err := pr.dial()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				conn.Close()
				return
			}
			if err == nil {
				conn.Close()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestOversizeFrameClosesConnection(t *testing.T) {
	p := newPKI(t)
	log := &logRecorder{}
	const limit = 1000
	b, bin := p.start(t, "b", func(c *Config) { c.MaxFrame = limit; c.Logger = slog.New(log) })
	a, _ := p.start(t, "a", func(c *Config) { c.MaxFrame = limit })
	connect(t, a, b)

	if err := a.Send("b", make([]byte, limit+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("Send(limit+1): %v", err)
	}
	if err := a.Send("b", make([]byte, limit)); err != nil {
		t.Fatal(err)
	}
	if m := bin.next(t); len(m.frame) != limit {
		t.Fatalf("got %d bytes", len(m.frame))
	}

	tests := []struct {
		name string
		data []byte
		log  string
	}{
		{"length over the limit", binary.BigEndian.AppendUint32(nil, limit+1), "frame too large"},
		{"huge length", []byte{0xff, 0xff, 0xff, 0xff}, "frame too large"},
		{"truncated frame", append(binary.BigEndian.AppendUint32(nil, 10), "abc"...), "unexpected EOF"},
	}
	n1 := p.node(t, "n1")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := rawDial(t, b, p.ca, &n1)
			if _, err := c.Write(helloFrame("n1")); err != nil {
				t.Fatal(err)
			}
			if _, err := readHelloAck(c); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(frameBytes([]byte("ok"))); err != nil {
				t.Fatal(err)
			}
			if m := bin.next(t); string(m.frame) != "ok" {
				t.Fatalf("got %q", m.frame)
			}
			if _, err := c.Write(tt.data); err != nil {
				t.Fatal(err)
			}
			if tt.log == "unexpected EOF" {
				c.CloseWrite()
			}
			waitClosed(t, c)
			log.waitLog(t, "ERROR", "closing peer connection", "peer=n1", tt.log)
			bin.empty(t)
		})
	}
	// The transport still works for well-behaved peers.
	if err := a.Send("b", []byte("still")); err != nil {
		t.Fatal(err)
	}
	if m := bin.next(t); string(m.frame) != "still" {
		t.Fatalf("got %q", m.frame)
	}
}

func TestQueueFullDrops(t *testing.T) {
	p := newPKI(t)
	// An address nobody listens on: the peer never connects, so nothing
	// drains its queue.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	a, _ := p.start(t, "a", func(c *Config) { c.QueueLen = 4 })
	if err := a.SetPeer("z", dead); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := a.Send("z", []byte{byte(i)}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if err := a.Send("z", []byte{4}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("fifth send: %v", err)
	}
	if st := a.Stats(); st.Dropped != 1 || st.Sent != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSendErrors(t *testing.T) {
	p := newPKI(t)
	a, ain := p.start(t, "a", nil)
	tests := []struct {
		to   lockd.NodeID
		want error
	}{
		{"nobody", ErrUnknownPeer},
		{"", ErrUnknownPeer},
	}
	for _, tt := range tests {
		if err := a.Send(tt.to, []byte("x")); !errors.Is(err, tt.want) {
			t.Errorf("Send(%q) = %v, want %v", tt.to, err, tt.want)
		}
	}
	if err := a.Send("a", []byte("self")); err != nil {
		t.Fatal(err)
	}
	if m := ain.next(t); m.from != "a" || string(m.frame) != "self" {
		t.Fatalf("self delivery: %q from %s", m.frame, m.from)
	}
	for _, bad := range []struct {
		name lockd.NodeID
		addr string
	}{
		{"a", "127.0.0.1:1"}, {"bad name", "127.0.0.1:1"}, {"z", "no port"}, {"", "127.0.0.1:1"},
	} {
		if err := a.SetPeer(bad.name, bad.addr); err == nil {
			t.Errorf("SetPeer(%q, %q) succeeded", bad.name, bad.addr)
		}
	}
	if err := a.SetPeer("z", "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPeer("z", "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if got := a.Peers(); len(got) != 1 || got[0] != "z" {
		t.Fatalf("Peers() = %v", got)
	}
	a.RemovePeer("z")
	a.RemovePeer("a") // this node cannot be removed
	if err := a.Send("z", []byte("x")); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("Send after RemovePeer: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Send("a", []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if err := a.SetPeer("z", "127.0.0.1:1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetPeer after Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	p := newPKI(t)
	good := func() Config {
		return Config{Name: "a", Certificate: p.node(t, "a"), CA: p.ca.Pool(), Handler: func(lockd.NodeID, []byte) {}, Logger: discard}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "node name"},
		{"no CA", func(c *Config) { c.CA = nil }, "CA"},
		{"no certificate", func(c *Config) { c.Certificate = tls.Certificate{} }, "Certificate"},
		{"certificate for another node", func(c *Config) { c.Certificate = p.node(t, "b") }, `not for node "a"`},
		{"frame limit", func(c *Config) { c.MaxFrame = MaxFrameLimit + 1 }, "MaxFrame"},
		{"backoff order", func(c *Config) { c.BackoffMin = time.Second; c.BackoffMax = time.Millisecond }, "BackoffMax"},
		{"listen address", func(c *Config) { c.Listen = "256.0.0.1:0" }, "listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good()
			tt.mod(&cfg)
			tr, err := New(cfg)
			if err == nil {
				tr.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	tr, err := New(good())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if host, _, _ := net.SplitHostPort(tr.Addr().String()); host != "127.0.0.1" {
		t.Errorf("default listen address %s is not loopback", tr.Addr())
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"n1", true},
		{"node-1.example_x", true},
		{strings.Repeat("a", MaxNameLen), true},
		{strings.Repeat("a", MaxNameLen+1), false},
		{"", false},
		{"a b", false},
		{"ü", false},
		{"a/b", false},
	}
	for _, tt := range tests {
		if err := ValidName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v", tt.name, err)
		}
	}
}

func TestHelloRoundTrip(t *testing.T) {
	for _, name := range []string{"a", "n1", strings.Repeat("x", MaxNameLen)} {
		f := helloFrame(name)
		p, err := readFrame(strings.NewReader(string(f)), helloMaxLen)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseHello(p)
		if err != nil || got != name {
			t.Fatalf("parseHello(helloFrame(%q)) = %q, %v", name, got, err)
		}
	}
}

// BenchmarkSendReceive measures one-way throughput of pipelined frames
// between two transports on loopback.
func BenchmarkSendReceive(b *testing.B) {
	for _, size := range []int{64, 1024} {
		b.Run(fmt.Sprintf("frame%d", size), func(b *testing.B) {
			p := newPKI(b)
			x, _ := p.start(b, "x", nil)
			y, yin := p.start(b, "y", nil)
			connect(b, x, y)
			frame := make([]byte, size)
			done := make(chan struct{})
			go func() {
				for range b.N {
					<-yin.ch
				}
				close(done)
			}()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				for {
					err := x.Send("y", frame)
					if err == nil {
						break
					}
					if !errors.Is(err, ErrQueueFull) {
						b.Fatal(err)
					}
					time.Sleep(10 * time.Microsecond)
				}
			}
			<-done
		})
	}
}

// TestReceiveChannel uses the lockd.Transport face: no Handler, frames on
// Receive, and Send copies so the caller may reuse its buffer at once.
func TestReceiveChannel(t *testing.T) {
	p := newPKI(t)
	a, _ := p.start(t, "a", nil)
	b, _ := p.start(t, "b", func(c *Config) { c.Handler = nil; c.QueueLen = 1 })
	connect(t, a, b)
	var lt lockd.Transport = b
	if a.Receive() != nil {
		t.Fatal("Receive is not nil with a Handler")
	}
	buf := []byte("first")
	if err := a.Send("b", buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXX")
	if err := b.Send("b", []byte("self")); err != nil {
		t.Fatal(err)
	}
	got := map[string]lockd.NodeID{}
	for range 2 {
		select {
		case f := <-lt.Receive():
			got[string(f.Data)] = f.From
		case <-time.After(waitLimit):
			t.Fatal("no frame on Receive")
		}
	}
	if got["first"] != "a" || got["self"] != "b" || len(got) != 2 {
		t.Fatalf("received %v", got)
	}
	// Close does not wait for a reader that stopped reading (the channel
	// holds one frame; the handler blocks on the next).
	for range 3 {
		if err := a.Send("b", []byte("unread")); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
}

// BenchmarkRoundTrip measures one frame there and one back (a lock request
// and its grant) between two transports on loopback, one at a time.
func BenchmarkRoundTrip(b *testing.B) {
	p := newPKI(b)
	x, xin := p.start(b, "x", nil)
	var y *Transport
	y, _ = p.start(b, "y", func(c *Config) {
		c.Handler = func(from lockd.NodeID, f []byte) {
			if err := y.Send(from, f); err != nil {
				b.Error(err)
			}
		}
	})
	connect(b, x, y)
	frame := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := x.Send("y", frame); err != nil {
			b.Fatal(err)
		}
		xin.next(b)
	}
}

// TestPeerMoves: a peer that comes back on another address is reached
// there once SetPeer says so; the old address is no longer dialled.
func TestPeerMoves(t *testing.T) {
	p := newPKI(t)
	a, _ := p.start(t, "a", nil)
	b1, b1in := p.start(t, "b", nil)
	connect(t, a, b1)
	if err := a.Send("b", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if m := b1in.next(t); string(m.frame) != "one" {
		t.Fatalf("got %q", m.frame)
	}
	b2, b2in := p.start(t, "b", nil)
	if err := a.SetPeer("b", b2.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if err := a.Send("b", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if m := b2in.next(t); string(m.frame) != "two" || m.from != "a" {
		t.Fatalf("got %q from %s", m.frame, m.from)
	}
	b1in.empty(t)
}

// TestHandshakeLimit: connections that never finish their handshake
// occupy at most MaxHandshakes slots; one more is closed at once, and a
// slot freed lets a real peer in.
func TestHandshakeLimit(t *testing.T) {
	p := newPKI(t)
	b, bin := p.start(t, "b", func(c *Config) { c.MaxHandshakes = 1; c.HandshakeTimeout = time.Hour })
	dial := func() net.Conn {
		c, err := net.Dial("tcp", b.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	idle := dial()
	// The acceptor registers a connection before accepting the next, but
	// the dial returns before that: wait until idle holds the slot.
	deadline := time.Now().Add(waitLimit)
	for {
		b.mu.RLock()
		n := len(b.pending)
		b.mu.RUnlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle connection never registered")
		}
		time.Sleep(time.Millisecond)
	}
	extra := dial()
	extra.SetDeadline(time.Now().Add(waitLimit))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection over the limit was served")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection over the limit was not closed")
	}
	idle.Close()
	a, _ := p.start(t, "a", nil)
	if err := a.SetPeer("b", b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if err := a.Send("b", []byte("in")); err != nil {
		t.Fatal(err)
	}
	if m := bin.next(t); string(m.frame) != "in" {
		t.Fatalf("got %q", m.frame)
	}
}

// TestAddressLikeNames: node names that parse as IP addresses work both
// ways (their certificates carry them as IP SANs).
func TestAddressLikeNames(t *testing.T) {
	p := newPKI(t)
	a, ain := p.start(t, "10.1.2.3", nil)
	b, bin := p.start(t, "b", nil)
	connect(t, a, b)
	if err := a.Send("b", []byte("to b")); err != nil {
		t.Fatal(err)
	}
	if err := b.Send("10.1.2.3", []byte("to a")); err != nil {
		t.Fatal(err)
	}
	if m := bin.next(t); m.from != "10.1.2.3" || string(m.frame) != "to b" {
		t.Fatalf("b got %q from %s", m.frame, m.from)
	}
	if m := ain.next(t); m.from != "b" || string(m.frame) != "to a" {
		t.Fatalf("a got %q from %s", m.frame, m.from)
	}
}
