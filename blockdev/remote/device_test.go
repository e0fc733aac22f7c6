package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/blockdevtest"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/internal/nbdtest"
)

// testTimeout bounds the waits of the tests on real sockets, so that a bug
// fails a test instead of hanging it.
const testTimeout = 30 * time.Second

// unixServer serves dev on a new unix socket in t.TempDir().
func unixServer(t *testing.T, dev blockdev.Device) (*nbdtest.Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	return serve(t, nbdtest.Listen(t, "unix:"+sock), dev), sock
}

func unixURI(sock string) string { return "nbd+unix:///disk?socket=" + sock }

func openT(t *testing.T, uri string, cfg Config) *Device {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	d, err := Open(ctx, uri, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestConformance runs the Device contract checks against an in-process
// server on a unix socket.
func TestConformance(t *testing.T) {
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
		_, sock := unixServer(t, blockdev.NewMem(1<<20, 512))
		return openT(t, unixURI(sock), Config{})
	})
}

// TestConformanceNoReplayLog runs them as for a server without a write
// cache (no SEND_FLUSH), for which nothing is kept for replay.
func TestConformanceNoReplayLog(t *testing.T) {
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
		_, sock := unixServer(t, blockdev.NewMem(1<<20, 512))
		d := openT(t, unixURI(sock), Config{})
		d.keepLog = false
		return d
	})
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	_, sock := unixServer(t, blockdev.NewMem(1<<20, 512))
	cases := []struct {
		uri  string
		cfg  Config
		is   error
		want string
	}{
		{"nbd+unix:///disk?socket=" + filepath.Join(dir, "none.sock"), Config{}, ErrUnreachable, "none.sock"},
		{"nbd+unix:///other?socket=" + sock, Config{}, nbd.ErrUnknownExport, "other"},
		{"nbds+unix:///disk?socket=" + sock, Config{}, errNeedTLS, "TLS"},
		{unixURI(sock), Config{TLS: nil, FailAfter: -1}, nil, "FailAfter"},
		{"/dev/sdb", Config{}, nil, "not an NBD URI"},
	}
	for _, c := range cases {
		d, err := Open(context.Background(), c.uri, c.cfg)
		if err == nil {
			d.Close()
			t.Errorf("Open(%s) succeeded", c.uri)
			continue
		}
		if (c.is != nil && !errors.Is(err, c.is)) || !bytes.Contains([]byte(err.Error()), []byte(c.want)) {
			t.Errorf("Open(%s) = %v; want errors.Is %v and %q in the message", c.uri, err, c.is, c.want)
		}
	}
	// A TCP port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if _, err := Open(context.Background(), "nbd://"+addr+"/disk", Config{}); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Open on a closed TCP port = %v, want ErrUnreachable", err)
	}
}

// TestManyConcurrentRequests keeps hundreds of requests in flight on one
// connection and checks every byte.
func TestManyConcurrentRequests(t *testing.T) {
	mem := blockdev.NewMem(32<<20, 512)
	inc, sock := unixServer(t, mem)
	d := openT(t, unixURI(sock), Config{})
	defer d.Close()
	const workers, perWorker, chunk = 256, 20, 4096
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				off := int64((w*perWorker + i) * chunk)
				p := pattern(w*1000+i, chunk)
				if _, err := d.WriteAt(p, off); err != nil {
					errs <- err
					return
				}
				got := make([]byte, chunk)
				if _, err := d.ReadAt(got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, p) {
					errs <- fmt.Errorf("worker %d: read back differs at %d", w, off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if conns := inc.Accepted(); conns != 1 {
		t.Fatalf("%d connections, want 1", conns)
	}
	all := contents(mem)
	for w := range workers {
		for i := range perWorker {
			off := (w*perWorker + i) * chunk
			if !bytes.Equal(all[off:off+chunk], pattern(w*1000+i, chunk)) {
				t.Fatalf("server holds wrong data at %d", off)
			}
		}
	}
	d.mu.Lock()
	left := len(d.log.entries)
	d.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d replay entries after a flush", left)
	}
}

// TestReconnectUnixSocket kills the server with writes in flight and
// restarts it on the same socket once the Device has failed to reconnect:
// the writes complete without error and the data is intact.
func TestReconnectUnixSocket(t *testing.T) {
	mem := blockdev.NewMem(4<<20, 512)
	gate := newGateDev(mem)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	current := serve(t, ln, gate)
	restart := make(chan struct{}, 1)
	var failedDials atomic.Int32
	var dialer net.Dialer
	cfg := Config{
		ReconnectMin: time.Millisecond, ReconnectMax: 5 * time.Millisecond,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil && failedDials.Add(1) == 1 {
				restart <- struct{}{}
			}
			return c, err
		},
	}
	d := openT(t, unixURI(sock), cfg)
	defer d.Close()

	const n, chunk = 32, 64 << 10
	gate.arm()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := d.WriteAt(pattern(i, chunk), int64(i*chunk)); err != nil {
				errs <- err
			}
		})
	}
	// The server may run a request on its reader goroutine, so only the
	// first is sure to arrive; the others wait unread in the socket.
	select {
	case <-gate.entered:
	case <-time.After(testTimeout):
		t.Fatal("writes did not reach the server")
	}
	current.Kill()
	gate.release()
	select {
	case <-restart:
	case <-time.After(testTimeout):
		t.Fatal("the Device did not try to reconnect")
	}
	ln, err = nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln, mem)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("write across the restart: %v", err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n*chunk)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if !bytes.Equal(got[i*chunk:(i+1)*chunk], pattern(i, chunk)) {
			t.Fatalf("chunk %d differs after the reconnect", i)
		}
	}
}
