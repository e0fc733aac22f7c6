// Package nbdtest runs ddraid's NBD server inside Go tests: exports
// served until the test ends, stopped cleanly, or killed the way a
// process dies, and an in-process member host (what `ddraid agent`
// runs) serving disk files on loopback.
package nbdtest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ddraid/ddraid/blockdev/member"
	"github.com/ddraid/ddraid/blockdev/nbd"
)

// Server is an NBD server serving on one listener for a test.
type Server struct {
	*nbd.Server
	// Addr is the listener's address.
	Addr string

	ln   net.Listener
	done chan struct{}

	mu    sync.Mutex
	conns []net.Conn
	ended bool // stopped or killed
}

// Serve serves exports on l until Stop, Kill or the end of the test. A
// nil log discards the server's logs.
func Serve(t testing.TB, l net.Listener, log *slog.Logger, exports ...nbd.Export) *Server {
	t.Helper()
	cfg := nbd.DefaultConfig()
	cfg.Logger = log
	if log == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := nbd.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exports {
		if err := srv.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{Server: srv, Addr: l.Addr().String(), done: make(chan struct{})}
	s.ln = &trackingListener{Listener: l, s: s}
	go func() {
		defer close(s.done)
		srv.Serve(s.ln)
	}()
	t.Cleanup(s.Stop)
	return s
}

// Listen listens on addr (nbd.Listen's forms: HOST:PORT or unix:PATH).
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	l, err := nbd.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Unix serves one export, named name, on a unix socket in a directory of
// the test's and returns the server and the export's URI.
func Unix(t testing.TB, e nbd.Export) (*Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	return Serve(t, Listen(t, "unix:"+sock), nil, e), "nbd+unix:///" + e.Name + "?socket=" + sock
}

// Stop shuts the server down cleanly (flushing its exports) and waits for
// it; after Stop or Kill it only waits.
func (s *Server) Stop() {
	s.mu.Lock()
	ended := s.ended
	s.ended = true
	s.mu.Unlock()
	if !ended {
		s.Shutdown(context.Background())
	}
	<-s.done
}

// Kill drops the listener and every connection at once, without
// NBD_CMD_DISC, flush or shutdown, and waits for Serve to return.
// Requests the server is still executing finish on their own.
func (s *Server) Kill() {
	s.mu.Lock()
	s.ended = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	s.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	<-s.done
}

// Accepted returns how many connections the server has accepted; none
// after Kill.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// trackingListener keeps the server's connections so Kill can drop them.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if l.s.ended {
		c.Close()
		return nil, net.ErrClosed
	}
	l.s.conns = append(l.s.conns, c)
	return c, nil
}

// Agent is an in-process member host serving disk files over TCP on
// loopback.
type Agent struct {
	Host  *member.Host
	Disks []*member.Disk
	*Server
}

// StartAgent makes n disk files of size bytes in dir and serves them from
// a member host whose state is in dir/agent, until the test ends.
func StartAgent(t testing.TB, dir string, n int, size int64) *Agent {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	h, err := member.Open(member.Config{StateDir: filepath.Join(dir, "agent"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() }) // after the server's Stop (cleanups run last first)
	a := &Agent{Host: h}
	var exports []nbd.Export
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("disk%d", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		d, err := h.AddDisk(p)
		if err != nil {
			t.Fatal(err)
		}
		a.Disks = append(a.Disks, d)
		exports = append(exports, nbd.Export{Name: d.Path(), Device: d.Device(), Member: d})
	}
	a.Server = Serve(t, Listen(t, "127.0.0.1:0"), quiet, exports...)
	return a
}

// Members returns the disks as agent members, HOST:PORT:/PATH.
func (a *Agent) Members() []string {
	var out []string
	for _, d := range a.Disks {
		out = append(out, a.Addr+":"+d.Path())
	}
	return out
}
