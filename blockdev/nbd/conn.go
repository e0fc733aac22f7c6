package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// connPhase says what the reader goroutine of a connection is doing, so
// that Shutdown knows whether it may interrupt a blocked read.
type connPhase int

const (
	phaseHandshake connPhase = iota // option phase; may be cut at any time
	phaseIdle                       // waiting for a request header; may be cut
	phaseBusy                       // reading a request's payload; must finish
)

// readBufferSize is the per-connection read buffer: large enough to pick up
// many pipelined request headers with one read.
const readBufferSize = 32 << 10

// minConnBudget is the least payload memory a connection may hold; the
// budget is max(2 × MaxPayload, minConnBudget), capped by
// Config.MaxPayloadMemory.
const minConnBudget = 64 << 20

// tlsCloseTimeout bounds sending the TLS close_notify when a connection
// ends.
const tlsCloseTimeout = time.Second

// byteBudget bounds the payload bytes held at once, so that a client
// cannot pin MaxInFlight × MaxPayload bytes with a burst of long READs
// whose replies it does not read.
type byteBudget struct {
	mu    sync.Mutex
	cond  sync.Cond
	avail int64
}

func (b *byteBudget) init(n int64) {
	b.avail = n
	b.cond.L = &b.mu
}

// acquire waits until n bytes are available and takes them. n never
// exceeds the budget's size.
func (b *byteBudget) acquire(n int64) {
	b.mu.Lock()
	for b.avail < n {
		b.cond.Wait()
	}
	b.avail -= n
	b.mu.Unlock()
}

// tryAcquire takes n bytes if they are available now.
func (b *byteBudget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.avail < n {
		return false
	}
	b.avail -= n
	return true
}

// available returns the bytes not taken.
func (b *byteBudget) available() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.avail
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// request is one request in flight. Requests are recycled through the
// connection's free list with their scratch slices, so the steady state
// allocates nothing per request.
type request struct {
	Request
	bufp *[]byte // pooled payload buffer (WRITE data in, READ data out)
	held int64   // bytes of the budgets bufp holds

	// Outcome, set by execute.
	errno Errno
	msg   string // why the request failed, for structured error chunks
	data  []byte // READ data to send

	ext     []blockdev.Extent // BLOCK_STATUS: the device's extents
	status  []blockdev.Extent // BLOCK_STATUS: the descriptors to send
	dirty   []blockdev.Extent // BLOCK_STATUS: ddraid:dirty/SLOT descriptors
	runs    []run             // READ chunk plan scratch
	hdr     [32]byte          // the reply header when one suffices
	scratch []byte            // headers and payloads of longer replies
	vec     [][]byte          // the reply's pieces, in order
}

// conn serves one client connection: the serve goroutine runs the
// handshake and then reads requests; worker goroutines execute them.
type conn struct {
	s    *Server
	nc   net.Conn  // the socket: deadlines and Close go here
	tlsc *tls.Conn // set once TLS runs; data goes through it
	br   *bufio.Reader
	log  *slog.Logger

	exp         *export
	strict      bool
	structured  bool
	blockStatus bool
	session     Session // writer session on a member export, or nil
	dirty       int64   // slot of the selected ddraid:dirty/SLOT context, or -1

	mu       sync.Mutex // guards phase, shutting and read deadlines
	phase    connPhase
	shutting bool

	// inlineSeq numbers the request the reader is running inline, 0 when
	// it runs none; the watchdog takes the reader role away by swapping
	// it to 0 (see readLoop and Server.watch). nextSeq and timed belong to
	// the reader; watchSeq and watchSince to the watchdog.
	inlineSeq  atomic.Uint64
	nextSeq    uint64
	timed      atomic.Uint32 // requests handled, for sampling their duration
	watchSeq   uint64
	watchSince int64
	inlineNs   int64        // Config.InlineLatency in ns; 0: never inline
	readerEnd  chan readEnd // the end of a readLoop that took over

	// misbehaved is set once the client has been logged for breaking
	// the protocol; later offences are logged at Debug only.
	misbehaved atomic.Bool

	// Replies are written by whichever worker finds no write under way:
	// it sends every queued reply in one writev, repeating until the queue
	// is empty, so replies that become ready together share a syscall.
	wmu     sync.Mutex
	wq      []*request // replies waiting to be written
	writing bool       // a worker is writing; it will also send wq
	corked  bool       // the reader is running a batch inline: hold replies
	ncork   int        // replies queued since the cork
	corkLen int        // their bytes
	werr    error      // first reply write error
	wspare  []*request // the writer's second queue, swapped with wq
	wvec    [][]byte   // the writer's iovecs
	wbufs   net.Buffers
	bw      *bufio.Writer // under TLS, replies are gathered here (tls.Conn has no writev)

	budget      byteBudget
	maxInFlight int
	free        chan *request // recycled requests; capacity maxInFlight
	nreq        int           // requests allocated so far (reader only)
	work        chan *request // hands requests to idle workers
	nworkers    int           // workers started so far (reader only)
	inflight    sync.WaitGroup
	workers     sync.WaitGroup
	hdr         [requestHeaderLen]byte
}

