package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
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
// budget is max(2 × MaxPayload, minConnBudget).
const minConnBudget = 64 << 20

// byteBudget bounds the payload bytes a connection holds at once, so that
// a client cannot pin MaxInFlight × MaxPayload bytes with a burst of long
// READs whose replies it does not read.
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

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// request is one request in flight. Requests are recycled through the
// connection's free list, so the steady state allocates nothing per request.
type request struct {
	Request
	bufp  *[]byte // pooled payload buffer (WRITE data in, READ data out)
	held  int64   // bytes of the connection's budget bufp holds
	hdr   [replyHeaderLen]byte
	reply []byte // READ data to send after hdr
}

// conn serves one client connection: the serve goroutine runs the
// handshake and then reads requests; worker goroutines execute them.
type conn struct {
	s   *Server
	nc  net.Conn
	br  *bufio.Reader
	log *slog.Logger

	exp    *export
	strict bool

	mu       sync.Mutex // guards phase, shutting and read deadlines
	phase    connPhase
	shutting bool

	// Replies are written by whichever worker finds no write under way:
	// it sends every queued reply in one writev, repeating until the queue
	// is empty, so replies that become ready together share a syscall.
	wmu     sync.Mutex
	wq      []*request // replies waiting to be written
	writing bool       // a worker is writing; it will also send wq
	werr    error      // first reply write error
	wspare  []*request // the writer's second queue, swapped with wq
	wvec    [][]byte   // the writer's iovecs
	wbufs   net.Buffers

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
	}
	c.budget.init(max(2*int64(s.cfg.MaxPayload), minConnBudget))
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
	defer c.nc.Close()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.log.Debug("nbd: connection opened")
	phase := "handshake"
	if c.safely("handshake", c.negotiate) {
		phase = "transmission"
		c.safely("request reader", c.readLoop)
		c.drain()
	}
	c.log.Debug("nbd: connection closed", "export", c.exportName(), "in", phase)
}

func (c *conn) exportName() string {
	if c.exp == nil {
		return ""
	}
	return c.exp.Name
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
	n, err := h.run()
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
		c.log.Info("nbd: handshake failed; closing connection", "err", err)
		return false
	}
	c.exp, c.strict = n.exp, n.strict

	c.mu.Lock()
	defer c.mu.Unlock()
	c.phase = phaseIdle
	if c.shutting {
		return false
	}
	c.nc.SetDeadline(time.Time{})
	c.log.Debug("nbd: transmission started", "export", c.exp.Name, "block_size_negotiated", c.strict)
	return true
}

// readLoop reads requests until the client disconnects, sends DISC or a
// malformed request, or the server shuts down. It returns false when the
// connection broke.
func (c *conn) readLoop() bool {
	for {
		c.mu.Lock()
		if c.shutting {
			c.mu.Unlock()
			return true
		}
		c.phase = phaseIdle
		c.mu.Unlock()

		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			c.logReadErr("reading request header", err)
			return false
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
			c.log.Warn("nbd: malformed request; closing connection", "export", c.exp.Name, "err", err)
			return false
		}
		if req.Type == CmdDisc {
			c.log.Debug("nbd: client sent NBD_CMD_DISC")
			return true
		}
		if req.Type == CmdWrite && req.Length > c.exp.maxBS {
			// The payload cannot be skipped without reading it all, and a
			// client sending it ignored our advertised maximum.
			c.log.Warn("nbd: WRITE payload exceeds the maximum; closing connection",
				"export", c.exp.Name, "length", req.Length, "max", c.exp.maxBS)
			return false
		}
		r := c.getRequest()
		r.Request = req
		if req.Type == CmdWrite && req.Length > 0 {
			c.takeBuf(r, int(req.Length))
			if _, err := io.ReadFull(c.br, *r.bufp); err != nil {
				c.recycle(r)
				c.logReadErr("reading WRITE payload", err)
				return false
			}
		}
		c.inflight.Add(1)
		c.dispatch(r)
	}
}

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
		c.log.Info("nbd: connection read failed", "export", c.exportName(), "while", what, "err", err)
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
	return <-c.free
}

