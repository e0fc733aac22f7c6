package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/coord"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// TypeGetSuperblock asks a node for the superblock of the array named in
// the body; the reply is coord.EncodeSuperblock's JSON, or an error when
// the node does not have it.
const TypeGetSuperblock = "get-superblock"

// DefaultListen is where an array is exported when its spec names no
// address.
const DefaultListen = "127.0.0.1:10809"

// Spec is one array to serve: its name and its NBD listener.
type Spec struct {
	Name string
	// Listen is HOST:PORT or unix:/PATH.
	Listen string
}

// ParseSpec reads NAME=LISTEN (NAME alone: DefaultListen).
func ParseSpec(s string) (Spec, error) {
	name, listen, ok := strings.Cut(s, "=")
	if !ok {
		listen = DefaultListen
	}
	if err := meta.ValidateName(name); err != nil {
		return Spec{}, fmt.Errorf("--serve %q: %w", s, err)
	}
	if listen == "" {
		return Spec{}, fmt.Errorf("--serve %q: empty listen address (want HOST:PORT or unix:/PATH)", s)
	}
	return Spec{Name: name, Listen: listen}, nil
}

// URL is the NBD URI of the spec's export.
func (s Spec) URL() string {
	if path, ok := strings.CutPrefix(s.Listen, "unix:"); ok {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", s.Name, path)
	}
	return fmt.Sprintf("nbd://%s/%s", s.Listen, s.Name)
}

// Config configures a Server. Zero fields take the defaults named.
type Config struct {
	// StateDir is the node's state directory: superblocks (pebble), the
	// arrays' bitmaps, run info and the arrays' control sockets. Required.
	StateDir string
	// Node is this node's name and Messenger its transport to the other
	// agents. Required. (The lock service is given to Start: a
	// cluster.Node has it only once started, and handlers are registered
	// before.)
	Node      lockd.NodeID
	Messenger cluster.Messenger
	// Remote reaches the agent members (TLS, timeouts).
	Remote remote.Config
	// Throttle bounds resync and recovery (zero: resync.DefaultThrottle).
	Throttle resync.Throttle
	// ClearDelay is how long a bitmap region stays marked after its last
	// write (0: the array's default, 5 s).
	ClearDelay time.Duration
	// Timeout bounds every wait: fetching a superblock, joining, each
	// coordinator wait, the coordinator's write gate (default 30 s).
	Timeout time.Duration
	// Retry is the pause before an array whose assembly failed is tried
	// again (default 2 s).
	Retry time.Duration
	// Poll is the coordinator's poll interval (0: coord's default).
	Poll time.Duration
	// Wrap wraps each member device (array.Options.Wrap: latency for
	// drills and benchmarks). Optional.
	Wrap func(role int, dev blockdev.Device) blockdev.Device
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// OnTransmission is the NBD servers' Config.OnTransmission (client
	// connections counted for GOMAXPROCS; internal/procs). Optional.
	OnTransmission func() (done func())
	// OnSpread is the arrays' raid.Config.OnSpread (internal/procs).
	// Optional.
	OnSpread func()
}

