package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ddraid/ddraid/internal/ctlsock"
	"github.com/ddraid/ddraid/lockd"
)

// The cluster part of the agent's control API (HTTP on its 0600 unix
// socket, next to the member host's routes):
//
//	GET  /v1/cluster        Status
//	GET  /v1/locks          lockd.Dump
//	GET  /v1/locks/all      ClusterDump: every live node's lockd.Dump
//	POST /v1/locks/acquire  AcquireRequest → AcquireReply (debugging)
//	GET  /metrics           Prometheus text format (see metrics.go)
//
// Errors come back as HTTP 4xx/5xx with {"error": "..."}.

// ControlPatterns are the ServeMux patterns Control.Handler serves.
var ControlPatterns = []string{"GET /v1/cluster", "GET /v1/locks", "GET /v1/locks/all", "POST /v1/locks/acquire", "GET /metrics"}

// ClusterDump is every live node's lock dump, sorted by node; Error names
// the nodes that did not answer.
type ClusterDump struct {
	Dumps []lockd.Dump `json:"dumps"`
	Error string       `json:"error,omitempty"`
}

// AcquireRequest asks the agent to take a lock for a while: a debugging aid
// (`ddraid locks acquire`), the lock belongs to the agent.
type AcquireRequest struct {
	Lockspace string `json:"lockspace"`
	Resource  string `json:"resource"`
	Mode      string `json:"mode"` // NL, CR, CW, PR, PW or EX
	NoQueue   bool   `json:"noqueue"`
	// WaitMS bounds the wait for the grant (default 30 s); HoldMS is
	// how long the agent holds the lock before it unlocks it.
	WaitMS int64 `json:"wait_ms"`
	HoldMS int64 `json:"hold_ms"`
}

// AcquireReply is a granted debugging lock.
type AcquireReply struct {
	Node  lockd.NodeID `json:"node"`
	Mode  lockd.Mode   `json:"mode"`
	Token lockd.Token  `json:"token"`
}

// Limits of AcquireRequest.
const (
	DefaultAcquireWait = 30 * time.Second
	MaxAcquireTime     = 24 * time.Hour
)

// Control serves a Node's part of the control API.
type Control struct {
	n     *Node
	stop  chan struct{}
	holds sync.WaitGroup
	once  sync.Once
}

// NewControl returns the control endpoints of n (started).
func NewControl(n *Node) *Control { return &Control{n: n, stop: make(chan struct{})} }

// Handler serves ControlPatterns.
func (c *Control) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		ctlsock.WriteJSON(w, http.StatusOK, c.n.Status())
	})
	mux.HandleFunc("GET /v1/locks", func(w http.ResponseWriter, r *http.Request) {
		ctlsock.WriteJSON(w, http.StatusOK, c.n.Locks().Dump())
	})
	mux.HandleFunc("GET /v1/locks/all", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), DefaultTimeout)
		defer cancel()
		dumps, err := c.n.ClusterDump(ctx)
		cd := ClusterDump{Dumps: dumps}
		if err != nil {
			cd.Error = err.Error()
		}
		ctlsock.WriteJSON(w, http.StatusOK, cd)
	})
	mux.HandleFunc("POST /v1/locks/acquire", c.acquire)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.n.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

func (c *Control) acquire(w http.ResponseWriter, r *http.Request) {
	var req AcquireRequest
	if err := ctlsock.DecodeRequest(r, &req); err != nil {
		ctlsock.WriteError(w, http.StatusBadRequest, "bad request: "+err.Error())
		return
	}
	mode, err := lockd.ParseMode(req.Mode)
	if err != nil {
		ctlsock.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	wait, hold := time.Duration(req.WaitMS)*time.Millisecond, time.Duration(req.HoldMS)*time.Millisecond
	if wait == 0 {
		wait = DefaultAcquireWait
	}
	if wait < 0 || wait > MaxAcquireTime || hold <= 0 || hold > MaxAcquireTime || req.Lockspace == "" || req.Resource == "" {
		ctlsock.WriteError(w, http.StatusBadRequest, fmt.Sprintf("want a lockspace, a resource, a wait up to %v and a positive hold up to %v", MaxAcquireTime, MaxAcquireTime))
		return
	}
	var flags lockd.Flags
	if req.NoQueue {
		flags |= lockd.NoQueue
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	l, err := c.n.Locks().Lockspace(req.Lockspace).Lock(ctx, req.Resource, mode, flags)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, lockd.ErrAgain) || errors.Is(err, context.DeadlineExceeded) {
			code = http.StatusConflict
		}
		ctlsock.WriteError(w, code, err.Error())
		return
	}
	tok, err := l.Token()
	if err != nil {
		ctlsock.WriteError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	c.holds.Add(1)
	go func() {
		defer c.holds.Done()
		t := time.NewTimer(hold)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.stop:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Unlock(ctx); err != nil {
			c.n.log.Warn("cluster: unlock debugging lock", "lockspace", req.Lockspace, "resource", req.Resource, "err", err)
		}
	}()
	c.n.log.Info("cluster: debugging lock granted", "lockspace", req.Lockspace, "resource", req.Resource, "mode", mode.String(),
		"token", tok.String(), "hold", hold)
	ctlsock.WriteJSON(w, http.StatusOK, AcquireReply{Node: c.n.Name(), Mode: mode, Token: tok})
}

// Close unlocks the debugging locks and waits for that.
func (c *Control) Close() {
	c.once.Do(func() { close(c.stop) })
	c.holds.Wait()
}

// ControlClient talks to the cluster part of an agent's control socket.
type ControlClient struct {
	cs *ctlsock.Client
}

// DialControl returns a client for the agent control socket at path.
func DialControl(path string) *ControlClient { return &ControlClient{cs: ctlsock.Dial(path)} }

// Status fetches the agent's cluster status.
func (c *ControlClient) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.do(ctx, http.MethodGet, "/v1/cluster", nil, &st)
}

// Locks fetches the agent's lock dump.
func (c *ControlClient) Locks(ctx context.Context) (lockd.Dump, error) {
	var d lockd.Dump
	return d, c.do(ctx, http.MethodGet, "/v1/locks", nil, &d)
}

// AllLocks fetches every live node's lock dump through the agent.
func (c *ControlClient) AllLocks(ctx context.Context) (ClusterDump, error) {
	var d ClusterDump
	return d, c.do(ctx, http.MethodGet, "/v1/locks/all", nil, &d)
}

// Acquire asks the agent to take and hold a lock. ctx should allow for
// req's wait.
func (c *ControlClient) Acquire(ctx context.Context, req AcquireRequest) (AcquireReply, error) {
	var rep AcquireReply
	return rep, c.do(ctx, http.MethodPost, "/v1/locks/acquire", req, &rep)
}

func (c *ControlClient) do(ctx context.Context, method, path string, body, out any) error {
	err := c.cs.Do(ctx, method, path, body, out)
	var se *ctlsock.StatusError
	switch {
	case err == nil:
		return nil
	case ctlsock.IsStatus(err, http.StatusNotFound):
		return fmt.Errorf("agent at %s does not run in cluster mode (start it with --nodes)", c.cs.Path())
	case errors.As(err, &se):
		return err
	}
	return fmt.Errorf("agent %w", err)
}
