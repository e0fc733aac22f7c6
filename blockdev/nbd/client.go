package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// Client errors.
var (
	// ErrUnknownExport reports that the server has no export of the
	// requested name.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrClientClosed reports use of a Client after Close.
	ErrClientClosed = errors.New("nbd: client is closed")
)

// closeTimeout bounds how long Close waits for the server to answer the
// requests still in flight and close the connection after NBD_CMD_DISC.
const closeTimeout = 10 * time.Second

// maxOptReplyLen bounds the option replies a client accepts.
const maxOptReplyLen = 64 << 10

// zeroes is the source of emulated WRITE_ZEROES; it is never written to.
var zeroes [zeroBufLen]byte

// Info describes the export a Client is connected to, as the server
// reported it during the handshake.
type Info struct {
	Name        string
	Description string // empty unless the server sent one
	Size        int64
	Flags       uint16 // transmission flags (FlagReadOnly, FlagSendFlush, …)
	// Block size constraints; all zero when the server sent none.
	MinBlockSize       uint32
	PreferredBlockSize uint32
	MaxBlockSize       uint32
}

// Client is a connection to one export of an NBD server. It implements
// blockdev.Device. Every method may be called from many goroutines at
// once: requests are pipelined on the one connection and replies are
// matched to them by cookie, so they may complete in any order.
//
// The client negotiates with NBD_OPT_GO (falling back to
// NBD_OPT_EXPORT_NAME for old servers). Unless ClientOptions.BlockSizes
// is set it does not request NBD_INFO_BLOCK_SIZE, so it stays free to
// send requests that are not aligned to the advertised minimum block size;
// servers that enforce alignment anyway refuse those with EINVAL. With
// BlockSizes it keeps to the minimum itself (align.go). It does not
// reconnect: once the connection breaks, every call fails.
type Client struct {
	nc         net.Conn
	br         *bufio.Reader
	info       Info
	maxPayload int        // largest READ/WRITE payload sent in one request
	align      int64      // the minimum block size the client promised to keep to, or 1 (align.go)
	rmw        sync.Mutex // held by read-modify-writes (align.go)
	writer     bool       // identified with NBD_OPT_DDRAID_WRITER: EPERM on writes means fenced

	// Requests are queued as header bytes plus WRITE payloads under wmu;
	// whichever caller finds no write under way sends the whole queue in
	// one writev, repeating until it is empty, so concurrent requests share
	// syscalls. The closed check happens under wmu too, so nothing can be
	// queued after NBD_CMD_DISC.
	wmu      sync.Mutex
	qhdr     []byte   // encoded request headers waiting to be sent
	qents    []qentry // one per queued request
	writing  bool     // a caller is sending; it will also send the queue
	sparehdr []byte   // the writer's second buffers, swapped with qhdr/qents
	spareent []qentry
	wvec     [][]byte
	wbufs    net.Buffers

	mu      sync.Mutex
	pending map[uint64]*call
	cookie  uint64
	err     error // why the connection is unusable; sticky
	closed  bool

	readerDone chan struct{}
	calls      sync.Pool
}

var _ blockdev.Device = (*Client)(nil)

// call is one request awaiting its reply; calls are pooled.
type call struct {
	typ  Command
	buf  []byte // READ destination
	done chan error
}

// qentry locates one queued request: its header at qhdr[off:off+28],
// followed by data (a WRITE payload) if any.
type qentry struct {
	off  int
	data []byte
}

