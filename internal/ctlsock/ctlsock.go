// Package ctlsock is the one way ddraid processes offer a control API: HTTP
// with JSON bodies on a unix socket only its owner may open (mode 0600),
// and the client side that talks to it. `ddraid serve` and `ddraid agent`
// both use it; errors travel as {"error": "..."} with a 4xx or 5xx status.
package ctlsock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// Server is a control API served on a unix socket.
type Server struct {
	path string
	srv  *http.Server
}

// Listen serves h on a unix socket at path, readable and writable by the
// owner only. A stale socket file at path is replaced. log receives the
// HTTP server's own errors.
func Listen(path string, h http.Handler, log *slog.Logger) (*Server, error) {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{path: path, srv: NewHTTPServer(h, log)}
	go s.srv.Serve(ln)
	return s, nil
}

// NewHTTPServer returns an http.Server for h with the settings every
// ddraid listener uses (header timeout, errors to log at warning level).
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.Default()
	}
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving (requests in flight get a few seconds) and removes
// the socket file.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	os.Remove(s.path)
	return err
}

// WriteJSON answers with code and v as JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// WriteError answers with code and {"error": msg}.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, map[string]string{"error": msg})
}

// Client talks to a control socket.
type Client struct {
	path string
	hc   *http.Client
}

// Dial returns a client for the control socket at path. Nothing is
// opened until the first request.
func Dial(path string) *Client {
	return &Client{path: path, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Path returns the socket's path.
func (c *Client) Path() string { return c.path }

// HTTP returns the underlying client (its requests go to the socket
// whatever the URL's host).
func (c *Client) HTTP() *http.Client { return c.hc }

// CloseIdle closes the connections the client keeps open.
func (c *Client) CloseIdle() { c.hc.CloseIdleConnections() }

// StatusError is a refusal from the server: its status code and message.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// maxReply bounds what a reply may hold.
const maxReply = 64 << 20

// Do sends body (JSON; nil for none) with method to path and decodes a 200
// reply into out (nil to ignore it). A refusal comes back as a
// *StatusError carrying the server's message; a socket that cannot be
// reached as an error naming it.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ddraid"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return fmt.Errorf("control socket %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("control socket %s: %s", c.path, resp.Status)
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("control socket %s: reply to %s %s: %w", c.path, method, path, err)
	}
	return nil
}

// IsStatus reports whether err is a refusal with the given status code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

// DecodeRequest reads a JSON request body (at most 64 KiB) into v.
func DecodeRequest(r *http.Request, v any) error {
	return json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(v)
}