func newConn(s *Server, nc net.Conn, remote string) *conn {
	c := &conn{
		s:           s,
		nc:          nc,
		br:          bufio.NewReaderSize(nc, readBufferSize),
		log:         s.log.With("remote", remote),
		maxInFlight: s.cfg.MaxInFlight,
		free:        make(chan *request, s.cfg.MaxInFlight),
		work:        make(chan *request),
		readerEnd:   make(chan readEnd),
		dirty:       -1,
		inlineNs:    max(0, int64(s.cfg.InlineLatency)),
	}
	c.budget.init(min(max(2*int64(s.cfg.MaxPayload), minConnBudget), s.cfg.MaxPayloadMemory))
	return c
}

// beginShutdown asks the connection to stop reading requests. A read that
// waits for a handshake option or a request header is interrupted; a
// request whose header has arrived is read and served in full.
func (c *conn) beginShutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shutting = true
	if c.phase != phaseBusy {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

func (c *conn) isShutting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shutting
}

// serve runs the connection to its end and unregisters it.
func (c *conn) serve() {
	defer c.s.connDone(c)
	defer c.close()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.log.Debug("nbd: connection opened")
	phase := "handshake"
	if c.safely("handshake", c.negotiate) {
		phase = "transmission"
		if f := c.s.cfg.OnTransmission; f != nil {
			defer f()()
		}
		c.safely("request reader", c.readAll)
		c.drain()
		if c.session != nil {
			c.session.Close()
		}
	}
	c.log.Debug("nbd: connection closed", "export", c.exportName(), "in", phase)
}

// close ends the connection, shutting TLS down first when it runs.
func (c *conn) close() {
	if c.tlsc != nil {
		c.nc.SetWriteDeadline(time.Now().Add(tlsCloseTimeout))
		c.tlsc.Close()
	}
	c.nc.Close()
}

func (c *conn) exportName() string {
	if c.exp == nil {
		return ""
	}
	return c.exp.Name
}

// misbehave logs a protocol violation: the first one of a connection at
// Warn (through the server's rate limiter), later ones at Debug.
func (c *conn) misbehave(msg string, args ...any) {
	if c.misbehaved.CompareAndSwap(false, true) {
		if ok, dropped := c.s.limiter.allow(); ok {
			if dropped > 0 {
				args = append(args, "log_lines_suppressed", dropped)
			}
			c.log.Warn(msg, args...)
			return
		}
	}
	c.log.Debug(msg, args...)
}

// safely runs f, turning a panic into a logged error and a closed
// connection. It is the last line of defence; no input should panic.
func (c *conn) safely(what string, f func() bool) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("nbd: panic in connection; closing it", "in", what, "panic", p, "stack", string(debug.Stack()))
			c.nc.Close()
			ok = false
		}
	}()
	return f()
}

