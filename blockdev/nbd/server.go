package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// Export is one device served under a name.
type Export struct {
	// Name is the export name clients ask for (the array name). It must be
	// non-empty, at most 4096 bytes and free of NUL bytes.
	Name string
	// Description is shown to clients by NBD_OPT_LIST and NBD_INFO_DESCRIPTION;
	// at most 4096 bytes.
	Description string
	// Device is the storage behind the export, shared by every connection.
	// The server never closes it.
	Device blockdev.Device
	// ReadOnly makes the server advertise NBD_FLAG_READ_ONLY and refuse
	// WRITE, TRIM and WRITE_ZEROES with EPERM.
	ReadOnly bool
	// MinBlockSize is the minimum block size advertised in
	// NBD_INFO_BLOCK_SIZE (a power of two up to 64 KiB); 0 advertises
	// Device.BlockSize(). Clients that negotiate block sizes (libnbd, qemu)
	// then never send smaller or misaligned requests, so a minimum above 512
	// breaks clients that pass sector-sized IO straight through (nbdfuse
	// under mkfs). The preferred block size is at least Device.BlockSize().
	MinBlockSize int
	// TLSOnly serves the export only to clients that upgraded with
	// NBD_OPT_STARTTLS (the spec's SELECTIVETLS mode); it needs
	// Config.TLSMode TLSOptional or TLSRequired.
	TLSOnly bool
	// Member, if set, makes this a member export of a ddraid agent: it
	// takes ddraid's private protocol (writer identity, marks, CLEAR, the
	// ddraid:dirty/SLOT contexts; see member.go), and write-type commands
	// are accepted only from connections that identified as a writer
	// (others get EPERM), so that no write bypasses the marks or fencing.
	// Reads need no identity.
	Member Member
}

// Config tunes a Server. The zero value of every field selects its default.
type Config struct {
	// MaxPayload is the largest READ or WRITE payload in bytes, advertised as
	// the maximum block size. A longer READ fails with EINVAL; a longer
	// WRITE closes the connection, because its payload cannot be skipped
	// safely. Default 32 MiB; must lie in [64 KiB, 1 GiB].
	MaxPayload int
	// MaxConnections bounds the connections open at once across all
	// listeners; extra connections are closed right after accept.
	// Default 1024.
	MaxConnections int
	// MaxInFlight bounds the requests a connection serves concurrently;
	// the connection stops reading requests while that many are in flight.
	// Default 128; at most 65536.
	MaxInFlight int
	// MaxPayloadMemory bounds the payload buffers (WRITE data received,
	// READ data to send) all connections hold together, in bytes; a
	// request that would exceed it waits until replies drain. Each
	// connection is also bounded on its own, by max(2 × MaxPayload,
	// 64 MiB) or MaxPayloadMemory if that is smaller. Default 1 GiB; at
	// least 2 × MaxPayload.
	MaxPayloadMemory int64
	// InlineLatency is how slow, on average, an export's requests may be
	// (beyond the time copying their data at memory speed takes) for a
	// connection to run them on its reader goroutine one after the other,
	// with their replies sent in batches, instead of handing each to a
	// worker goroutine: the hand-off costs more than a request served from
	// memory. A device slower than this gets parallel workers. A request
	// that runs inline for more than 10 ms after all hands the reading over
	// to a new goroutine, so a stalled device delays the requests behind it
	// by some tens of milliseconds at most. Default 10 µs: a file or memory is well within it,
	// an array that fans requests out to several members is not, and does
	// better with many requests in flight. Negative never runs requests
	// inline.
	InlineLatency time.Duration
	// HandshakeTimeout bounds the whole option phase of a connection,
	// TLS handshake included. Default 30 s.
	HandshakeTimeout time.Duration
	// TLSMode selects NOTLS (TLSOff, the default), optional TLS
	// (TLSOptional) or forced TLS (TLSRequired).
	TLSMode TLSMode
	// TLS is the server's TLS configuration (certificate, and client CAs
	// if client certificates are required; see LoadTLSConfig). Required
	// unless TLSMode is TLSOff. Its MinVersion is raised to TLS 1.2.
	TLS *tls.Config
	// Logger receives connection and protocol events. Default slog.Default().
	Logger *slog.Logger
	// OnTransmission, if set, is called as each connection finishes its
	// handshake and starts serving requests; the function it returns is
	// called once the connection has answered its last request. ddraid
	// sizes GOMAXPROCS with it (internal/procs).
	OnTransmission func() (done func())
}

