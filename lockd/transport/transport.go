package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// Errors returned by Send and New.
var (
	// ErrUnknownPeer: Send to a name that is neither this node nor a peer
	// added with SetPeer.
	ErrUnknownPeer = errors.New("transport: unknown peer")
	// ErrQueueFull: the peer's send queue is full (it is down or slow);
	// the frame was dropped.
	ErrQueueFull = errors.New("transport: send queue full, frame dropped")
	// ErrClosed: the transport is closed.
	ErrClosed = errors.New("transport: closed")
)

// Config configures a Transport. Zero durations and sizes take the
// defaults named on each field.
type Config struct {
	// Name is this node's name. It must be a DNS SAN of Certificate and
	// pass ValidName.
	Name lockd.NodeID
	// Listen is the TCP address to accept peers on; default
	// "127.0.0.1:0" (loopback, any port). Ignored when Listener is set.
	Listen string
	// Listener, when set, is used instead of listening on Listen (socket
	// activation, tests). The transport closes it.
	Listener net.Listener
	// Certificate is this node's certificate and key; it must allow both
	// server and client authentication (certs.Node).
	Certificate tls.Certificate
	// CA holds the certificate authorities peers' certificates must chain
	// to, in both directions.
	CA *x509.CertPool
	// Handler, when set, receives every inbound frame with the name of
	// the node that sent it (authenticated by its certificate). It is
	// called from one goroutine per inbound connection, so frames from
	// one peer arrive in order (but see Transport on reconnects), and
	// frames from different peers concurrently. The
	// frame belongs to the handler. A handler that blocks stops reading
	// from that peer (TCP back-pressure), nothing else. It must not call
	// Close. When Handler is nil, frames go to the channel Receive
	// returns (QueueLen deep), with the same back-pressure when it is
	// full.
	Handler func(from lockd.NodeID, frame []byte)
	// MaxFrame is the largest frame payload in bytes, sent or received;
	// default 1 MiB, at most MaxFrameLimit. A peer that announces a
	// longer frame is disconnected.
	MaxFrame int
	// QueueLen is the number of frames queued per peer before Send
	// drops them with ErrQueueFull; default 4096.
	QueueLen int
	// MaxHandshakes bounds the inbound connections still in their TLS
	// handshake or hello; more are closed at once, so unauthenticated
	// clients cannot pile up goroutines; default 64.
	MaxHandshakes int
	// DialTimeout bounds connecting to a peer, TLS handshake and hello
	// included; default 5 s. HandshakeTimeout bounds the same on the
	// accepting side; default 5 s.
	DialTimeout      time.Duration
	HandshakeTimeout time.Duration
	// WriteTimeout bounds each flush of queued frames to a peer; a peer
	// that does not take them in time is disconnected; default 5 s.
	WriteTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between failed
	// connection attempts to a peer, which doubles from BackoffMin up to
	// BackoffMax (with jitter); defaults 20 ms and 2 s.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// Logger receives connection events; default slog.Default().
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if err := ValidName(string(c.Name)); err != nil {
		return err
	}
	if c.CA == nil {
		return errors.New("transport: Config.CA is required (mutual TLS)")
	}
	if len(c.Certificate.Certificate) == 0 {
		return errors.New("transport: Config.Certificate is required")
	}
	leaf := c.Certificate.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate.Certificate[0]); err != nil {
			return fmt.Errorf("transport: own certificate: %w", err)
		}
	}
	if err := leaf.VerifyHostname(string(c.Name)); err != nil {
		return fmt.Errorf("transport: own certificate is not for node %q: %w", c.Name, err)
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}
	switch {
	case c.MaxFrame == 0:
		c.MaxFrame = 1 << 20
	case c.MaxFrame < 0 || c.MaxFrame > MaxFrameLimit:
		return fmt.Errorf("transport: MaxFrame %d outside 1..%d", c.MaxFrame, MaxFrameLimit)
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 4096
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = 64
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.DialTimeout, 5*time.Second)
	def(&c.HandshakeTimeout, 5*time.Second)
	def(&c.WriteTimeout, 5*time.Second)
	def(&c.BackoffMin, 20*time.Millisecond)
	def(&c.BackoffMax, 2*time.Second)
	if c.BackoffMax < c.BackoffMin {
		return fmt.Errorf("transport: BackoffMax %v below BackoffMin %v", c.BackoffMax, c.BackoffMin)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Stats counts frames since the transport started.
type Stats struct {
	// Sent counts frames written to a connection (or handed to the local
	// handler for frames to self); Received frames passed to Handler from
	// peers; Dropped frames refused with ErrQueueFull.
	Sent, Received, Dropped uint64
}

// Transport moves opaque frames between named nodes over TCP with mutual
// TLS 1.3. Each peer has one persistent outbound connection, dialled and
// re-dialled (with backoff) by its own goroutine, which writes the peer's
// queued frames in batches (pipelined: Send never waits for the network).
// Inbound connections are authenticated by certificate and only read.
//
// Delivery is at most once, and in order per connection: frames queued
// for or in flight on a connection that breaks are lost, Send drops frames
// when a peer's queue is full, and right after a peer reconnects, frames
// still buffered from its old connection may be delivered after the first
// of the new. The lock protocol above retransmits and tolerates reordering.
//
// All methods are safe for concurrent use.
type Transport struct {
	cfg       Config
	log       *slog.Logger
	ln        net.Listener
	serverTLS *tls.Config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.RWMutex
	closed  bool
	peers   map[lockd.NodeID]*peer
	inbound map[lockd.NodeID]net.Conn // latest accepted connection per peer
	recv    chan lockd.Frame          // inbound frames when Config.Handler is nil
	pending map[net.Conn]struct{}

	sent, received, dropped atomic.Uint64
}

// New starts a transport: it listens (or takes Config.Listener) and
// accepts peers until Close. Frames to Config.Name itself are delivered to
// the handler through a queue like any peer's.
func New(cfg Config) (*Transport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("transport: listen %s: %w", cfg.Listen, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Transport{
		cfg: cfg,
		log: cfg.Logger.With("node", cfg.Name),
		ln:  ln,
		serverTLS: &tls.Config{
			Certificates: []tls.Certificate{cfg.Certificate},
			ClientCAs:    cfg.CA,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS13,
		},
		ctx:     ctx,
		cancel:  cancel,
		peers:   make(map[lockd.NodeID]*peer),
		inbound: make(map[lockd.NodeID]net.Conn),
		pending: make(map[net.Conn]struct{}),
	}
	if t.cfg.Handler == nil {
		t.recv = make(chan lockd.Frame, cfg.QueueLen)
		t.cfg.Handler = t.deliver
	}
	self := newPeer(t, cfg.Name, "")
	t.peers[cfg.Name] = self
	t.wg.Add(2)
	go self.runLocal()
	go t.acceptLoop()
	return t, nil
}

var _ lockd.Transport = (*Transport)(nil)

// Name returns this node's name.
func (t *Transport) Name() lockd.NodeID { return t.cfg.Name }

// Receive returns the channel inbound frames are delivered on when
// Config.Handler is nil (nil otherwise). It is never closed; stop reading
// it after Close.
func (t *Transport) Receive() <-chan lockd.Frame { return t.recv }

// deliver is the handler that feeds Receive. It gives up when the
// transport closes so that Close never waits for a reader that left.
func (t *Transport) deliver(from lockd.NodeID, frame []byte) {
	select {
	case t.recv <- lockd.Frame{From: from, Data: frame}:
	case <-t.ctx.Done():
	}
}

// Addr returns the address the transport accepts peers on.
func (t *Transport) Addr() net.Addr { return t.ln.Addr() }

// SetPeer makes name reachable at addr (host:port). A new peer gets its
// own queue and connection goroutine; a known peer whose address changed
// is replaced (frames still queued for the old address are dropped); the
// same address again changes nothing.
func (t *Transport) SetPeer(name lockd.NodeID, addr string) error {
	if err := ValidName(string(name)); err != nil {
		return err
	}
	if name == t.cfg.Name {
		return fmt.Errorf("transport: peer %q is this node", name)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("transport: peer %s address %q: %w", name, addr, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	if old := t.peers[name]; old != nil {
		if old.addr == addr {
			return nil
		}
		old.stop()
	}
	p := newPeer(t, name, addr)
	t.peers[name] = p
	t.wg.Add(1)
	go p.run()
	return nil
}

// RemovePeer forgets a peer: its connection is closed and its queued frames
// are dropped. Unknown names are ignored.
func (t *Transport) RemovePeer(name lockd.NodeID) {
	if name == t.cfg.Name {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.peers[name]; p != nil {
		p.stop()
		delete(t.peers, name)
	}
}

// Peers returns the names of the known peers, this node not included.
func (t *Transport) Peers() []lockd.NodeID {
	t.mu.RLock()
	defer t.mu.RUnlock()
	names := make([]lockd.NodeID, 0, len(t.peers))
	for n := range t.peers {
		if n != t.cfg.Name {
			names = append(names, n)
		}
	}
	return names
}

// Send queues a copy of frame for node to and returns without waiting for
// the network. It fails with ErrFrameTooLarge, ErrUnknownPeer,
// ErrQueueFull (the frame is dropped) or ErrClosed.
func (t *Transport) Send(to lockd.NodeID, frame []byte) error {
	if len(frame) > t.cfg.MaxFrame {
		return fmt.Errorf("send to %s: %w: %d bytes, limit %d", to, ErrFrameTooLarge, len(frame), t.cfg.MaxFrame)
	}
	t.mu.RLock()
	p, closed := t.peers[to], t.closed
	t.mu.RUnlock()
	switch {
	case closed:
		return ErrClosed
	case p == nil:
		return fmt.Errorf("send to %s: %w", to, ErrUnknownPeer)
	}
	select {
	case p.queue <- bytes.Clone(frame):
		return nil
	default:
		t.dropped.Add(1)
		return fmt.Errorf("send to %s: %w", to, ErrQueueFull)
	}
}

// Stats returns the frame counters.
func (t *Transport) Stats() Stats {
	return Stats{Sent: t.sent.Load(), Received: t.received.Load(), Dropped: t.dropped.Load()}
}

// Close stops accepting, closes every connection, drops queued frames and
// waits for the transport's goroutines, including handlers in progress.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.cancel()
	err := t.ln.Close()
	for _, p := range t.peers {
		p.stop()
	}
	for _, c := range t.inbound {
		c.Close()
	}
	for c := range t.pending {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("transport: close listener: %w", err)
	}
	return nil
}

// clientTLS is the configuration for dialling the node called name: its
// certificate must chain to the CA and carry name as a DNS SAN.
func (t *Transport) clientTLS(name lockd.NodeID) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{t.cfg.Certificate},
		RootCAs:      t.cfg.CA,
		ServerName:   string(name),
		MinVersion:   tls.VersionTLS13,
	}
}