// startTLS upgrades the connection after the ACK to NBD_OPT_STARTTLS. The
// TLS handshake is bounded by the handshake deadline already set.
func (c *conn) startTLS() (*bufio.Reader, *bufio.Writer, error) {
	tc := tls.Server(&bufferedConn{Conn: c.nc, r: c.br}, c.s.cfg.TLS)
	if err := tc.Handshake(); err != nil {
		return nil, nil, err
	}
	c.tlsc = tc
	c.br = bufio.NewReaderSize(tc, readBufferSize)
	c.bw = bufio.NewWriterSize(tc, 64<<10)
	c.log.Debug("nbd: TLS started", "version", tls.VersionName(tc.ConnectionState().Version))
	return c.br, bufio.NewWriterSize(tc, 4096), nil
}

// negotiate runs the option phase. It reports whether transmission begins.
func (c *conn) negotiate() bool {
	c.mu.Lock()
	if c.shutting {
		c.mu.Unlock()
		return false
	}
	c.phase = phaseHandshake
	c.nc.SetDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	c.mu.Unlock()

	h := handshake{s: c.s, r: c.br, w: bufio.NewWriterSize(c.nc, 4096), shutting: c.isShutting}
	if c.s.cfg.TLSMode != TLSOff {
		h.startTLS = c.startTLS
	}
	n, err := h.run()
	if err != nil {
		h.dropSession()
	}
	switch {
	case err == nil:
	case errors.Is(err, errAbort), errors.Is(err, errClientGoneOpt),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		c.log.Debug("nbd: handshake ended by client", "reason", err)
		return false
	case errors.Is(err, errShuttingDown), c.isShutting() && errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Debug("nbd: handshake cut by shutdown")
		return false
	default:
		c.misbehave("nbd: handshake failed; closing connection", "err", err)
		return false
	}
	c.exp, c.strict, c.structured, c.blockStatus = n.exp, n.strict, n.structured, n.blockStatus
	c.session, c.dirty = n.session, n.dirty

	c.mu.Lock()
	defer c.mu.Unlock()
	c.phase = phaseIdle
	if c.shutting {
		if c.session != nil {
			c.session.Close()
		}
		return false
	}
	c.nc.SetDeadline(time.Time{})
	c.log.Debug("nbd: transmission started", "export", c.exp.Name, "block_size_negotiated", c.strict,
		"structured_replies", c.structured, "block_status", c.blockStatus, "tls", c.tlsc != nil)
	return true
}

// readEnd says how a readLoop ended.
type readEnd int

const (
	readDone      readEnd = iota // DISC, shutdown: the connection ends cleanly
	readBroken                   // the client broke the protocol or the connection
	readHandedOff                // the watchdog gave the reader role to another goroutine
)

// readAll runs readLoop, and after a hand-off waits for the goroutines that
// take over, until one ends the connection. It returns false when the
// connection broke.
func (c *conn) readAll() bool {
	end := c.readLoop()
	for end == readHandedOff {
		end = <-c.readerEnd
	}
	return end == readDone
}

// takeOver continues reading requests after the watchdog took the reader
// role from a goroutine stuck in a request it ran inline.
func (c *conn) takeOver() {
	end := readBroken
	defer func() { c.readerEnd <- end }()
	if c.safely("request reader", func() bool { end = c.readLoop(); return true }) {
		return
	}
	end = readBroken
}