// Dial connects to an NBD server and negotiates exportName ("" asks for the
// server's default export). network and addr are as for net.Dial ("tcp",
// "127.0.0.1:10809" or "unix", "/run/x.sock"). ctx bounds the connection
// and the handshake only.
func Dial(ctx context.Context, network, addr, exportName string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	c, err := NewClient(ctx, nc, exportName)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// ClientOptions say what a Client negotiates.
type ClientOptions struct {
	// Export is the export name; "" asks for the server's default export.
	Export string
	// TLS, if set, upgrades the connection with NBD_OPT_STARTTLS before
	// anything else (a server that refuses fails the handshake). Set
	// ServerName or InsecureSkipVerify as crypto/tls requires, and
	// Certificates for servers that ask for a client certificate.
	TLS *tls.Config
	// Writer, if set, identifies the client as a ddraid writer with
	// NBD_OPT_DDRAID_WRITER before NBD_OPT_GO; the server must be a ddraid
	// agent serving a member export. A writer refused as fenced gets an
	// error wrapping ErrFenced, from the handshake or, once connected,
	// from any write-type command the server refuses with EPERM.
	Writer *Writer
	// BlockSizes asks for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO, so that
	// Info.MinBlockSize reports the server's minimum even from servers
	// that send it only when asked. A client that asks promises to keep
	// to the minimum, and the server may then refuse misaligned requests;
	// the Client turns them into aligned ones (reading whole blocks, and
	// read-modify-write for writes), which costs extra round trips.
	BlockSizes bool
}

// NewClient runs the handshake for exportName on an established
// connection and returns a Client owning nc. On error the caller still
// owns nc. ctx bounds the handshake.
func NewClient(ctx context.Context, nc net.Conn, exportName string) (*Client, error) {
	return NewClientWith(ctx, nc, ClientOptions{Export: exportName})
}

// NewClientWith is NewClient with TLS and writer identity (see
// ClientOptions). On error the caller still owns nc.
func NewClientWith(ctx context.Context, nc net.Conn, o ClientOptions) (*Client, error) {
	exportName := o.Export
	if len(exportName) > maxStringLen {
		return nil, fmt.Errorf("nbd: export name is %d bytes, longer than %d", len(exportName), maxStringLen)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	c := &Client{
		nc:         nc,
		br:         bufio.NewReaderSize(nc, readBufferSize),
		pending:    make(map[uint64]*call),
		readerDone: make(chan struct{}),
	}
	err := c.handshake(o)
	stopped := stop()
	if err != nil || !stopped {
		cerr := ctx.Err()
		if dl, ok := ctx.Deadline(); ok && cerr == nil && !time.Now().Before(dl) {
			cerr = context.DeadlineExceeded // the socket deadline fired first
		}
		if cerr != nil {
			// The deadline cut the handshake short.
			return nil, fmt.Errorf("nbd: handshake for export %q: %w (%v)", exportName, cerr, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("nbd: handshake for export %q: %w", exportName, err)
	}
	nc.SetDeadline(time.Time{})

	c.maxPayload = clientMaxPayload
	if m := c.info.MaxBlockSize; m != 0 && int64(m) < int64(c.maxPayload) {
		c.maxPayload = int(m)
	}
	c.align = 1
	if m := int(c.info.MinBlockSize); m > 1 {
		c.maxPayload = max(c.maxPayload/m*m, m)
		if o.BlockSizes {
			c.align = int64(m)
		}
	}
	go c.readLoop()
	return c, nil
}

// handshake negotiates the export, filling c.info.
func (c *Client) handshake(o ClientOptions) error {
	name := o.Export
	fixed, noZeroes, err := c.greet()
	if err != nil {
		return err
	}
	if !fixed && (o.TLS != nil || o.Writer != nil) {
		return errors.New("server does not speak fixed newstyle negotiation, needed for TLS and writer identity")
	}
	if o.TLS != nil {
		if err := c.startTLS(o.TLS); err != nil {
			return err
		}
	}
	if o.Writer != nil {
		if err := c.identify(name, *o.Writer); err != nil {
			return err
		}
		c.writer = true
	}
	if fixed {
		ok, err := c.optGo(name, o.BlockSizes)
		if err != nil || ok {
			return err
		}
	}
	return c.optExportName(name, noZeroes)
}

// greet reads the server's greeting and sends the client flags, taking
// every handshake flag the server offers.
func (c *Client) greet() (fixed, noZeroes bool, err error) {
	var b [18]byte
	if _, err := io.ReadFull(c.br, b[:18]); err != nil {
		return false, false, fmt.Errorf("reading greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(b[0:]); m != magicInit {
		return false, false, fmt.Errorf("bad greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(b[8:]); m != magicOpt {
		return false, false, fmt.Errorf("server does not speak newstyle negotiation (magic %#x)", m)
	}
	hflags := binary.BigEndian.Uint16(b[16:])
	fixed = hflags&flagFixedNewstyle != 0
	noZeroes = hflags&flagNoZeroes != 0
	var cflags uint32
	if fixed {
		cflags |= flagCFixedNewstyle
	}
	if noZeroes {
		cflags |= flagCNoZeroes
	}
	binary.BigEndian.PutUint32(b[:4], cflags)
	if _, err := c.nc.Write(b[:4]); err != nil {
		return false, false, fmt.Errorf("sending client flags: %w", err)
	}
	return fixed, noZeroes, nil
}

// startTLS upgrades the connection with NBD_OPT_STARTTLS.
func (c *Client) startTLS(cfg *tls.Config) error {
	if err := c.sendOption(optStartTLS, nil); err != nil {
		return err
	}
	typ, d, err := c.readOptReply(optStartTLS)
	if err != nil {
		return err
	}
	if typ != repAck {
		return fmt.Errorf("server refused NBD_OPT_STARTTLS (reply type %#x): %s", typ, d)
	}
	if c.br.Buffered() > 0 {
		return errors.New("server sent data after acknowledging NBD_OPT_STARTTLS")
	}
	cfg = cfg.Clone()
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	tc := tls.Client(c.nc, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc = tc
	c.br = bufio.NewReaderSize(tc, readBufferSize)
	return nil
}

// identify sends NBD_OPT_DDRAID_WRITER.
func (c *Client) identify(name string, w Writer) error {
	if err := c.sendOption(OptWriter, marshalWriter(name, w)); err != nil {
		return err
	}
	typ, d, err := c.readOptReply(OptWriter)
	if err != nil {
		return err
	}
	switch typ {
	case repAck:
		return nil
	case repErrPolicy:
		return fmt.Errorf("%w: %s", ErrFenced, d)
	case repErrUnsup:
		return fmt.Errorf("the server does not take ddraid writer identity (is it a ddraid agent, and %q a disk it hosts?): %s", name, d)
	case repErrUnknown:
		return fmt.Errorf("%w %q: %s", ErrUnknownExport, name, d)
	}
	return fmt.Errorf("NBD_OPT_DDRAID_WRITER refused with reply type %#x: %s", typ, d)
}

// sendOption writes one option request.
func (c *Client) sendOption(opt uint32, data []byte) error {
	msg := make([]byte, optHeaderLen+len(data))
	binary.BigEndian.PutUint64(msg[0:], magicOpt)
	binary.BigEndian.PutUint32(msg[8:], opt)
	binary.BigEndian.PutUint32(msg[12:], uint32(len(data)))
	copy(msg[optHeaderLen:], data)
	if _, err := c.nc.Write(msg); err != nil {
		return fmt.Errorf("sending option %d: %w", opt, err)
	}
	return nil
}

// readOptReply reads one option reply to opt.
func (c *Client) readOptReply(opt uint32) (typ uint32, data []byte, err error) {
	var h [optReplyHeaderLen]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("reading reply to option %d: %w", opt, err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		return 0, nil, fmt.Errorf("bad option reply magic %#x", m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, fmt.Errorf("reply to option %d while waiting for option %d", o, opt)
	}
	typ = binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptReplyLen {
		return 0, nil, fmt.Errorf("option reply of %d bytes is too long", n)
	}
	data = make([]byte, n)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return 0, nil, fmt.Errorf("reading reply to option %d: %w", opt, err)
	}
	return typ, data, nil
}

// optGo negotiates with NBD_OPT_GO. ok is false when the server does not
// support it and the caller should fall back to NBD_OPT_EXPORT_NAME.
func (c *Client) optGo(name string, blockSizes bool) (ok bool, err error) {
	infos := []uint16{infoName, infoDescription}
	if blockSizes {
		infos = append(infos, infoBlockSize)
	}
	data := make([]byte, 4+len(name)+2+2*len(infos))
	binary.BigEndian.PutUint32(data[0:], uint32(len(name)))
	copy(data[4:], name)
	rest := data[4+len(name):]
	binary.BigEndian.PutUint16(rest[0:], uint16(len(infos)))
	for i, info := range infos {
		binary.BigEndian.PutUint16(rest[2+2*i:], info)
	}
	if err := c.sendOption(optGo, data); err != nil {
		return false, err
	}
	c.info = Info{Name: name}
	gotExport := false
	for {
		typ, d, err := c.readOptReply(optGo)
		if err != nil {
			return false, err
		}
		switch {
		case typ == repAck:
			if !gotExport {
				return false, errors.New("NBD_OPT_GO succeeded without NBD_INFO_EXPORT")
			}
			return true, nil
		case typ == repInfo:
			if len(d) < 2 {
				return false, errors.New("NBD_REP_INFO shorter than 2 bytes")
			}
			switch binary.BigEndian.Uint16(d) {
			case infoExport:
				if len(d) != 12 {
					return false, fmt.Errorf("NBD_INFO_EXPORT of %d bytes", len(d))
				}
				if err := c.setExport(binary.BigEndian.Uint64(d[2:]), binary.BigEndian.Uint16(d[10:])); err != nil {
					return false, err
				}
				gotExport = true
			case infoName:
				c.info.Name = string(d[2:])
			case infoDescription:
				c.info.Description = string(d[2:])
			case infoBlockSize:
				if len(d) != 14 {
					return false, fmt.Errorf("NBD_INFO_BLOCK_SIZE of %d bytes", len(d))
				}
				c.info.MinBlockSize = binary.BigEndian.Uint32(d[2:])
				if m := c.info.MinBlockSize; m == 0 || m > minBlockSizeCap || m&(m-1) != 0 {
					return false, fmt.Errorf("NBD_INFO_BLOCK_SIZE with minimum %d: not a power of two up to %d", m, minBlockSizeCap)
				}
				c.info.PreferredBlockSize = binary.BigEndian.Uint32(d[6:])
				c.info.MaxBlockSize = binary.BigEndian.Uint32(d[10:])
			}
		case typ == repErrUnsup:
			return false, nil
		case typ == repErrUnknown:
			return false, fmt.Errorf("%w %q: %s", ErrUnknownExport, name, d)
		case typ&repFlagError != 0:
			return false, fmt.Errorf("NBD_OPT_GO refused with reply type %#x: %s", typ, d)
		default:
			return false, fmt.Errorf("unexpected reply type %d to NBD_OPT_GO", typ)
		}
	}
}

// optExportName negotiates with the old NBD_OPT_EXPORT_NAME, after which an
// unknown export shows only as a closed connection.
func (c *Client) optExportName(name string, noZeroes bool) error {
	if err := c.sendOption(optExportName, []byte(name)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += zeroPadLen
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w %q (server closed the connection)", ErrUnknownExport, name)
		}
		return fmt.Errorf("reading NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	c.info = Info{Name: name}
	return c.setExport(binary.BigEndian.Uint64(b[0:]), binary.BigEndian.Uint16(b[8:]))
}

func (c *Client) setExport(size uint64, flags uint16) error {
	if size > math.MaxInt64 {
		return fmt.Errorf("export size %d is too large", size)
	}
	c.info.Size = int64(size)
	c.info.Flags = flags
	return nil
}

// Info returns what the server reported about the export.
func (c *Client) Info() Info { return c.info }

// Size implements blockdev.Device.
func (c *Client) Size() int64 { return c.info.Size }

// BlockSize implements blockdev.Device: the advertised minimum block size,
// raised to 512 unless it is 1; 512 when the server advertised none.
func (c *Client) BlockSize() int {
	switch m := int(c.info.MinBlockSize); {
	case m == 1:
		return 1
	case m >= interopBlockSize:
		return m
	}
	return interopBlockSize
}

// Do sends one request and waits for its reply. The client assigns
// req.Cookie. For CmdRead, data receives the reply payload and must be
// req.Length bytes; for CmdWrite, data is the payload and must be
// req.Length bytes; other commands take no data. The request is sent as
// given, unchecked, so tests can send anything the framing allows. A
// refused request returns the server's Errno unwrapped. Do refuses
// CmdDisc; use Close.
func (c *Client) Do(req Request, data []byte) error {
	switch req.Type {
	case CmdDisc:
		return errors.New("nbd: send NBD_CMD_DISC with Close")
	case CmdRead, CmdWrite:
		if len(data) != int(req.Length) {
			return fmt.Errorf("nbd: %s of %d bytes with a %d-byte buffer", req.Type, req.Length, len(data))
		}
	default:
		if len(data) != 0 {
			return fmt.Errorf("nbd: %s takes no data", req.Type)
		}
	}
	return c.do(req, data)
}

func (c *Client) getCall() *call {
	if cl, ok := c.calls.Get().(*call); ok {
		return cl
	}
	return &call{done: make(chan error, 1)}
}

// do sends req and waits for its reply.
func (c *Client) do(req Request, data []byte) error {
	cl := c.getCall()
	c.wmu.Lock()
	c.mu.Lock()
	if c.closed || c.err != nil {
		err := c.err
		if c.closed {
			err = ErrClientClosed
		}
		c.mu.Unlock()
		c.wmu.Unlock()
		c.calls.Put(cl)
		return err
	}
	cl.typ = req.Type
	if req.Type == CmdRead {
		cl.buf = data
	}
	req.Cookie = c.cookie
	c.cookie++
	c.pending[req.Cookie] = cl
	c.mu.Unlock()
	var payload []byte
	if req.Type == CmdWrite {
		payload = data
	}
	c.sendLocked(&req, payload)

	err := <-cl.done
	cl.buf = nil
	c.calls.Put(cl)
	if err == EPERM && c.writer && fenceable(req.Type) {
		err = errFencedWrite
	}
	return err
}

// sendLocked queues one request and, unless another caller is sending,
// sends the queue. It is called with wmu held and returns with it released.
func (c *Client) sendLocked(req *Request, payload []byte) {
	var h [requestHeaderLen]byte
	req.encode(&h)
	c.qents = append(c.qents, qentry{off: len(c.qhdr), data: payload})
	c.qhdr = append(c.qhdr, h[:]...)
	if c.writing {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	for len(c.qents) > 0 {
		hdrs, ents := c.qhdr, c.qents
		c.qhdr, c.qents = c.sparehdr[:0], c.spareent[:0]
		c.wmu.Unlock()

		// Consecutive headers share one iovec; payloads sit between them.
		vec := c.wvec[:0]
		start := 0
		for _, e := range ents {
			if len(e.data) > 0 {
				end := e.off + requestHeaderLen
				vec = append(vec, hdrs[start:end], e.data)
				start = end
			}
		}
		if start < len(hdrs) {
			vec = append(vec, hdrs[start:])
		}
		c.wbufs = vec
		_, err := c.wbufs.WriteTo(c.nc)
		clear(vec)
		c.wvec = vec[:0]
		clear(ents)
		if err != nil {
			c.fail(fmt.Errorf("nbd: sending requests: %w", err))
		}

		c.wmu.Lock()
		c.sparehdr, c.spareent = hdrs[:0], ents[:0]
	}
	c.writing = false
	c.wmu.Unlock()
}

// fail marks the connection broken with err, fails every pending request,
// and closes the socket.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	for k, cl := range c.pending {
		delete(c.pending, k)
		cl.done <- c.err
	}
	c.mu.Unlock()
	c.nc.Close()
}

// readLoop receives replies and completes the matching calls.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	var h [replyHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			c.mu.Lock()
			closed := c.closed
			c.mu.Unlock()
			if closed {
				c.fail(ErrClientClosed)
			} else {
				c.fail(fmt.Errorf("nbd: connection to server lost: %w", err))
			}
			return
		}
		switch m := binary.BigEndian.Uint32(h[0:]); m {
		case magicSimpleReply:
		case magicStructReply:
			c.fail(errors.New("nbd: protocol error: structured reply, which was not negotiated"))
			return
		default:
			c.fail(fmt.Errorf("nbd: protocol error: reply magic %#x", m))
			return
		}
		errno := Errno(binary.BigEndian.Uint32(h[4:]))
		cookie := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		cl := c.pending[cookie]
		delete(c.pending, cookie)
		c.mu.Unlock()
		if cl == nil {
			c.fail(fmt.Errorf("nbd: protocol error: reply to unknown cookie %d", cookie))
			return
		}
		if errno == 0 && cl.typ == CmdRead && len(cl.buf) > 0 {
			if _, err := io.ReadFull(c.br, cl.buf); err != nil {
				err = fmt.Errorf("nbd: reading READ payload: %w", err)
				cl.done <- err
				c.fail(err)
				return
			}
		}
		if errno != 0 {
			cl.done <- errno
		} else {
			cl.done <- nil
		}
	}
}

// Close ends the session: it sends NBD_CMD_DISC, lets the server answer the
// requests still in flight (waiting at most 10 s), and closes the
// connection. Calls made after Close fail with ErrClientClosed. Close
// returns nil; calling it again does nothing.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	broken := c.err != nil
	c.mu.Unlock()

	if !broken {
		// Requests already queued go out before the DISC; the server
		// answers them and then closes the connection.
		c.wmu.Lock()
		c.sendLocked(&Request{Type: CmdDisc}, nil)
		c.nc.SetReadDeadline(time.Now().Add(closeTimeout))
		<-c.readerDone
	}
	c.nc.Close()
	<-c.readerDone
	return nil
}

// ReadAt implements blockdev.Device, splitting long reads into requests of
// at most the negotiated maximum payload.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), c.info.Size); err != nil {
		return 0, fmt.Errorf("nbd: read export %q: %w", c.info.Name, err)
	}
	if c.misaligned(off, int64(len(p))) {
		return c.readSpans(p, off)
	}
	return c.read(p, off)
}

// read is ReadAt for a checked, aligned range.
func (c *Client) read(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, c.maxPayload)
		at := off + int64(done)
		if err := c.do(Request{Type: CmdRead, Offset: uint64(at), Length: uint32(n)}, p[done:done+n]); err != nil {
			return done, fmt.Errorf("nbd: read %d bytes at %d from export %q: %w", n, at, c.info.Name, err)
		}
		done += n
	}
	return done, nil
}

