package array

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

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
	srv    *http.Server
	ln     net.Listener
	path   string

	registry *prometheus.Registry
	log      *log.Logger
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
		writeJSON(w, http.StatusOK, status())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		renderPage(w, status(), time.Now())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.registry, promhttp.HandlerOpts{ErrorLog: c.log}))
	return mux
}

// ServeReadOnly serves the status page, GET /v1/status and /metrics on ln
// (a TCP listener for browsers and Prometheus) until Close. Nothing on it
// changes the arrays.
func (c *Control) ServeReadOnly(ln net.Listener) {
	srv := &http.Server{Handler: c.readOnlyMux(), ErrorLog: c.log, ReadHeaderTimeout: 10 * time.Second}
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
}

// Reply is the body of a successful action.
type Reply struct {
	Message  string           `json:"message,omitempty"`
	Progress *resync.Progress `json:"progress,omitempty"`
}

// ListenControl starts the control server on a unix socket at path.
func ListenControl(path string, arrays []*Array, log *slog.Logger) (*Control, error) {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	c := &Control{arrays: map[string]*Array{}, ln: ln, path: path}
	for _, a := range arrays {
		c.arrays[a.Name()] = a
		c.order = append(c.order, a.Name())
	}
	c.log = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	c.registry = prometheus.NewRegistry()
	c.registry.MustRegister(NewCollector(c.list), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := c.readOnlyMux()
	mux.HandleFunc("POST /v1/arrays/{name}/{action}", c.action)
	c.srv = &http.Server{Handler: mux, ErrorLog: c.log, ReadHeaderTimeout: 10 * time.Second}
	go c.srv.Serve(ln)
	return c, nil
}

// Path returns the socket path.
func (c *Control) Path() string { return c.path }

// Close stops the server and removes the socket.
func (c *Control) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := c.srv.Shutdown(ctx)
	for _, srv := range c.extra {
		srv.Shutdown(ctx)
	}
	os.Remove(c.path)
	return err
}

func (c *Control) action(w http.ResponseWriter, r *http.Request) {
	a, ok := c.arrays[r.PathValue("name")]
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("array %q is not served by this process", r.PathValue("name"))})
		return
	}
	var req Request
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request body: " + err.Error()})
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
	case "check":
		var p resync.Progress
		p, err = a.Check(r.Context(), req.Repair)
		rep.Progress = &p
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "unknown action " + r.PathValue("action")})
		return
	}
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrRefused) {
			code = http.StatusConflict
		}
		writeJSON(w, code, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Client talks to a Control server.
type Client struct {
	hc *http.Client
}

// NewClient returns a client for the control socket at path.
func NewClient(path string) *Client {
	return &Client{hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Status returns the status of every array the server runs.
func (c *Client) Status(ctx context.Context) ([]Status, error) {
	var out []Status
	return out, c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
}

// Do runs an action on an array.
func (c *Client) Do(ctx context.Context, name, action string, req Request) (Reply, error) {
	var rep Reply
	return rep, c.do(ctx, http.MethodPost, "/v1/arrays/"+name+"/"+action, req, &rep)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ddraid"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode == http.StatusConflict {
			return fmt.Errorf("%s", e.Error)
		}
		return errors.New(e.Error)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