func (c *Config) validate() error {
	if c.StateDir == "" || c.Node == "" || c.Messenger == nil {
		return errors.New("serve: StateDir, Node and Messenger are required")
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Retry <= 0 {
		c.Retry = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Server runs the arrays this agent serves in cluster mode: per array a
// coordinator (cluster/coord) on the node's lockd and Messenger, the array
// assembled with the writer identity its slot gives, and an NBD export on
// the array's own listener. Methods are safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	router *coord.Router
	locks  *lockd.Node

	mu     sync.Mutex
	arrays []*served
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// New registers the coordination message types and get-superblock on the
// Messenger: call it before the node starts.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, stop: make(chan struct{})}
	s.router = coord.NewRouter(cfg.Messenger)
	s.router.Unserved = s.storeUnserved
	cfg.Messenger.Handle(TypeGetSuperblock, s.handleGetSuperblock)
	return s, nil
}

// Start assembles and serves each spec on its own goroutine, with the
// node's lock service locks: an array that cannot be assembled yet (no
// quorum, no peer with its superblock, no free slot) is retried until
// Close; Status says where each one is.
func (s *Server) Start(locks *lockd.Node, specs []Spec) error {
	if locks == nil {
		return errors.New("serve: Start needs the node's lock service")
	}
	seen := map[string]bool{}
	for _, sp := range specs {
		if seen[sp.Name] {
			return fmt.Errorf("serve: array %s named twice", sp.Name)
		}
		seen[sp.Name] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.locks = locks
	for _, sp := range specs {
		sv := &served{s: s, spec: sp, state: StateAssembling}
		s.arrays = append(s.arrays, sv)
		s.wg.Add(1)
		go sv.run()
	}
	return nil
}

// Close stops serving every array: NBD clients are cut off after their
// requests in flight finished (bounded by ctx), each array is closed and
// its writer slot released (clean when the array closed with nothing left
// to resync).
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	arrays := s.arrays
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	var errs []error
	for _, sv := range arrays {
		if err := sv.close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// States of a served array.
const (
	StateAssembling = "assembling"
	StateServing    = "serving"
	StateFenced     = "fenced"
	StateStopped    = "stopped"
)

// served is one array of the Server.
type served struct {
	s    *Server
	spec Spec

	mu      sync.Mutex
	state   string
	lastErr error
	asm     *Running
	local   *countingLocal
	srv     *nbd.Server
	ctl     *array.Control
	front   *blockdev.Swap // the export's device: the array, or unavailable while it rejoins
	rejoins int
}

// run assembles the array, retrying until it serves or the server stops,
// then watches it: once this node's slot was taken (the array is fenced),
// it closes the array and assembles it again with a new slot and epoch
// (re-reading the superblock), the export staying up meanwhile.
func (sv *served) run() {
	defer sv.s.wg.Done()
	for {
		if !sv.assembleRetrying() {
			return
		}
		if !sv.watch() {
			return
		}
		sv.retire()
	}
}

// assembleRetrying assembles until it succeeds (true) or the server stops
// (false).
func (sv *served) assembleRetrying() bool {
	for {
		err := sv.assemble()
		if err == nil {
			return true
		}
		sv.mu.Lock()
		sv.lastErr = err
		sv.mu.Unlock()
		sv.s.log.Warn("cannot serve the array yet; retrying", "array", sv.spec.Name, "err", err, "retry", sv.s.cfg.Retry)
		select {
		case <-sv.s.stop:
			return false
		case <-time.After(sv.s.cfg.Retry):
		}
	}
}

// watch polls the running array until it is fenced (true) or the server
// stops (false).
func (sv *served) watch() bool {
	t := time.NewTicker(sv.s.cfg.Retry / 4)
	defer t.Stop()
	for {
		select {
		case <-sv.s.stop:
			return false
		case <-t.C:
		}
		sv.mu.Lock()
		asm := sv.asm
		sv.mu.Unlock()
		if asm.Array.Fenced() {
			return true
		}
	}
}

// retire takes a fenced array out: the export answers EIO until the array
// is assembled again; the array is closed and its coordinator stopped (its
// slot belongs to the majority now).
func (sv *served) retire() {
	sv.mu.Lock()
	asm, ctl := sv.asm, sv.ctl
	sv.asm, sv.ctl = nil, nil
	sv.state, sv.lastErr = StateFenced, errors.New("writer slot taken by the majority: assembling again with a new slot")
	sv.rejoins++
	sv.mu.Unlock()
	sv.front.Set(unavailable{size: sv.front.Size(), bs: sv.front.BlockSize()})
	ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), sv.s.cfg.Timeout)
	defer cancel()
	// Flushing a fenced array fails: the error says so and is expected.
	if err := asm.Close(ctx); err != nil {
		sv.s.log.Info("closed the fenced array", "array", sv.spec.Name, "err", err)
	}
	sv.s.log.Warn("this node's writer slot was taken: the array is assembled again with a new slot", "array", sv.spec.Name)
}

// assemble does one attempt: the superblock (fetched from a peer if this
// node has none), then Array (coordinator, slot, array
// with the writer identity, gate and member-failure hook), then the
// export. On failure everything it made is undone.
func (sv *served) assemble() error {
	cfg := sv.s.cfg
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-sv.s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	if _, err := sv.s.superblock(ctx, sv.spec.Name); err != nil {
		return err
	}
	var local *countingLocal
	run, err := Array(ctx, ArrayConfig{Node: cfg.Node, Lockd: sv.s.locks, Router: sv.s.router,
		Array: array.Options{StateDir: cfg.StateDir, Name: sv.spec.Name, Throttle: cfg.Throttle, ClearDelay: cfg.ClearDelay,
			Remote: cfg.Remote, Wrap: cfg.Wrap, Logger: cfg.Logger, OnSpread: cfg.OnSpread},
		Timeout: cfg.Timeout, Poll: cfg.Poll, Throttle: cfg.Throttle, Logger: cfg.Logger,
		WrapLocal: func(l coord.Local) coord.Local {
			local = &countingLocal{Local: l}
			return local
		}})
	if err != nil {
		return err
	}
	ctl, err := sv.export(run.Array)
	if err != nil {
		lctx, lcancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer lcancel()
		if cerr := run.Close(lctx); cerr != nil {
			sv.s.log.Warn("close the array after a failed export", "array", sv.spec.Name, "err", cerr)
		}
		return err
	}
	w, _ := run.Coordinator.Writer()
	sv.mu.Lock()
	sv.asm, sv.local, sv.ctl = run, local, ctl
	sv.state, sv.lastErr = StateServing, nil
	sv.mu.Unlock()
	sv.s.log.Info("serving array", "array", sv.spec.Name, "slot", w.Slot, "epoch", w.Epoch, "url", sv.spec.URL())
	fmt.Printf("serving %s as writer slot %d epoch %d at %s\n", sv.spec.Name, w.Slot, w.Epoch, sv.spec.URL())
	return nil
}

// export puts a behind the NBD export (made on the first call, on the
// spec's listener) and opens the array's control socket (check, status
// and the other array actions), recorded in the run info so
// `ddraid check NAME` finds it.
func (sv *served) export(a *array.Array) (*array.Control, error) {
	cfg := sv.s.cfg
	ctlPath := filepath.Join(cfg.StateDir, "run", "agent-"+sv.spec.Name+".sock")
	if err := os.MkdirAll(filepath.Dir(ctlPath), 0o750); err != nil {
		return nil, fmt.Errorf("array %s: control socket: %w", sv.spec.Name, err)
	}
	ctl, err := array.ListenControl(ctlPath, []*array.Array{a}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("array %s: %w", sv.spec.Name, err)
	}
	if sv.front != nil {
		sv.front.Set(a.Device())
		return ctl, nil
	}
	if err := sv.listen(a); err != nil {
		ctl.Close()
		return nil, err
	}
	if err := raid.WriteRunInfo(cfg.StateDir, sv.spec.Name, raid.RunInfo{PID: os.Getpid(), Listen: []string{sv.spec.Listen}, Control: ctlPath}); err != nil {
		cfg.Logger.Warn("cannot record run info", "array", sv.spec.Name, "err", err)
	}
	return ctl, nil
}

// listen starts the NBD export of a on the spec's listener.
func (sv *served) listen(a *array.Array) error {
	cfg := sv.s.cfg
	ncfg := nbd.DefaultConfig()
	ncfg.Logger = cfg.Logger
	ncfg.OnTransmission = cfg.OnTransmission
	srv, err := nbd.NewServer(ncfg)
	if err != nil {
		return err
	}
	front := blockdev.NewSwap(a.Device())
	sb := a.Superblock()
	if err := srv.AddExport(nbd.Export{Name: sv.spec.Name, Device: front, MinBlockSize: 512,
		Description: fmt.Sprintf("ddraid %s array %s (cluster writer %s)", sb.Level, sb.Name, cfg.Node)}); err != nil {
		return err
	}
	ln, err := nbd.Listen(sv.spec.Listen)
	if err != nil {
		return fmt.Errorf("array %s: listen %s: %w", sv.spec.Name, sv.spec.Listen, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		cfg.Logger.Warn("the array is exported beyond loopback without TLS", "array", sv.spec.Name, "listen", sv.spec.Listen)
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			cfg.Logger.Error("NBD export stopped", "array", sv.spec.Name, "err", err)
		}
	}()
	sv.mu.Lock()
	sv.srv, sv.front = srv, front
	sv.mu.Unlock()
	return nil
}

// close stops the export, closes the array and leaves the slot (clean
// when the array closed healthy and idle: Served.Close).
func (sv *served) close(ctx context.Context) error {
	sv.mu.Lock()
	run, srv, ctl := sv.asm, sv.srv, sv.ctl
	sv.state = StateStopped
	sv.mu.Unlock()
	var errs []error
	if srv != nil {
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("array %s: NBD shutdown: %w", sv.spec.Name, err))
		}
		raid.RemoveRunInfo(sv.s.cfg.StateDir, sv.spec.Name)
	}
	if ctl != nil {
		ctl.Close()
	}
	if run == nil {
		return errors.Join(errs...)
	}
	if err := run.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("array %s: stop: %w", sv.spec.Name, err))
	}
	if len(errs) == 0 {
		sv.s.log.Info("stopped serving array; writer slot released", "array", sv.spec.Name)
	}
	return errors.Join(errs...)
}