// WriteAt implements blockdev.Device, splitting long writes into requests
// of at most the negotiated maximum payload.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if err := c.checkWrite(off, int64(len(p))); err != nil {
		return 0, fmt.Errorf("nbd: write export %q: %w", c.info.Name, err)
	}
	if c.misaligned(off, int64(len(p))) {
		if err := c.writeSpans(p, off, int64(len(p))); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.write(p, off)
}

// write is WriteAt for a checked, aligned range.
func (c *Client) write(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, c.maxPayload)
		at := off + int64(done)
		if err := c.do(Request{Type: CmdWrite, Offset: uint64(at), Length: uint32(n)}, p[done:done+n]); err != nil {
			return done, fmt.Errorf("nbd: write %d bytes at %d to export %q: %w", n, at, c.info.Name, err)
		}
		done += n
	}
	return done, nil
}

func (c *Client) checkWrite(off, length int64) error {
	if err := blockdev.CheckRange(off, length, c.info.Size); err != nil {
		return err
	}
	if c.info.Flags&FlagReadOnly != 0 {
		return blockdev.ErrReadOnly
	}
	return nil
}

// Flush implements blockdev.Device. A server that does not advertise
// NBD_FLAG_SEND_FLUSH has no volatile cache to flush, so Flush then
// returns nil at once.
func (c *Client) Flush() error {
	if c.info.Flags&FlagSendFlush == 0 {
		return nil
	}
	if err := c.do(Request{Type: CmdFlush}, nil); err != nil {
		return fmt.Errorf("nbd: flush export %q: %w", c.info.Name, err)
	}
	return nil
}

