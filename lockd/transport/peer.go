package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// maxBatch bounds the frames written between two flushes, so one flush
// deadline covers a bounded amount of data.
const maxBatch = 256

// writeBufSize is the buffer frames are gathered in before a flush.
const writeBufSize = 64 << 10

// peer is one destination: a bounded queue and the goroutine that empties
// it into a connection (or, for this node itself, into the handler).
type peer struct {
	t      *Transport
	name   lockd.NodeID
	addr   string
	queue  chan []byte
	ctx    context.Context
	cancel context.CancelFunc
}

func newPeer(t *Transport, name lockd.NodeID, addr string) *peer {
	ctx, cancel := context.WithCancel(t.ctx)
	return &peer{t: t, name: name, addr: addr, queue: make(chan []byte, t.cfg.QueueLen), ctx: ctx, cancel: cancel}
}

// stop ends the peer's goroutine; its queued frames are dropped.
func (p *peer) stop() { p.cancel() }

// runLocal delivers frames this node sends to itself.
func (p *peer) runLocal() {
	defer p.t.wg.Done()
	for {
		select {
		case f := <-p.queue:
			p.t.sent.Add(1)
			p.t.cfg.Handler(p.name, f)
		case <-p.ctx.Done():
			return
		}
	}
}

// run keeps one connection to the peer and writes its queue to it,
// reconnecting with backoff until the peer is stopped.
func (p *peer) run() {
	defer p.t.wg.Done()
	cfg := &p.t.cfg
	log := p.t.log.With("peer", p.name, "addr", p.addr)
	backoff := cfg.BackoffMin
	failures := 0
	for {
		c, err := p.dial()
		if p.ctx.Err() != nil {
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			failures++
			if failures == 1 {
				log.Warn("lockd transport: cannot reach peer; retrying", "err", err)
			} else {
				log.Debug("lockd transport: dial failed", "attempt", failures, "err", err)
			}
		} else {
			if failures > 0 {
				log.Info("lockd transport: connected to peer", "failed_attempts", failures)
			} else {
				log.Debug("lockd transport: connected to peer")
			}
			failures = 0
			start := time.Now()
			err = p.pump(c)
			if p.ctx.Err() != nil {
				return
			}
			log.Warn("lockd transport: connection to peer lost; reconnecting", "err", err)
			if time.Since(start) >= cfg.BackoffMax {
				backoff = cfg.BackoffMin
			}
		}
		if !p.sleep(jitter(backoff)) {
			return
		}
		backoff = min(2*backoff, cfg.BackoffMax)
	}
}

// jitter returns a duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d < 2 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until the peer stops; it reports whether to go on.
func (p *peer) sleep(d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-p.ctx.Done():
		return false
	}
}

// dial connects, checks the peer's certificate names p.name (crypto/tls
// does, through ServerName), and exchanges hellos. The acceptor answers the
// hello only once it has accepted our certificate and name, so a returned
// connection is one the peer reads from.
func (p *peer) dial() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.t.cfg.DialTimeout)
	defer cancel()
	d := tls.Dialer{
		NetDialer: &net.Dialer{KeepAlive: 15 * time.Second},
		Config:    p.t.clientTLS(p.name),
	}
	c, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s at %s: %w", p.name, p.addr, err)
	}
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	unblock := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer unblock()
	if err := p.hello(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("hello with %s at %s: %w", p.name, p.addr, err)
	}
	if !unblock() {
		c.Close()
		return nil, fmt.Errorf("hello with %s at %s: %w", p.name, p.addr, ctx.Err())
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func (p *peer) hello(c net.Conn) error {
	if _, err := c.Write(helloFrame(string(p.t.cfg.Name))); err != nil {
		return err
	}
	f, err := readFrame(c, helloMaxLen)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("peer closed the connection (it refused our certificate or name)")
		}
		return err
	}
	name, err := parseHello(f)
	if err != nil {
		return err
	}
	if lockd.NodeID(name) != p.name {
		return fmt.Errorf("peer answered as %q", name)
	}
	return nil
}

// pump writes queued frames to c, several per flush when they are queued
// faster than the network takes them, until c fails or the peer stops. A
// reader watches c so that a peer that hangs up is noticed at once, not at
// the next write.
func (p *peer) pump(c net.Conn) error {
	done := make(chan struct{})
	var rerr error
	go func() {
		defer close(done)
		var b [1]byte
		n, err := c.Read(b[:])
		if n > 0 {
			err = errors.New("peer sent data on a send-only connection")
		}
		rerr = err
	}()
	defer func() {
		c.Close()
		<-done
	}()
	bw := bufio.NewWriterSize(c, writeBufSize)
	var hdr []byte
	for {
		var f []byte
		select {
		case f = <-p.queue:
		case <-done:
			return fmt.Errorf("read: %w", rerr)
		case <-p.ctx.Done():
			return p.ctx.Err()
		}
		c.SetWriteDeadline(time.Now().Add(p.t.cfg.WriteTimeout))
		n := 0
	batch:
		for {
			hdr = appendFrameHeader(hdr[:0], len(f))
			if _, err := bw.Write(hdr); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			if _, err := bw.Write(f); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			n++
			if n == maxBatch {
				break
			}
			select {
			case f = <-p.queue:
			default:
				break batch
			}
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		p.t.sent.Add(uint64(n))
	}
}