// readLoop reads requests until the client disconnects, sends DISC or a
// malformed request, or the server shuts down, or the watchdog hands the
// reader role to another goroutine.
func (c *conn) readLoop() readEnd {
	defer c.uncork()
	for {
		c.mu.Lock()
		if c.shutting {
			c.mu.Unlock()
			return readDone
		}
		c.phase = phaseIdle
		c.mu.Unlock()

		if c.br.Buffered() < requestHeaderLen {
			c.uncork() // about to wait for the client
		}
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			c.logReadErr("reading request header", err)
			return readBroken
		}
		c.mu.Lock()
		c.phase = phaseBusy
		if c.shutting {
			// Shutdown may have cut the read just as the header arrived;
			// the request is ours now, so read its payload in full.
			c.nc.SetReadDeadline(time.Time{})
		}
		c.mu.Unlock()

		req, err := parseRequest(&c.hdr)
		if err != nil {
			c.misbehave("nbd: malformed request; closing connection", "export", c.exp.Name, "err", err)
			return readBroken
		}
		if req.Type == CmdDisc {
			c.log.Debug("nbd: client sent NBD_CMD_DISC")
			return readDone
		}
		if req.Type == CmdWrite && req.Length > c.exp.maxBS {
			// The payload cannot be skipped without reading it all, and a
			// client sending it ignored our advertised maximum.
			c.misbehave("nbd: WRITE payload exceeds the maximum; closing connection",
				"export", c.exp.Name, "length", req.Length, "max", c.exp.maxBS)
			return readBroken
		}
		r := c.getRequest()
		r.Request = req
		if req.Type == CmdWrite && req.Length > 0 {
			if c.br.Buffered() < int(req.Length) {
				c.uncork()
			}
			c.takeBuf(r, int(req.Length))
			if _, err := io.ReadFull(c.br, *r.bufp); err != nil {
				c.recycle(r)
				c.logReadErr("reading WRITE payload", err)
				return readBroken
			}
		}
		c.inflight.Add(1)
		if c.exp.slowNs.Load() < c.inlineNs {
			if c.br.Buffered() >= requestHeaderLen {
				c.cork() // more requests follow: send the replies together
			}
			c.nextSeq++
			c.inlineSeq.Store(c.nextSeq)
			c.handle(r)
			if c.inlineSeq.Swap(0) == 0 {
				return readHandedOff // the watchdog found us stuck; another goroutine reads now
			}
			continue
		}
		c.uncork()
		c.dispatch(r)
	}
}

// Requests run on the reader goroutine itself, one after the other,
// without a hand-off to a worker, while the export's recent requests ran at
// memory speed: within Config.InlineLatency plus inlineNsPerKiB for each
// KiB moved, on average (see export.observe). A hand-off costs two
// goroutine switches and often a thread wake-up (a context switch), which
// for a request served from memory costs more than the request, and a
// buffer copied by the goroutine that filled it is still in the CPU cache.
// While further requests wait in the read buffer, the replies of such a
// batch are held back (corked) and go out together in one writev when the
// buffer runs dry or maxCorkReplies (maxCorkBytes) are held, which also
// wakes the client once per batch instead of once per reply. A slower
// device gets workers, so that a slow request never holds up the
// requests behind it; and should a request run inline
// for longer than inlineStallNs after all (a device that stalls), the
// server's watchdog gives the reader role to a new goroutine (see
// Server.watch), so the requests behind it are read and run on workers
// meanwhile.
const (
	timeEvery      = 8
	inlineNsPerKiB = 500 // about 2 GB/s
	inlineStallNs  = 10_000_000
	maxCorkBytes   = 256 << 10
	maxCorkReplies = 16
)

// logReadErr logs why reading from the client stopped.
func (c *conn) logReadErr(what string, err error) {
	switch {
	case errors.Is(err, io.EOF) && what == "reading request header":
		c.log.Debug("nbd: client closed the connection")
	case errors.Is(err, os.ErrDeadlineExceeded) && c.isShutting():
		c.log.Debug("nbd: stopped reading requests for shutdown")
	case errors.Is(err, net.ErrClosed):
		c.log.Debug("nbd: connection closed locally", "while", what)
	default:
		c.misbehave("nbd: connection broke mid-request", "export", c.exportName(), "while", what, "err", err)
	}
}

