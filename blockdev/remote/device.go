package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
)

// Sentinel errors. Test with errors.Is.
var (
	// ErrUnreachable reports an export that could not be reached: at Open,
	// or for longer than Config.FailAfter after its connection was lost.
	// Once a Device returns it, every later request does too.
	ErrUnreachable = errors.New("remote: export unreachable")
	// ErrReplaced reports an export that came back after a reconnect as
	// something else: another size, or refused by Config.Verify. The Device
	// has failed for good.
	ErrReplaced = errors.New("remote: export replaced while disconnected")
	// ErrFenced is nbd.ErrFenced: the member host refuses this writer's
	// epoch (Config.Writer). The writer must stop IO; it is not a member
	// failure.
	ErrFenced = nbd.ErrFenced
)

// errStalled is the cause given for a connection closed by the IO timeout.
var errStalled = errors.New("no reply within the IO timeout")

// Device is a blockdev.Device backed by an export of an NBD server, kept
// connected across connection losses; see the package documentation.
type Device struct {
	cfg     Config
	uri     URI
	name    string // canonical URI, for messages
	size    int64
	bs      int
	minBS   int  // the minimum block size the server advertised, 0 if none
	keepLog bool // the server has a write cache (it advertised SEND_FLUSH)

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the reconnect and watchdog goroutines

	mu        sync.Mutex
	cur       *link         // nil while reconnecting, after a failure and after Close
	up        chan struct{} // closed when the reconnect under way ends
	err       error         // sticky: why the Device no longer works
	closed    bool
	replaying bool // a reconnect may be reading entry buffers: do not recycle them
	log       replayLog
	flushing  chan struct{} // closed when the budget flush under way ends
}

var _ blockdev.Device = (*Device)(nil)

// link is one connection and what the IO timeout needs to know about it.
type link struct {
	c           *nbd.Client
	nc          net.Conn
	outstanding atomic.Int64 // requests sent and not answered
	progress    atomic.Int64 // unix ns of the last reply, or of the first outstanding request
}

func (l *link) begin() {
	if l.outstanding.Add(1) == 1 {
		l.progress.Store(time.Now().UnixNano())
	}
}

func (l *link) end() {
	l.progress.Store(time.Now().UnixNano())
	l.outstanding.Add(-1)
}

// close drops the connection at once (requests in flight fail) and waits
// for the client's reader to stop.
func (l *link) close() {
	l.nc.Close()
	l.c.Close()
}