// Defaults of Config.
const (
	DefaultMaxPayload       = 32 << 20
	DefaultMaxConnections   = 1024
	DefaultMaxInFlight      = 128
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultMaxPayloadMemory = 1 << 30
	DefaultInlineLatency    = 10 * time.Microsecond
	maxInFlightCap          = 1 << 16
)

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{
		MaxPayload:       DefaultMaxPayload,
		MaxConnections:   DefaultMaxConnections,
		MaxInFlight:      DefaultMaxInFlight,
		MaxPayloadMemory: DefaultMaxPayloadMemory,
		InlineLatency:    DefaultInlineLatency,
		HandshakeTimeout: DefaultHandshakeTimeout,
		Logger:           slog.Default(),
	}
}

// validate fills defaults and checks limits.
func (c *Config) validate() error {
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.MaxPayload < minPayloadFloor || c.MaxPayload > maxPayloadCap {
		return fmt.Errorf("nbd: MaxPayload %d outside [%d, %d]", c.MaxPayload, minPayloadFloor, maxPayloadCap)
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnections < 0 {
		return fmt.Errorf("nbd: MaxConnections %d is negative", c.MaxConnections)
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxInFlight < 0 || c.MaxInFlight > maxInFlightCap {
		return fmt.Errorf("nbd: MaxInFlight %d outside [1, %d]", c.MaxInFlight, maxInFlightCap)
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.HandshakeTimeout < 0 {
		return fmt.Errorf("nbd: HandshakeTimeout %v is negative", c.HandshakeTimeout)
	}
	if c.InlineLatency == 0 {
		c.InlineLatency = DefaultInlineLatency
	}
	if c.MaxPayloadMemory == 0 {
		c.MaxPayloadMemory = max(DefaultMaxPayloadMemory, 2*int64(c.MaxPayload))
	}
	if c.MaxPayloadMemory < 2*int64(c.MaxPayload) {
		return fmt.Errorf("nbd: MaxPayloadMemory %d is less than twice MaxPayload %d", c.MaxPayloadMemory, c.MaxPayload)
	}
	switch c.TLSMode {
	case TLSOff:
	case TLSOptional, TLSRequired:
		if c.TLS == nil || (len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil && c.TLS.GetConfigForClient == nil) {
			return fmt.Errorf("nbd: TLS mode %v needs a TLS configuration with a certificate", c.TLSMode)
		}
		c.TLS = c.TLS.Clone()
		c.TLS.MinVersion = max(c.TLS.MinVersion, tls.VersionTLS12)
	default:
		return fmt.Errorf("nbd: unknown TLS mode %d", int(c.TLSMode))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// ErrServerClosed is returned by Serve when it is called after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// export is an Export with the values advertised for it, computed once.
type export struct {
	Export
	size   uint64
	tflags uint16 // without SEND_DF, which depends on the connection
	minBS  uint32 // minimum block size, a power of two in [1, 64 KiB]
	prefBS uint32 // preferred block size, max(minBS, 4096)
	maxBS  uint32 // maximum payload, a multiple of minBS
	// slowNs is a moving average of how much longer than memory speed
	// requests take to execute, in nanoseconds; it decides whether
	// requests may run on the reader goroutine (see conn.serveInline).
	slowNs atomic.Int64
}

// markSlow records that a request has been running for d, so that the
// next requests go to workers.
func (x *export) markSlow(d int64) {
	if x.slowNs.Load() < d {
		x.slowNs.Store(d)
	}
}

// Watchdog intervals: every watchFast while requests run inline, slowing
// down to watchSlow while none do.
const (
	watchFast = 5 * time.Millisecond
	watchSlow = 32 * time.Millisecond
)

// watch is the server's watchdog. While connections exist it looks for a
// reader goroutine that has been running the same request inline for
// longer than inlineStallNs, takes the reader role from it and starts a
// new reader, so that one stalled request does not stop its connection
// from reading. It keeps the clock out of the request path: readers only
// number their inline requests.
func (s *Server) watch() {
	interval := watchFast
	t := time.NewTimer(interval)
	defer t.Stop()
	for range t.C {
		now := time.Now().UnixNano()
		busy := false
		s.mu.Lock()
		if len(s.conns) == 0 {
			s.watching = false
			s.mu.Unlock()
			return
		}
		for c := range s.conns {
			seq := c.inlineSeq.Load()
			if seq == 0 {
				continue
			}
			busy = true
			if seq != c.watchSeq {
				c.watchSeq, c.watchSince = seq, now
				continue
			}
			if stalled := now - c.watchSince; stalled > inlineStallNs && c.inlineSeq.CompareAndSwap(seq, 0) {
				c.exp.markSlow(stalled)
				c.log.Debug("nbd: request stalled the reader; a new reader takes over", "export", c.exp.Name,
					"stalled", time.Duration(stalled))
				go c.takeOver()
			}
		}
		s.mu.Unlock()
		if busy {
			interval = watchFast
		} else {
			interval = min(2*interval, watchSlow)
		}
		t.Reset(interval)
	}
}

// observe folds the execution time d of one (sampled) request moving
// length bytes of data into slowNs (weight 1/8; a lost update between
// racing requests does not matter).
func (x *export) observe(d time.Duration, length uint32) {
	excess := max(0, int64(d)-int64(length>>10)*inlineNsPerKiB)
	old := x.slowNs.Load()
	x.slowNs.Store(old + (excess-old)/8)
}

// Server serves exports over the NBD protocol. Create it with NewServer,
// add exports, then call Serve for each listener.
type Server struct {
	cfg     Config
	log     *slog.Logger
	limiter *logLimiter
	budget  byteBudget // payload memory of all connections

	mu        sync.Mutex
	exports   map[string]*export
	names     []string // sorted export names, for NBD_OPT_LIST
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	shutdown  bool
	done      chan struct{} // closed when Shutdown begins
	idle      chan struct{} // closed when shut down and no connection is left
	idleShut  bool
	watching  bool // the watchdog runs
}

// NewServer returns a server with no exports. It fills the defaults of cfg
// and rejects out-of-range values.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		limiter:   newLogLimiter(time.Now),
		exports:   make(map[string]*export),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		done:      make(chan struct{}),
		idle:      make(chan struct{}),
	}
	s.budget.init(cfg.MaxPayloadMemory)
	return s, nil
}

// AddExport makes e available to new connections. It fails on an empty,
// over-long or duplicate name, a nil device, or a device larger than
// 2^63-1 bytes. It may be called while the server is serving.
func (s *Server) AddExport(e Export) error {
	switch {
	case e.Name == "":
		return errors.New("nbd: add export: empty name")
	case len(e.Name) > maxStringLen:
		return fmt.Errorf("nbd: add export: name is %d bytes, longer than %d", len(e.Name), maxStringLen)
	case strings.IndexByte(e.Name, 0) >= 0:
		return fmt.Errorf("nbd: add export %q: name contains NUL", e.Name)
	case len(e.Description) > maxStringLen || strings.IndexByte(e.Description, 0) >= 0:
		return fmt.Errorf("nbd: add export %q: description longer than %d bytes or contains NUL", e.Name, maxStringLen)
	case e.Device == nil:
		return fmt.Errorf("nbd: add export %q: nil device", e.Name)
	case e.TLSOnly && s.cfg.TLSMode == TLSOff:
		return fmt.Errorf("nbd: add export %q: TLS-only export on a server without TLS", e.Name)
	}
	size := e.Device.Size()
	if size < 0 {
		return fmt.Errorf("nbd: add export %q: device size %d is negative", e.Name, size)
	}
	x := &export{Export: e, size: uint64(size)}
	x.tflags = FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim |
		FlagSendWriteZeroes | FlagCanMultiConn | FlagSendCache | FlagSendFastZero
	if e.ReadOnly {
		x.tflags |= FlagReadOnly
	}
	if e.MinBlockSize < 0 || e.MinBlockSize > minBlockSizeCap || e.MinBlockSize&(e.MinBlockSize-1) != 0 {
		return fmt.Errorf("nbd: add export %q: minimum block size %d is not a power of two up to %d", e.Name, e.MinBlockSize, minBlockSizeCap)
	}
	x.minBS = minBlockSize(e.Device.BlockSize())
	if e.Member != nil {
		// A member export's writers (raid35 arrays) send fragments of
		// any size down to a few bytes, and its disk takes them (the
		// page cache, or a bounce buffer with O_DIRECT, aligns them).
		x.minBS = 1
	}
	if e.MinBlockSize > 0 {
		x.minBS = uint32(e.MinBlockSize)
	}
	x.prefBS = max(x.minBS, defaultPreferred, minBlockSize(e.Device.BlockSize()))
	x.maxBS = uint32(s.cfg.MaxPayload) / x.minBS * x.minBS

	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.exports[e.Name]; dup {
		return fmt.Errorf("nbd: add export %q: duplicate name", e.Name)
	}
	s.exports[e.Name] = x
	i, _ := slices.BinarySearch(s.names, e.Name)
	s.names = slices.Insert(s.names, i, e.Name)
	return nil
}

// minBlockSize turns a device block size into an advertised minimum block
// size: clamped to [1, 64 KiB] and rounded down to a power of two.
func minBlockSize(bs int) uint32 {
	if bs <= 1 {
		return 1
	}
	if bs > minBlockSizeCap {
		bs = minBlockSizeCap
	}
	return 1 << (bits.Len(uint(bs)) - 1)
}

// lookup returns the export called name; the empty name selects the only
// export when exactly one exists. It returns nil when there is no match.
func (s *Server) lookup(name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "" {
		if len(s.exports) != 1 {
			return nil
		}
		return s.exports[s.names[0]]
	}
	return s.exports[name]
}

// list returns every export, sorted by name.
func (s *Server) list() []*export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*export, len(s.names))
	for i, n := range s.names {
		out[i] = s.exports[n]
	}
	return out
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// Serve accepts connections on l and serves each in its own goroutines. It
// blocks until l fails or Shutdown closes it, and returns nil in the latter
// case. Serve may run for several listeners at once. Called after Shutdown
// it closes l and returns ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isShutdown() {
				return nil
			}
			if !temporaryAcceptError(err) {
				return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("nbd: accept failed; retrying", "listener", l.Addr().String(), "err", err, "backoff", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		s.startConn(nc)
	}
}

// temporaryAcceptError reports whether an Accept error is worth retrying.
func temporaryAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS,
		syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// startConn registers nc and starts serving it, or closes it when the
// server is shutting down or full.
func (s *Server) startConn(nc net.Conn) {
	remote := nc.RemoteAddr().String()
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		nc.Close()
		return
	}
	if len(s.conns) >= s.cfg.MaxConnections {
		s.mu.Unlock()
		if ok, dropped := s.limiter.allow(); ok {
			s.log.Warn("nbd: too many connections; closing new connection", "remote", remote,
				"max", s.cfg.MaxConnections, "log_lines_suppressed", dropped)
		}
		nc.Close()
		return
	}
	c := newConn(s, nc, remote)
	s.conns[c] = struct{}{}
	if !s.watching {
		s.watching = true
		go s.watch()
	}
	s.mu.Unlock()
	go c.serve()
}