// Trim implements blockdev.Device. Trim is a hint: against a server without
// NBD_FLAG_SEND_TRIM it does nothing.
func (c *Client) Trim(off, length int64) error {
	if err := c.checkWrite(off, length); err != nil {
		return fmt.Errorf("nbd: trim export %q: %w", c.info.Name, err)
	}
	if c.info.Flags&FlagSendTrim == 0 {
		return nil
	}
	if c.misaligned(off, length) {
		lo, hi, ok := c.trimSpan(off, length)
		if !ok {
			return nil
		}
		off, length = lo, hi-lo
	}
	return c.ranged(CmdTrim, off, length)
}

// Zero implements blockdev.Device with NBD_CMD_WRITE_ZEROES, or with writes
// of zeroes when the server does not advertise NBD_FLAG_SEND_WRITE_ZEROES.
func (c *Client) Zero(off, length int64) error {
	if err := c.checkWrite(off, length); err != nil {
		return fmt.Errorf("nbd: zero export %q: %w", c.info.Name, err)
	}
	if c.misaligned(off, length) {
		return c.writeSpans(nil, off, length)
	}
	return c.zero(off, length)
}

// zero is Zero for a checked, aligned range.
func (c *Client) zero(off, length int64) error {
	if c.info.Flags&FlagSendWriteZeroes != 0 {
		return c.ranged(CmdWriteZeroes, off, length)
	}
	for length > 0 {
		n := min(length, int64(len(zeroes)), int64(c.maxPayload))
		if _, err := c.write(zeroes[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Clear sends NBD_CMD_DDRAID_CLEAR: the member host clears the
// write-intent marks of the regions inside [off, off+length). Only a
// client that identified as a writer may send it.
func (c *Client) Clear(off, length int64) error {
	if !c.writer {
		return errors.New("nbd: CLEAR needs writer identity (ClientOptions.Writer)")
	}
	if err := blockdev.CheckRange(off, length, c.info.Size); err != nil {
		return fmt.Errorf("nbd: clear export %q: %w", c.info.Name, err)
	}
	return c.ranged(CmdClear, off, length)
}

// ranged sends a payload-free command over [off, off+length) in chunks of at
// most 1 GiB.
func (c *Client) ranged(cmd Command, off, length int64) error {
	for length > 0 {
		n := min(length, maxZeroChunk)
		if err := c.do(Request{Type: cmd, Offset: uint64(off), Length: uint32(n)}, nil); err != nil {
			return fmt.Errorf("nbd: %s %d bytes at %d on export %q: %w", cmd, n, off, c.info.Name, err)
		}
		off += n
		length -= n
	}
	return nil
}