// Open connects to the export named by uri (see ParseURI) and returns it
// as a Device. ctx bounds the connection and handshake, as does
// cfg.DialTimeout. A server that cannot be reached gives an error wrapping
// ErrUnreachable; an export the server does not have, nbd.ErrUnknownExport.
// Open does not retry: reconnecting is for connections that were up.
func Open(ctx context.Context, uri string, cfg Config) (*Device, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	name := u.String()
	if u.TLS && cfg.TLS == nil {
		return nil, fmt.Errorf("remote %s: %w", name, errNeedTLS)
	}
	l, err := connect(ctx, &cfg, u)
	if err != nil {
		return nil, fmt.Errorf("remote %s: %w", name, err)
	}
	info := l.c.Info()
	d := &Device{
		cfg: cfg, uri: u, name: name, size: info.Size, bs: l.c.BlockSize(), minBS: int(info.MinBlockSize),
		keepLog: info.Flags&nbd.FlagSendFlush != 0,
		cur:     l,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if cfg.IOTimeout > 0 {
		d.wg.Add(1)
		go d.watchdog()
	}
	return d, nil
}

// clientOptions are the NBD client options for u under cfg.
func clientOptions(cfg *Config, u URI) nbd.ClientOptions {
	o := nbd.ClientOptions{Export: u.Export, Writer: cfg.Writer, BlockSizes: true}
	if cfg.TLS != nil {
		o.TLS = cfg.TLS.Clone()
		if o.TLS.ServerName == "" && u.Network == "tcp" {
			o.TLS.ServerName, _, _ = net.SplitHostPort(u.Addr)
		}
	}
	return o
}

// Dirty asks the ddraid agent serving the export at uri which regions are
// marked for slot (nbd.QueryDirty, on a connection of its own, with
// cfg's Dial, TLS and DialTimeout; no writer identity is sent). The
// extents cover the export in order, StateDirty where marked. An agent
// that cannot be reached gives an error wrapping ErrUnreachable.
func Dirty(ctx context.Context, uri string, cfg Config, slot uint32) ([]blockdev.Extent, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if u.TLS && cfg.TLS == nil {
		return nil, fmt.Errorf("remote %s: %w", u, errNeedTLS)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	nc, err := cfg.Dial(ctx, u.Network, u.Addr)
	if err != nil {
		return nil, fmt.Errorf("remote %s: %w: %w", u, ErrUnreachable, err)
	}
	defer nc.Close()
	ext, err := nbd.QueryDirty(ctx, nc, clientOptions(&cfg, u), slot)
	if err != nil {
		return nil, fmt.Errorf("remote %s: %w", u, err)
	}
	return ext, nil
}

// connect dials and runs the handshake, bounded by cfg.DialTimeout.
func connect(ctx context.Context, cfg *Config, u URI) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	nc, err := cfg.Dial(ctx, u.Network, u.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	c, err := nbd.NewClientWith(ctx, nc, clientOptions(cfg, u))
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &link{c: c, nc: nc}, nil
}

// URI returns the export's URI in canonical form.
func (d *Device) URI() string { return d.name }

// Size implements blockdev.Device: the export size at Open.
func (d *Device) Size() int64 { return d.size }

// BlockSize implements blockdev.Device: the server's minimum block size as
// the NBD client reports it (512 when the server gave none).
func (d *Device) BlockSize() int { return d.bs }

// MinBlockSize returns the minimum block size the server advertised when
// the device was opened, or 0 if it advertised none. The server may refuse
// a request whose offset or length is not a multiple of it (EINVAL).
func (d *Device) MinBlockSize() int { return d.minBS }

// ReadAt implements blockdev.Device. A read interrupted by a connection
// loss is sent again after the reconnect.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size); err != nil {
		return 0, fmt.Errorf("remote %s: read: %w", d.name, err)
	}
	if len(p) == 0 {
		return 0, nil
	}
	err := d.call(func(c *nbd.Client) error { _, err := c.ReadAt(p, off); return err }, nil)
	if err != nil {
		return 0, d.opErr("read", off, int64(len(p)), err)
	}
	return len(p), nil
}

// WriteAt implements blockdev.Device. A write interrupted by a connection
// loss is sent again after the reconnect (the same bytes at the same
// offset, so repeating it is harmless). Once answered, a copy is kept for
// replay until a flush has made it durable; p itself is not retained.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size); err != nil {
		return 0, fmt.Errorf("remote %s: write: %w", d.name, err)
	}
	if len(p) == 0 {
		return 0, nil
	}
	var seq uint64
	var acked func()
	if d.keepLog {
		// Copy before sending, outside the lock that acked runs under.
		buf := getBuf(len(p))
		copy(*buf, p)
		defer func() {
			if buf != nil {
				putBuf(buf)
			}
		}()
		acked = func() { seq, buf = d.log.addWrite(buf, off), nil }
	}
	if err := d.call(func(c *nbd.Client) error { _, err := c.WriteAt(p, off); return err }, acked); err != nil {
		return 0, d.opErr("write", off, int64(len(p)), err)
	}
	if d.keepLog {
		if err := d.relieve(seq); err != nil {
			return len(p), err
		}
	}
	return len(p), nil
}

// Zero implements blockdev.Device with NBD_CMD_WRITE_ZEROES (or written
// zeroes when the server lacks it). It is retried and replayed like a
// write.
func (d *Device) Zero(off, length int64) error {
	if err := blockdev.CheckRange(off, length, d.size); err != nil {
		return fmt.Errorf("remote %s: zero: %w", d.name, err)
	}
	if length == 0 {
		return nil
	}
	var seq uint64
	var acked func()
	if d.keepLog {
		acked = func() { seq = d.log.addZero(off, length) }
	}
	if err := d.call(func(c *nbd.Client) error { return c.Zero(off, length) }, acked); err != nil {
		return d.opErr("zero", off, length, err)
	}
	if d.keepLog {
		return d.relieve(seq)
	}
	return nil
}