// takeBuf gives r a pooled payload buffer of n bytes, waiting for the
// connection's buffer budget.
func (c *conn) takeBuf(r *request, n int) {
	c.budget.acquire(int64(n))
	r.held = int64(n)
	r.bufp = getBuf(n)
}

// recycle returns a request, its buffer and its budget to the free lists.
func (c *conn) recycle(r *request) {
	if r.bufp != nil {
		putBuf(r.bufp)
		r.bufp = nil
		c.budget.release(r.held)
		r.held = 0
	}
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
	errno, data := c.safeExecute(r)
	c.reply(r, errno, data)
}

// safeExecute runs execute, turning a panic into EIO and a closed
// connection.
func (c *conn) safeExecute(r *request) (errno Errno, data []byte) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("nbd: panic serving request; closing connection", "export", c.exp.Name,
				"cmd", r.Type.String(), "panic", p, "stack", string(debug.Stack()))
			c.nc.Close()
			errno, data = EIO, nil
		}
	}()
	return c.execute(r)
}

// allowedFlags lists the command flags each command accepts. FUA is valid
// on every command once NBD_FLAG_SEND_FUA is advertised (the spec requires
// accepting it, if only by ignoring it). FAST_ZERO is absent because
// NBD_FLAG_SEND_FAST_ZERO is not advertised.
func allowedFlags(t Command) (uint16, bool) {
	switch t {
	case CmdRead, CmdWrite, CmdFlush, CmdTrim, CmdCache:
		return CmdFlagFUA, true
	case CmdWriteZeroes:
		return CmdFlagFUA | CmdFlagNoHole, true
	}
	return 0, false
}

// execute validates and performs r. It returns the reply's error and, for a
// successful READ, the data to send.
func (c *conn) execute(r *request) (Errno, []byte) {
	e := c.exp
	allowed, known := allowedFlags(r.Type)
	if !known {
		return c.refuse(r, EINVAL, "unknown command")
	}
	if r.Flags&^allowed != 0 {
		return c.refuse(r, EINVAL, "command flags not valid for this command")
	}
	switch r.Type {
	case CmdRead:
		if r.Length > e.maxBS {
			return c.refuse(r, EINVAL, "READ longer than the maximum payload")
		}
		if errno := c.checkRange(r, EINVAL); errno != 0 {
			return c.refuse(r, errno, "READ out of range or misaligned")
		}
		if r.Length == 0 {
			return 0, nil
		}
		c.takeBuf(r, int(r.Length))
		if _, err := e.Device.ReadAt(*r.bufp, int64(r.Offset)); err != nil {
			return c.deviceFailed(r, err), nil
		}
		return 0, *r.bufp

	case CmdWrite:
		if e.ReadOnly {
			return c.refuse(r, EPERM, "WRITE to a read-only export")
		}
		if errno := c.checkRange(r, ENOSPC); errno != 0 {
			return c.refuse(r, errno, "WRITE out of range or misaligned")
		}
		if r.Length == 0 {
			return 0, nil
		}
		if _, err := e.Device.WriteAt(*r.bufp, int64(r.Offset)); err != nil {
			return c.deviceFailed(r, err), nil
		}
		return c.fua(r), nil

	case CmdFlush:
		if r.Offset != 0 || r.Length != 0 {
			return c.refuse(r, EINVAL, "FLUSH with nonzero offset or length")
		}
		if err := e.Device.Flush(); err != nil {
			return c.deviceFailed(r, err), nil
		}
		return 0, nil

	case CmdTrim:
		if e.ReadOnly {
			return c.refuse(r, EPERM, "TRIM on a read-only export")
		}
		if errno := c.checkRange(r, EINVAL); errno != 0 {
			return c.refuse(r, errno, "TRIM out of range or misaligned")
		}
		if r.Length == 0 {
			return 0, nil
		}
		if err := e.Device.Trim(int64(r.Offset), int64(r.Length)); err != nil {
			return c.deviceFailed(r, err), nil
		}
		return c.fua(r), nil

	case CmdWriteZeroes:
		if e.ReadOnly {
			return c.refuse(r, EPERM, "WRITE_ZEROES on a read-only export")
		}
		if errno := c.checkRange(r, ENOSPC); errno != 0 {
			return c.refuse(r, errno, "WRITE_ZEROES out of range or misaligned")
		}
		if r.Length == 0 {
			return 0, nil
		}
		// NO_HOLE needs nothing extra: Device.Zero never leaves the range
		// less provisioned than a write of zeroes would.
		if err := e.Device.Zero(int64(r.Offset), int64(r.Length)); err != nil {
			return c.deviceFailed(r, err), nil
		}
		return c.fua(r), nil

	case CmdCache:
		if errno := c.checkRange(r, EINVAL); errno != 0 {
			return c.refuse(r, errno, "CACHE out of range or misaligned")
		}
		return 0, nil
	}
	return c.refuse(r, EINVAL, "unknown command")
}

