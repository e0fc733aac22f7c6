package member

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/ddraid/ddraid/internal/ctlsock"
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
	sock *ctlsock.Server
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
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		ctlsock.WriteJSON(w, http.StatusOK, h.Status())
	})
	mux.HandleFunc("POST /v1/fence", func(w http.ResponseWriter, r *http.Request) {
		var req FenceRequest
		if err := ctlsock.DecodeRequest(r, &req); err != nil {
			ctlsock.WriteError(w, http.StatusBadRequest, "bad request: "+err.Error())
			return
		}
		array, err := parseUUID(req.Array)
		if err != nil {
			ctlsock.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.Epoch == 0 {
			ctlsock.WriteError(w, http.StatusBadRequest, "epoch must be positive")
			return
		}
		if err := h.Fence(array, req.Slot, req.Epoch); err != nil {
			ctlsock.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		ctlsock.WriteJSON(w, http.StatusOK, map[string]string{"message": fmt.Sprintf(
			"slot %d of array %s: writers with an epoch below %d are fenced", req.Slot, req.Array, h.MinEpoch(array, req.Slot))})
	})
	for _, r := range extra {
		mux.Handle(r.Pattern, r.Handler)
	}
	sock, err := ctlsock.Listen(path, mux, log)
	if err != nil {
		return nil, err
	}
	return &Control{sock: sock}, nil
}

// Close stops the control server and removes its socket.
func (c *Control) Close() error { return c.sock.Close() }

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
	cs *ctlsock.Client
}

// DialControl returns a client for the control socket at path.
func DialControl(path string) *ControlClient { return &ControlClient{cs: ctlsock.Dial(path)} }

// Fence asks the agent to fence and returns its message.
func (c *ControlClient) Fence(req FenceRequest) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out struct {
		Message string `json:"message"`
	}
	if err := c.cs.Do(ctx, http.MethodPost, "/v1/fence", req, &out); err != nil {
		return "", err
	}
	return out.Message, nil
}
