package remote

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/internal/nbdtest"
)

// testLogger discards logs unless the test runs with -v.
func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// serve starts an NBD server exporting dev as "disk" on ln: one run of
// it, which a test can kill like a process (Kill) or stop.
func serve(t testing.TB, ln net.Listener, dev blockdev.Device) *nbdtest.Server {
	t.Helper()
	return nbdtest.Serve(t, ln, testLogger(), nbd.Export{Name: "disk", Device: dev})
}

// pipeNet is an in-memory network of net.Pipe connections to at most one
// listener, for tests under testing/synctest (real sockets are not
// "durably blocking", so fake time would not advance past them).
type pipeNet struct {
	mu    sync.Mutex
	ln    *pipeListener
	dials int
}

// listen makes a new listener the network's server (the old one must be
// closed).
func (n *pipeNet) listen() *pipeListener {
	l := &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
	n.mu.Lock()
	n.ln = l
	n.mu.Unlock()
	return l
}

// Dial is a Config.Dial: connection refused unless a listener is open.
func (n *pipeNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	n.dials++
	l := n.ln
	n.mu.Unlock()
	refused := &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	if l == nil {
		return nil, refused
	}
	c, s := net.Pipe()
	select {
	case l.ch <- s:
		return c, nil
	case <-l.done:
	case <-ctx.Done():
	}
	c.Close()
	s.Close()
	return nil, refused
}

func (n *pipeNet) dialCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.dials
}

type pipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// gateDev holds writes while armed: each held write announces itself on
// entered and waits until release.
type gateDev struct {
	blockdev.Device
	mu      sync.Mutex
	gate    chan struct{} // nil: writes pass
	entered chan struct{}
}

func newGateDev(dev blockdev.Device) *gateDev {
	return &gateDev{Device: dev, entered: make(chan struct{}, 1024)}
}

func (g *gateDev) arm() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gateDev) release() {
	g.mu.Lock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
	g.mu.Unlock()
}

func (g *gateDev) wait() {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		g.entered <- struct{}{}
		<-gate
	}
}

func (g *gateDev) WriteAt(p []byte, off int64) (int, error) {
	g.wait()
	return g.Device.WriteAt(p, off)
}

func (g *gateDev) ReadAt(p []byte, off int64) (int, error) {
	g.wait()
	return g.Device.ReadAt(p, off)
}

// cacheDev is a disk with a volatile write cache: writes and zeroes reach
// disk only on Flush, and crash loses what was not flushed. After a crash
// the instance refuses everything, like a dead process; a new instance
// over the same disk is the restarted server.
type cacheDev struct {
	disk *blockdev.Mem
	mu   sync.Mutex
	// dirty changes in the order they were made; data nil for a zero.
	dirty   []cached
	flushes int
	dead    bool
}

type cached struct {
	off  int64
	n    int64
	data []byte
}

var errDead = errors.New("server process is dead")

func (c *cacheDev) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return 0, errDead
	}
	if _, err := c.disk.ReadAt(p, off); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	for _, w := range c.dirty {
		lo, hi := max(off, w.off), min(end, w.off+w.n)
		if lo >= hi {
			continue
		}
		if w.data == nil {
			clear(p[lo-off : hi-off])
		} else {
			copy(p[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
		}
	}
	return len(p), nil
}

func (c *cacheDev) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), c.disk.Size()); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return 0, errDead
	}
	c.dirty = append(c.dirty, cached{off: off, n: int64(len(p)), data: bytes.Clone(p)})
	return len(p), nil
}

func (c *cacheDev) Zero(off, n int64) error {
	if err := blockdev.CheckRange(off, n, c.disk.Size()); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return errDead
	}
	c.dirty = append(c.dirty, cached{off: off, n: n})
	return nil
}

func (c *cacheDev) Trim(off, n int64) error { return blockdev.CheckRange(off, n, c.disk.Size()) }

func (c *cacheDev) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return errDead
	}
	for _, w := range c.dirty {
		if w.data == nil {
			c.disk.Zero(w.off, w.n)
		} else {
			c.disk.WriteAt(w.data, w.off)
		}
	}
	c.dirty = nil
	c.flushes++
	return nil
}

func (c *cacheDev) flushCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushes
}

// crash loses the cache and kills the instance.
func (c *cacheDev) crash() {
	c.mu.Lock()
	c.dead = true
	c.dirty = nil
	c.mu.Unlock()
}

func (c *cacheDev) Size() int64    { return c.disk.Size() }
func (c *cacheDev) BlockSize() int { return 512 }
func (c *cacheDev) Close() error   { return nil }

// pattern returns n bytes that depend on seed.
func pattern(seed, n int) []byte {
	p := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range p {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		p[i] = byte(x)
	}
	return p
}

// contents reads all of m under its lock (servers may still be writing).
func contents(m *blockdev.Mem) []byte {
	b := make([]byte, m.Size())
	m.ReadAt(b, 0)
	return b
}