// checkRange validates r's range against the export. A zero-length request
// touches nothing and always passes. Past the end it returns beyond (EINVAL
// for reads, ENOSPC for writes, as the spec recommends). When the client
// negotiated block sizes, a range not aligned to the minimum block size is
// EINVAL, except that a request may end exactly at an unaligned export end.
func (c *conn) checkRange(r *request, beyond Errno) Errno {
	if r.Length == 0 {
		return 0
	}
	size := c.exp.size
	if r.Offset > size || uint64(r.Length) > size-r.Offset {
		return beyond
	}
	if c.strict && c.exp.minBS > 1 {
		m := uint64(c.exp.minBS)
		end := r.Offset + uint64(r.Length)
		if r.Offset%m != 0 || (end%m != 0 && end != size) {
			return EINVAL
		}
	}
	return 0
}

// fua flushes the device after a write-type command with the FUA flag.
func (c *conn) fua(r *request) Errno {
	if r.Flags&CmdFlagFUA == 0 {
		return 0
	}
	if err := c.exp.Device.Flush(); err != nil {
		return c.deviceFailed(r, fmt.Errorf("flush for FUA: %w", err))
	}
	return 0
}

// refuse logs a request refused for the client's own fault.
func (c *conn) refuse(r *request, errno Errno, why string) (Errno, []byte) {
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("nbd: request refused", "export", c.exp.Name, "cmd", r.Type.String(),
			"flags", r.Flags, "offset", r.Offset, "length", r.Length, "errno", uint32(errno), "why", why)
	}
	return errno, nil
}

// deviceFailed logs a device error and maps it to the reply's error.
func (c *conn) deviceFailed(r *request, err error) Errno {
	errno := deviceErrno(err)
	c.log.Warn("nbd: device error", "export", c.exp.Name, "cmd", r.Type.String(),
		"offset", r.Offset, "length", r.Length, "errno", uint32(errno), "err", err)
	return errno
}

// reply queues a simple reply for r and, unless another worker is already
// writing, writes the queue. Each reply's header and data go out in the
// same writev. After the write, requests are recycled and leave the
// in-flight count.
func (c *conn) reply(r *request, errno Errno, data []byte) {
	putSimpleReply(&r.hdr, errno, r.Cookie)
	r.reply = data
	c.wmu.Lock()
	c.wq = append(c.wq, r)
	if c.writing {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	for len(c.wq) > 0 {
		batch := c.wq
		c.wq = c.wspare[:0]
		failed := c.werr != nil
		c.wmu.Unlock()

		if !failed {
			c.writeBatch(batch)
		}
		for i, q := range batch {
			q.reply = nil
			c.recycle(q)
			c.inflight.Done()
			batch[i] = nil
		}

		c.wmu.Lock()
		c.wspare = batch[:0]
	}
	c.writing = false
	c.wmu.Unlock()
}

// writeBatch writes the replies of batch with one writev (the kernel may
// take it in parts; net.Buffers continues them).
func (c *conn) writeBatch(batch []*request) {
	vec := c.wvec[:0]
	for _, q := range batch {
		vec = append(vec, q.hdr[:])
		if len(q.reply) > 0 {
			vec = append(vec, q.reply)
		}
	}
	c.wbufs = vec
	_, err := c.wbufs.WriteTo(c.nc)
	clear(vec)
	c.wvec = vec[:0]
	if err != nil {
		c.wmu.Lock()
		c.werr = err
		c.wmu.Unlock()
		if !errors.Is(err, net.ErrClosed) {
			c.log.Info("nbd: writing reply failed; closing connection", "export", c.exp.Name, "err", err)
		}
		c.nc.Close()
	}
}
