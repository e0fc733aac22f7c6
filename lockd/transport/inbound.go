package transport

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// readBufSize is the read buffer of an inbound connection.
const readBufSize = 64 << 10

// acceptLoop accepts connections until the listener closes.
func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little
			// rather than spin.
			t.log.Warn("lockd transport: accept failed", "err", err)
			tm := time.NewTimer(50 * time.Millisecond)
			select {
			case <-tm.C:
			case <-t.ctx.Done():
				tm.Stop()
				return
			}
			continue
		}
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			c.Close()
			return
		}
		if len(t.pending) >= t.cfg.MaxHandshakes {
			t.mu.Unlock()
			c.Close()
			t.log.Debug("lockd transport: too many handshakes in progress; connection closed", "remote", c.RemoteAddr().String())
			continue
		}
		t.pending[c] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go t.serve(c)
	}
}

// serve authenticates one inbound connection and passes its frames to the
// handler until it ends. Protocol violations close the connection and are
// logged; nothing a peer sends can make it panic.
func (t *Transport) serve(raw net.Conn) {
	defer t.wg.Done()
	defer raw.Close()
	name, conn, br, err := t.handshake(raw)
	t.mu.Lock()
	delete(t.pending, raw)
	if err == nil && t.closed {
		err = ErrClosed
	}
	if err != nil {
		t.mu.Unlock()
		if t.ctx.Err() == nil {
			t.log.Warn("lockd transport: refused connection", "remote", raw.RemoteAddr().String(), "err", err)
		}
		return
	}
	// A peer has one outbound connection; an older one from the same
	// name is from before it reconnected (or restarted) and is dropped.
	if old := t.inbound[name]; old != nil {
		old.Close()
	}
	t.inbound[name] = conn
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		if t.inbound[name] == conn {
			delete(t.inbound, name)
		}
		t.mu.Unlock()
	}()

	log := t.log.With("peer", name, "remote", raw.RemoteAddr().String())
	log.Debug("lockd transport: peer connected")
	for {
		f, err := readFrame(br, t.cfg.MaxFrame)
		if err != nil {
			switch {
			case t.ctx.Err() != nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
				log.Debug("lockd transport: peer connection ended", "err", err)
			default:
				log.Error("lockd transport: closing peer connection", "err", err)
			}
			return
		}
		t.received.Add(1)
		t.cfg.Handler(name, f)
	}
}

// handshake runs the TLS handshake (the client's certificate must chain to
// the CA), reads the peer's hello, checks that the certificate carries the
// name the peer claims, and answers with our own hello.
func (t *Transport) handshake(raw net.Conn) (lockd.NodeID, net.Conn, *bufio.Reader, error) {
	raw.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	tc := tls.Server(raw, t.serverTLS)
	if err := tc.HandshakeContext(t.ctx); err != nil {
		return "", nil, nil, fmt.Errorf("TLS handshake: %w", err)
	}
	br := bufio.NewReaderSize(tc, readBufSize)
	f, err := readFrame(br, helloMaxLen)
	if err != nil {
		return "", nil, nil, fmt.Errorf("reading hello: %w", err)
	}
	name, err := parseHello(f)
	if err != nil {
		return "", nil, nil, err
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", nil, nil, errors.New("no client certificate")
	}
	if err := certs[0].VerifyHostname(name); err != nil {
		return "", nil, nil, fmt.Errorf("peer claims to be %q but its certificate is for %v", name, certs[0].DNSNames)
	}
	if lockd.NodeID(name) == t.cfg.Name {
		return "", nil, nil, fmt.Errorf("peer claims this node's own name %q", name)
	}
	if _, err := tc.Write(helloFrame(string(t.cfg.Name))); err != nil {
		return "", nil, nil, fmt.Errorf("writing hello: %w", err)
	}
	raw.SetDeadline(time.Time{})
	return lockd.NodeID(name), tc, br, nil
}