// connDone unregisters a finished connection.
func (s *Server) connDone(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	s.maybeIdleLocked()
}

func (s *Server) maybeIdleLocked() {
	if s.shutdown && len(s.conns) == 0 && !s.idleShut {
		s.idleShut = true
		close(s.idle)
	}
}

// Shutdown stops the server gracefully: it closes every listener, closes
// connections still in the handshake, stops reading new requests, lets
// every request already received finish and be replied to, closes the
// connections, and finally flushes the device of every export. Devices are
// not closed. When ctx ends first, the remaining connections are closed at
// once (their requests may then go unanswered), the flush is still started,
// and ctx's error is returned. Shutdown may be called more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.shutdown {
		s.shutdown = true
		close(s.done)
	}
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.beginShutdown()
	}
	s.maybeIdleLocked()
	s.mu.Unlock()

	var errs []error
	select {
	case <-s.idle:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		errs = append(errs, fmt.Errorf("nbd: shutdown: %w", ctx.Err()))
	}

	flushed := make(chan error, 1)
	exports := s.list()
	go func() {
		var ferrs []error
		for _, e := range exports {
			if err := e.Device.Flush(); err != nil {
				ferrs = append(ferrs, fmt.Errorf("nbd: shutdown: flush export %q: %w", e.Name, err))
			}
		}
		flushed <- errors.Join(ferrs...)
	}()
	select {
	case err := <-flushed:
		errs = append(errs, err)
	case <-ctx.Done():
		if len(errs) == 0 {
			errs = append(errs, fmt.Errorf("nbd: shutdown: flushing devices: %w", ctx.Err()))
		}
	}
	return errors.Join(errs...)
}

// Listen opens a listener for Serve. "unix:/path" listens on a unix socket:
// a stale socket file left by a dead server is removed first, while a
// socket a live server still accepts on, or a file that is not a socket, is
// an error. Any other address is a TCP "host:port".
func Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("nbd: listen: %w", err)
		}
		return l, nil
	}
	if path == "" {
		return nil, errors.New("nbd: listen: empty unix socket path")
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("nbd: listen on %s: file exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("nbd: listen on %s: socket is in use by a live server", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("nbd: listen on %s: probing existing socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("nbd: listen on %s: removing stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen: %w", err)
	}
	return l, nil
}