// Trim implements blockdev.Device. It is retried after a reconnect but not
// replayed: a trim the server lost leaves the old contents, which Trim
// allows.
func (d *Device) Trim(off, length int64) error {
	if err := blockdev.CheckRange(off, length, d.size); err != nil {
		return fmt.Errorf("remote %s: trim: %w", d.name, err)
	}
	if length == 0 {
		return nil
	}
	if err := d.call(func(c *nbd.Client) error { return c.Trim(off, length) }, nil); err != nil {
		return d.opErr("trim", off, length, err)
	}
	return nil
}

// Clear asks the member host to clear its write-intent marks of the
// regions inside [off, off+length) (NBD_CMD_DDRAID_CLEAR; Config.Writer
// must be set). It is retried after a reconnect like a trim.
func (d *Device) Clear(off, length int64) error {
	if d.cfg.Writer == nil {
		return fmt.Errorf("remote %s: clear: no writer identity", d.name)
	}
	if err := blockdev.CheckRange(off, length, d.size); err != nil {
		return fmt.Errorf("remote %s: clear: %w", d.name, err)
	}
	if length == 0 {
		return nil
	}
	if err := d.call(func(c *nbd.Client) error { return c.Clear(off, length) }, nil); err != nil {
		return d.opErr("clear", off, length, err)
	}
	return nil
}

// Flush implements blockdev.Device. It succeeds only when one connection
// answered it after carrying every write that had returned before Flush was
// called: written there, or replayed there after a reconnect. The writes it
// covers are then dropped from the replay log.
func (d *Device) Flush() error {
	for {
		l, upto, err := d.link()
		if err != nil {
			return fmt.Errorf("remote %s: flush: %w", d.name, err)
		}
		l.begin()
		err = l.c.Flush()
		l.end()
		if err == nil {
			d.mu.Lock()
			d.log.trim(upto, !d.replaying)
			d.mu.Unlock()
			return nil
		}
		if !retryable(err) {
			return fmt.Errorf("remote %s: %w", d.name, err)
		}
		d.lost(l, err)
	}
}

// Close implements blockdev.Device. When acknowledged writes are still
// unflushed and the connection is up, it flushes them first; then it ends
// the session (NBD_CMD_DISC) and stops reconnecting. A Device closed while
// disconnected with unflushed writes returns an error saying so.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	flush := d.cur != nil && len(d.log.entries) > 0
	d.mu.Unlock()
	var err error
	if flush {
		err = d.Flush()
	}
	d.mu.Lock()
	if n := len(d.log.entries); n > 0 && err == nil {
		err = fmt.Errorf("remote %s: closed with %d acknowledged writes not known to be durable (the export was unreachable)", d.name, n)
	}
	if d.err == nil {
		d.err = blockdev.ErrClosed
	}
	cur := d.cur
	d.cur = nil
	d.mu.Unlock()
	d.cancel()
	if cur != nil {
		cur.c.Close()
	}
	d.wg.Wait()
	d.mu.Lock()
	d.log.trim(d.log.next, true)
	d.mu.Unlock()
	return err
}

// opErr wraps the final error of a request.
func (d *Device) opErr(op string, off, length int64, err error) error {
	return fmt.Errorf("remote %s: %s %d bytes at %d: %w", d.name, op, length, off, err)
}

// link returns the current connection, waiting while a reconnect is under
// way, and the sequence number the next replay log entry will get (every
// entry before it is on this connection: written or replayed there).
func (d *Device) link() (*link, uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if d.err != nil {
			return nil, 0, d.err
		}
		if d.cur != nil {
			return d.cur, d.log.next, nil
		}
		up := d.up
		d.mu.Unlock()
		<-up
		d.mu.Lock()
	}
}

// call runs do on the current connection until it gets an answer: after a
// connection failure it waits for the reconnect and runs do again. acked,
// if not nil, runs under mu once do succeeded, provided the connection is
// still the current one; if it was lost in the meantime a reconnect may
// already have taken its replay snapshot, so do runs again instead.
func (d *Device) call(do func(c *nbd.Client) error, acked func()) error {
	for {
		l, _, err := d.link()
		if err != nil {
			return err
		}
		l.begin()
		err = do(l.c)
		l.end()
		if err == nil {
			if acked == nil {
				return nil
			}
			d.mu.Lock()
			if d.cur == l {
				acked()
				d.mu.Unlock()
				return nil
			}
			d.mu.Unlock()
			continue
		}
		if !retryable(err) {
			return err
		}
		d.lost(l, err)
	}
}