// getRequest returns a free request, allocating until maxInFlight exist and
// then waiting for one to be released.
func (c *conn) getRequest() *request {
	select {
	case r := <-c.free:
		return r
	default:
	}
	if c.nreq < c.maxInFlight {
		c.nreq++
		return new(request)
	}
	c.uncork() // held replies hold requests
	return <-c.free
}

// takeBuf gives r a pooled payload buffer of n bytes, waiting for the
// connection's and then the server's buffer budget.
func (c *conn) takeBuf(r *request, n int) {
	if !c.budget.tryAcquire(int64(n)) {
		c.uncork() // held replies hold buffers
		c.budget.acquire(int64(n))
	}
	if !c.s.budget.tryAcquire(int64(n)) {
		c.uncork()
		c.s.budget.acquire(int64(n))
	}
	r.held = int64(n)
	r.bufp = getBuf(n)
}

// recycle returns a request, its buffer and its budget to the free lists.
func (c *conn) recycle(r *request) {
	if r.bufp != nil {
		putBuf(r.bufp)
		r.bufp = nil
		c.s.budget.release(r.held)
		c.budget.release(r.held)
		r.held = 0
	}
	r.data, r.msg = nil, ""
	c.free <- r
}

// dispatch hands r to an idle worker, starting a new worker while fewer
// than maxInFlight exist.
func (c *conn) dispatch(r *request) {
	select {
	case c.work <- r:
		return
	default:
	}
	if c.nworkers < c.maxInFlight {
		c.nworkers++
		c.workers.Add(1)
		go c.worker(r)
		return
	}
	// Every worker exists; one is about to finish its request.
	c.work <- r
}

// drain waits for every request in flight to be answered and stops the
// workers.
func (c *conn) drain() {
	c.inflight.Wait()
	close(c.work)
	c.workers.Wait()
}

// worker serves r, then further requests handed over by dispatch, until the
// connection drains.
func (c *conn) worker(r *request) {
	defer c.workers.Done()
	for r != nil {
		c.handle(r)
		r = <-c.work
	}
}

// handle executes one request and queues its reply; the reply writer
// recycles the request once the reply is sent.
func (c *conn) handle(r *request) {
	if c.timed.Add(1)%timeEvery != 0 {
		c.safeExecute(r)
	} else {
		// One request in timeEvery is timed: reading the clock costs
		// more than a request served from memory in some VMs.
		start := time.Now()
		c.safeExecute(r)
		var moved uint32
		if r.Type == CmdRead || r.Type == CmdWrite {
			moved = r.Length
		}
		c.exp.observe(time.Since(start), moved)
	}
	c.encodeReply(r)
	c.queueReply(r)
}

// safeExecute runs execute, turning a panic into EIO and a closed
// connection.
func (c *conn) safeExecute(r *request) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("nbd: panic serving request; closing connection", "export", c.exp.Name,
				"cmd", r.Type.String(), "panic", p, "stack", string(debug.Stack()))
			c.nc.Close()
			r.errno, r.msg, r.data = EIO, "internal server error", nil
		}
	}()
	c.execute(r)
}

// refuse records that r is refused for the client's own fault, logging the
// first such request of the connection.
func (c *conn) refuse(r *request, errno Errno, why string) {
	r.errno, r.msg, r.data = errno, why, nil
	if c.misbehaved.Load() && !c.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	c.misbehave("nbd: invalid request refused", "export", c.exp.Name, "cmd", r.Type.String(),
		"flags", r.Flags, "offset", r.Offset, "length", r.Length, "errno", uint32(errno), "why", why)
}

// deviceFailed records and logs a device error.
func (c *conn) deviceFailed(r *request, err error) {
	errno := deviceErrno(err)
	r.errno, r.data = errno, nil
	r.msg = "device error: " + errno.name()
	c.log.Warn("nbd: device error", "export", c.exp.Name, "cmd", r.Type.String(),
		"offset", r.Offset, "length", r.Length, "errno", uint32(errno), "err", err)
}