// Range is a byte range of the array.
type Range struct {
	Off    int64 `json:"off"`
	Length int64 `json:"length"`
}

// maxRanges bounds the resynced ranges status keeps (the first ones).
const maxRanges = 4096

// countingLocal counts the resyncs the coordinator runs (one per dirty
// region it took over) and keeps their ranges, for status.
type countingLocal struct {
	coord.Local
	regions atomic.Int64
	bytes   atomic.Int64

	mu     sync.Mutex
	ranges []Range
}

// Resync implements coord.Local.
func (l *countingLocal) Resync(ctx context.Context, off, length int64) error {
	if err := l.Local.Resync(ctx, off, length); err != nil {
		return err
	}
	l.regions.Add(1)
	l.bytes.Add(length)
	l.mu.Lock()
	if len(l.ranges) < maxRanges {
		l.ranges = append(l.ranges, Range{Off: off, Length: length})
	}
	l.mu.Unlock()
	return nil
}

// resynced returns a copy of the ranges resynced so far.
func (l *countingLocal) resynced() []Range {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Range(nil), l.ranges...)
}

// errUnavailable is what the export answers while a fenced array is
// assembled again.
var errUnavailable = errors.New("serve: this node's writer slot was taken; the array is being assembled again")

// unavailable stands in for the array while it is assembled again: every
// request fails.
type unavailable struct {
	size int64
	bs   int
}

var _ blockdev.Device = unavailable{}

func (unavailable) ReadAt([]byte, int64) (int, error)  { return 0, errUnavailable }
func (unavailable) WriteAt([]byte, int64) (int, error) { return 0, errUnavailable }
func (unavailable) Flush() error                       { return errUnavailable }
func (unavailable) Trim(int64, int64) error            { return errUnavailable }
func (unavailable) Zero(int64, int64) error            { return errUnavailable }
func (u unavailable) Size() int64                      { return u.size }
func (u unavailable) BlockSize() int                   { return u.bs }
func (unavailable) Close() error                       { return nil }