// retryable reports whether err means the connection failed (so the
// request is sent again after a reconnect) rather than an answer: errors
// the server returned, other than ESHUTDOWN, and local range or read-only
// refusals are answers.
func retryable(err error) bool {
	var e nbd.Errno
	if errors.As(err, &e) {
		return e == nbd.ESHUTDOWN
	}
	return !errors.Is(err, blockdev.ErrOutOfRange) && !errors.Is(err, blockdev.ErrReadOnly)
}

// relieve makes a writer whose change took the replay log over budget
// wait until that change is durable, running (or joining) a flush.
func (d *Device) relieve(seq uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.err == nil && d.log.bytes > d.cfg.ReplayBudget && d.log.pending(seq) {
		if ch := d.flushing; ch != nil {
			d.mu.Unlock()
			<-ch
			d.mu.Lock()
			continue
		}
		ch := make(chan struct{})
		d.flushing = ch
		d.mu.Unlock()
		err := d.Flush()
		d.mu.Lock()
		d.flushing = nil
		close(ch)
		if err != nil {
			return err
		}
	}
	return nil
}

// lost starts a reconnect unless l is no longer the current connection.
func (d *Device) lost(l *link, cause error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur != l || d.err != nil {
		return
	}
	d.cur = nil
	d.up = make(chan struct{})
	d.replaying = true
	d.wg.Add(1)
	go d.reconnect(l, d.up, time.Now(), cause)
}

// reconnect replaces the lost connection old, with backoff, until it
// succeeds, the export counts as unreachable, or the Device is closed. It
// closes up when it ends.
func (d *Device) reconnect(old *link, up chan struct{}, down time.Time, cause error) {
	defer d.wg.Done()
	old.close()
	log := d.cfg.Logger.With("uri", d.name)
	log.Warn("remote: connection lost; reconnecting", "err", cause, "fail_after", d.cfg.FailAfter)
	last := cause
	for n := 0; ; n++ {
		wait, ok := nextAttempt(n, down, time.Now(), d.cfg.FailAfter, d.cfg.ReconnectMin, d.cfg.ReconnectMax)
		if !ok {
			d.giveUp(up, fmt.Errorf("%w: no working connection for %v (%d attempts; last error: %v)", ErrUnreachable, d.cfg.FailAfter, n, last))
			return
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-d.ctx.Done():
				t.Stop()
				d.giveUp(up, nil)
				return
			}
		}
		l, err := connect(d.ctx, &d.cfg, d.uri)
		if errors.Is(err, ErrFenced) {
			d.giveUp(up, fmt.Errorf("reconnect: %w", err))
			return
		}
		if err == nil {
			var replayed int
			var permanent bool
			replayed, permanent, err = d.restore(l, down)
			if err == nil {
				if d.install(l, up) {
					log.Info("remote: reconnected", "down_for", time.Since(down), "attempts", n+1, "replayed", replayed)
				}
				return
			}
			l.close()
			if permanent {
				d.giveUp(up, err)
				return
			}
		}
		if d.ctx.Err() != nil {
			d.giveUp(up, nil)
			return
		}
		last = err
		log.Debug("remote: reconnect attempt failed", "attempt", n+1, "err", err)
	}
}

// restore readies a new connection: the export must have its old size and
// pass Config.Verify, then every acknowledged but unflushed change is
// replayed on it. permanent reports an error that retrying cannot cure.
// The work is bounded: at the FailAfter deadline (or DialTimeout from now,
// whichever is later) or at Close the connection is cut.
func (d *Device) restore(l *link, down time.Time) (replayed int, permanent bool, err error) {
	if s := l.c.Size(); s != d.size {
		return 0, true, fmt.Errorf("%w: the export has %d bytes, it had %d", ErrReplaced, s, d.size)
	}
	budget := max(time.Until(down.Add(d.cfg.FailAfter)), d.cfg.DialTimeout)
	t := time.AfterFunc(budget, func() { l.nc.Close() })
	defer t.Stop()
	stop := context.AfterFunc(d.ctx, func() { l.nc.Close() })
	defer stop()
	if d.cfg.Verify != nil {
		p := &probe{dev: l.c}
		if err := d.cfg.Verify(p); err != nil {
			if ioErr := p.failure(); ioErr != nil {
				return 0, !retryable(ioErr), fmt.Errorf("verifying the export: %w", ioErr)
			}
			return 0, true, fmt.Errorf("%w: %w", ErrReplaced, err)
		}
	}
	d.mu.Lock()
	entries := d.log.snapshot()
	d.mu.Unlock()
	if err := replay(l.c, entries); err != nil {
		return 0, !retryable(err), fmt.Errorf("replaying %d acknowledged writes: %w", len(entries), err)
	}
	return len(entries), false, nil
}

