package array

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ddraid/ddraid/internal/ctlsock"
	"github.com/ddraid/ddraid/resync"
)

// Control serves the arrays of one process to the CLI over HTTP on a unix
// socket readable by its owner only (mode 0600).
//
//	GET  /v1/status                      []Status of every array
//	POST /v1/arrays/{name}/fail          {"ref", "force"}
//	POST /v1/arrays/{name}/remove        {"ref"}
//	POST /v1/arrays/{name}/add           {"path", "force"}
//	POST /v1/arrays/{name}/replace       {"ref", "path", "force"}
//	POST /v1/arrays/{name}/check         {"repair"} → resync.Progress (waits)
//	GET  /metrics                        Prometheus text format
//	GET  /                               status page (HTML)
//
// ServeReadOnly offers the GET routes on another listener.
//
// Errors come back as HTTP 4xx/5xx with {"error": "..."}.
type Control struct {
	arrays map[string]*Array
	order  []string
	sock   *ctlsock.Server

	registry *prometheus.Registry
	log      *slog.Logger
	extra    []*http.Server // read-only listeners
}

// Registry is the registry /metrics serves; other parts of the process
// (the lock service, membership) add their collectors to it.
func (c *Control) Registry() *prometheus.Registry { return c.registry }

// readOnlyMux routes the requests that change nothing: the status page,
// the status API and the metrics.
func (c *Control) readOnlyMux() *http.ServeMux {
	mux := http.NewServeMux()
	status := func() []Status {
		out := []Status{}
		for _, a := range c.list() {
			out = append(out, a.Status())
		}
		return out
	}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		ctlsock.WriteJSON(w, http.StatusOK, status())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		renderPage(w, status(), time.Now())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelWarn)}))
	return mux
}

// ServeReadOnly serves the status page, GET /v1/status and /metrics on ln
// (a TCP listener for browsers and Prometheus) until Close. Nothing on it
// changes the arrays.
func (c *Control) ServeReadOnly(ln net.Listener) {
	srv := ctlsock.NewHTTPServer(c.readOnlyMux(), c.log)
	c.extra = append(c.extra, srv)
	go srv.Serve(ln)
}

func (c *Control) list() []*Array {
	out := make([]*Array, 0, len(c.order))
	for _, n := range c.order {
		out = append(out, c.arrays[n])
	}
	return out
}

// Request is the body of a control action.
type Request struct {
	Ref    string `json:"ref,omitempty"`
	Path   string `json:"path,omitempty"`
	Force  bool   `json:"force,omitempty"`
	Repair bool   `json:"repair,omitempty"`
	// Slots is grow's new number of writer slots.
	Slots int `json:"slots,omitempty"`
}

// Reply is the body of a successful action.
type Reply struct {
	Message  string           `json:"message,omitempty"`
	Progress *resync.Progress `json:"progress,omitempty"`
}

// ListenControl starts the control server on a unix socket at path.
func ListenControl(path string, arrays []*Array, log *slog.Logger) (*Control, error) {
	c := &Control{arrays: map[string]*Array{}, log: log}
	for _, a := range arrays {
		c.arrays[a.Name()] = a
		c.order = append(c.order, a.Name())
	}
	c.registry = prometheus.NewRegistry()
	c.registry.MustRegister(NewCollector(c.list), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := c.readOnlyMux()
	mux.HandleFunc("POST /v1/arrays/{name}/{action}", c.action)
	sock, err := ctlsock.Listen(path, mux, log)
	if err != nil {
		return nil, err
	}
	c.sock = sock
	return c, nil
}

// Path returns the socket path.
func (c *Control) Path() string { return c.sock.Path() }

// Close stops the server and removes the socket.
func (c *Control) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, srv := range c.extra {
		srv.Shutdown(ctx)
	}
	return c.sock.Close()
}

func (c *Control) action(w http.ResponseWriter, r *http.Request) {
	a, ok := c.arrays[r.PathValue("name")]
	if !ok {
		ctlsock.WriteError(w, http.StatusNotFound, fmt.Sprintf("array %q is not served by this process", r.PathValue("name")))
		return
	}
	var req Request
	if err := ctlsock.DecodeRequest(r, &req); err != nil {
		ctlsock.WriteError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	var rep Reply
	var err error
	switch r.PathValue("action") {
	case "fail":
		err = a.Fail(req.Ref, req.Force)
		rep.Message = fmt.Sprintf("%s marked failed", req.Ref)
	case "remove":
		err = a.Remove(req.Ref)
		rep.Message = fmt.Sprintf("removed %s", req.Ref)
	case "add":
		rep.Message, err = a.Add(req.Path, req.Force)
	case "replace":
		rep.Message, err = a.Replace(req.Ref, req.Path, req.Force)
	case "grow":
		rep.Message, err = a.Grow(req.Slots)
	case "check":
		var p resync.Progress
		p, err = a.Check(r.Context(), req.Repair)
		rep.Progress = &p
	default:
		ctlsock.WriteError(w, http.StatusNotFound, "unknown action "+r.PathValue("action"))
		return
	}
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrRefused) {
			code = http.StatusConflict
		}
		ctlsock.WriteError(w, code, err.Error())
		return
	}
	ctlsock.WriteJSON(w, http.StatusOK, rep)
}

// Client talks to a Control server.
type Client struct {
	cs *ctlsock.Client
}

// NewClient returns a client for the control socket at path.
func NewClient(path string) *Client { return &Client{cs: ctlsock.Dial(path)} }

// Status returns the status of every array the server runs.
func (c *Client) Status(ctx context.Context) ([]Status, error) {
	var out []Status
	return out, c.cs.Do(ctx, http.MethodGet, "/v1/status", nil, &out)
}

// Do runs an action on an array.
func (c *Client) Do(ctx context.Context, name, action string, req Request) (Reply, error) {
	var rep Reply
	return rep, c.cs.Do(ctx, http.MethodPost, "/v1/arrays/"+name+"/"+action, req, &rep)
}
