package member

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

// The agent's control API, HTTP on a unix socket readable by its owner
// only (mode 0600):
//
//	GET  /v1/status   Status
//	POST /v1/fence    FenceRequest → {"message"}
//
// plus the routes the agent adds (cluster mode: see package cluster).
// Errors come back as HTTP 4xx/5xx with {"error": "..."}.

// FenceRequest raises the minimum epoch of an array's slot.
type FenceRequest struct {
	Array string `json:"array"` // UUID, 8-4-4-4-12 hex digits
	Slot  uint32 `json:"slot"`
	Epoch uint64 `json:"epoch"`
}

// Status describes a running host.
type Status struct {
	StateDir string            `json:"state_dir"`
	Disks    []string          `json:"disks"`
	Fences   map[string]uint64 `json:"fences"` // "ARRAYHEX/SLOT" → minimum epoch
}

// Status returns the host's status.
func (h *Host) Status() Status {
	st := Status{StateDir: h.dir, Fences: h.Fences()}
	for _, d := range h.Disks() {
		st.Disks = append(st.Disks, d.path)
	}
	return st
}

// Control serves a Host's control API.
type Control struct {
	srv *http.Server
	ln  net.Listener
}

// Route is a further endpoint of the control API: a net/http ServeMux
// pattern ("GET /v1/locks") and its handler.
type Route struct {
	Pattern string
	Handler http.Handler
}

// ListenControl serves h's control API, and the extra routes, on a unix
// socket at path (a stale socket file is replaced). log receives HTTP
// server errors (nil: the host's logger).
func ListenControl(path string, h *Host, log *slog.Logger, extra ...Route) (*Control, error) {
	if log == nil {
		log = h.log
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, h.Status())
	})
	mux.HandleFunc("POST /v1/fence", func(w http.ResponseWriter, r *http.Request) {
		var req FenceRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request: " + err.Error()})
			return
		}
		array, err := parseUUID(req.Array)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		if req.Epoch == 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "epoch must be positive"})
			return
		}
		if err := h.Fence(array, req.Slot, req.Epoch); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"message": fmt.Sprintf(
			"slot %d of array %s: writers with an epoch below %d are fenced", req.Slot, req.Array, h.MinEpoch(array, req.Slot))})
	})
	for _, r := range extra {
		mux.Handle(r.Pattern, r.Handler)
	}
	c := &Control{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}}
	go c.srv.Serve(ln)
	return c, nil
}

// Close stops the control server.
func (c *Control) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.srv.Shutdown(ctx)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// parseUUID parses 8-4-4-4-12 hex digits.
func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("array %q: want a UUID (8-4-4-4-12 hex digits)", s)
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	for i := 0; i < 16; i++ {
		var b byte
		for _, c := range []byte(h[2*i : 2*i+2]) {
			switch {
			case c >= '0' && c <= '9':
				b = b<<4 | (c - '0')
			case c >= 'a' && c <= 'f':
				b = b<<4 | (c - 'a' + 10)
			case c >= 'A' && c <= 'F':
				b = b<<4 | (c - 'A' + 10)
			default:
				return u, fmt.Errorf("array %q: want a UUID (8-4-4-4-12 hex digits)", s)
			}
		}
		u[i] = b
	}
	return u, nil
}

// ControlClient talks to an agent's control socket.
type ControlClient struct {
	hc *http.Client
}

// DialControl returns a client for the control socket at path.
func DialControl(path string) *ControlClient {
	return &ControlClient{hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Fence asks the agent to fence and returns its message.
func (c *ControlClient) Fence(req FenceRequest) (string, error) {
	body, _ := json.Marshal(req)
	resp, err := c.hc.Post("http://agent/v1/fence", "application/json", bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("agent control socket: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		Message string `json:"message"`
		Error   string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("agent control socket: reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(out.Error)
	}
	return out.Message, nil
}