// install makes l the current connection and wakes the waiting requests.
// It reports false (and closes l) when the Device was closed meanwhile.
func (d *Device) install(l *link, up chan struct{}) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.replaying = false
	defer close(up)
	if d.err != nil {
		l.close()
		return false
	}
	d.cur = l
	return true
}

// giveUp fails the Device with err (nil: it is being closed, which set its
// own error) and wakes the waiting requests. The replay log is dropped: its
// changes can no longer reach the export.
func (d *Device) giveUp(up chan struct{}, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil && d.err == nil {
		d.err = err
		d.cfg.Logger.Error("remote: export failed; failing its requests", "uri", d.name, "err", err,
			"unflushed_writes", len(d.log.entries))
	}
	d.replaying = false
	if err != nil {
		d.log.trim(d.log.next, true)
	}
	close(up)
}

// watchdog treats a connection with requests outstanding and no reply for
// IOTimeout as lost.
func (d *Device) watchdog() {
	defer d.wg.Done()
	tick := time.NewTicker(max(d.cfg.IOTimeout/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
		}
		d.mu.Lock()
		l := d.cur
		d.mu.Unlock()
		if l != nil && stalled(l.outstanding.Load(), time.Unix(0, l.progress.Load()), time.Now(), d.cfg.IOTimeout) {
			d.lost(l, fmt.Errorf("%w (%v)", errStalled, d.cfg.IOTimeout))
		}
	}
}

// replayDepth is how many replayed changes are in flight at once, and
// replayWave how many may be started before waiting for all of them.
const (
	replayDepth = 16
	replayWave  = 256
)

// replay sends entries again in their order as far as it matters: entries
// are sent concurrently in waves, and a wave ends before an entry that
// overlaps one of its entries.
func replay(dev blockdev.Device, entries []entry) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		wave  []*entry
	)
	sem := make(chan struct{}, replayDepth)
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return first != nil }
	for i := range entries {
		e := &entries[i]
		if len(wave) >= replayWave || overlapsAny(wave, e) {
			wg.Wait()
			wave = wave[:0]
		}
		if failed() {
			break
		}
		wave = append(wave, e)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := e.apply(dev)
			<-sem
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

func overlapsAny(wave []*entry, e *entry) bool {
	for _, w := range wave {
		if w.off < e.off+e.n && e.off < w.off+w.n {
			return true
		}
	}
	return false
}

// probe is the Device Config.Verify sees: the new connection, remembering
// the first IO error so that a failed read is told apart from a refusal.
// Close does nothing: the connection is not Verify's to close.
type probe struct {
	dev blockdev.Device
	mu  sync.Mutex
	err error
}

var _ blockdev.Device = (*probe)(nil)

func (p *probe) note(err error) error {
	if err != nil {
		p.mu.Lock()
		if p.err == nil {
			p.err = err
		}
		p.mu.Unlock()
	}
	return err
}

func (p *probe) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *probe) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.dev.ReadAt(b, off)
	return n, p.note(err)
}

func (p *probe) WriteAt(b []byte, off int64) (int, error) {
	n, err := p.dev.WriteAt(b, off)
	return n, p.note(err)
}

func (p *probe) Flush() error                 { return p.note(p.dev.Flush()) }
func (p *probe) Trim(off, length int64) error { return p.note(p.dev.Trim(off, length)) }
func (p *probe) Zero(off, length int64) error { return p.note(p.dev.Zero(off, length)) }
func (p *probe) Size() int64                  { return p.dev.Size() }
func (p *probe) BlockSize() int               { return p.dev.BlockSize() }
func (p *probe) Close() error                 { return nil }
