package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/internal/procs"
	"github.com/ddraid/ddraid/internal/units"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// ServeCmd is `ddraid serve`.
type ServeCmd struct {
	Names          []string      `arg:"" help:"Arrays to serve; each is an NBD export of the same name."`
	Listen         []string      `help:"Address to listen on: HOST:PORT or unix:/PATH (repeatable). Ignored under systemd socket activation (LISTEN_FDS), which serves the sockets passed in." default:"127.0.0.1:10809"`
	TLS            string        `name:"tls" help:"TLS (NBD_OPT_STARTTLS): off, on (clients may upgrade) or require (plaintext clients are refused)." enum:"off,on,require" default:"off"`
	TLSCert        string        `name:"tls-cert" help:"Server certificate chain (PEM) for --tls." type:"path" placeholder:"FILE"`
	TLSKey         string        `name:"tls-key" help:"Private key (PEM) of --tls-cert." type:"path" placeholder:"FILE"`
	TLSCA          string        `name:"tls-ca" help:"CA certificates (PEM); with it every client must present a certificate signed by one of them." type:"path" placeholder:"FILE"`
	ReadOnly       bool          `help:"Serve the arrays read-only."`
	Direct         bool          `help:"Open members with O_DIRECT."`
	MaxConnections int           `help:"Most client connections at once." default:"1024"`
	MaxPayload     units.Size    `help:"Largest read or write request." default:"32MiB"`
	MinBlockSize   string        `help:"NBD minimum block size to advertise: 512 (works with every client), a power of two up to 64K, or 'array' for the array block size (clients then send only whole blocks)." default:"512"`
	ShutdownWait   time.Duration `help:"How long SIGTERM waits for requests in flight." default:"30s"`
	MemberDelay    time.Duration `hidden:"" help:"Add this latency to every member request (benchmarks only)."`
	InlineLatency  time.Duration `hidden:"" name:"inline-latency" help:"Run NBD requests on the connection's reader while the array's requests average at most this (0: the default, 10µs; negative: never). For benchmarks."`
	CPUProfile     string        `hidden:"" name:"cpu-profile" type:"path" help:"Write a Go CPU profile of the whole run to this file (benchmarks only)."`
	SpeedMin       string        `help:"Minimum resync/recovery/check speed, kept even under foreground IO." default:"1M"`
	SpeedMax       string        `help:"Maximum resync/recovery/check speed; 0 for no limit." default:"200M"`
	ClearDelay     time.Duration `help:"How long a write-intent bitmap region stays dirty after its last write." default:"5s"`
	HTTP           string        `name:"http" help:"Also serve a read-only status page, GET /v1/status and Prometheus /metrics on this TCP address (e.g. 127.0.0.1:10880); off when empty." placeholder:"HOST:PORT"`
	MemberTimeout  time.Duration `help:"How long a remote member (nbd://, HOST:/PATH) may stay unreachable, its requests waiting, before it is failed." default:"10s"`
	CPUFlags
	MemberTLS
	WriterFlags
}

// Run serves until SIGTERM or SIGINT.
func (c *ServeCmd) Run(g *Globals) error {
	if c.CPUProfile != "" {
		f, err := os.Create(c.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return serveArrays(g.StateDir, c.Names, c)
}

func nbdURL(listen, name string) string {
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, path)
	}
	return fmt.Sprintf("nbd://%s/%s", listen, name)
}

func serveArrays(stateDir string, names []string, c *ServeCmd) (err error) {
	cfg := nbd.DefaultConfig()
	cfg.MaxConnections = c.MaxConnections
	cfg.MaxPayload = int(c.MaxPayload)
	cfg.Logger = slog.Default()
	cfg.InlineLatency = c.InlineLatency
	gov, err := c.CPUFlags.governor()
	if err != nil {
		return err
	}
	cfg.OnTransmission = gov.Hook()
	if cfg.TLSMode, err = nbd.ParseTLSMode(c.TLS); err != nil {
		return err
	}
	switch {
	case cfg.TLSMode != nbd.TLSOff:
		if cfg.TLS, err = nbd.LoadTLSConfig(c.TLSCert, c.TLSKey, c.TLSCA); err != nil {
			return err
		}
	case c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "":
		return errors.New("--tls-cert, --tls-key and --tls-ca need --tls=on or --tls=require")
	}
	if c.MemberTimeout != 0 && c.MemberTimeout < time.Millisecond { // 0: the default, 10 s
		return fmt.Errorf("--member-timeout %v: want at least 1ms", c.MemberTimeout)
	}
	memberTLS, err := c.MemberTLS.config()
	if err != nil {
		return err
	}
	srv, err := nbd.NewServer(cfg)
	if err != nil {
		return err
	}
	th, err := parseThrottle(c.SpeedMin, c.SpeedMax, "")
	if err != nil {
		return err
	}
	var arrays []*array.Array
	defer func() {
		for _, a := range arrays {
			if err := a.Close(); err != nil {
				slog.Error("close array", "array", a.Name(), "err", err)
			}
		}
	}()
	for _, name := range names {
		a, err := array.Open(array.Options{
			StateDir: stateDir, Name: name, Direct: c.Direct, Wrap: memberDelay(c.MemberDelay),
			Throttle: th, ClearDelay: c.ClearDelay, Logger: slog.Default(),
			Remote: remote.Config{FailAfter: c.MemberTimeout, TLS: memberTLS, Logger: slog.Default()},
			Writer: c.WriterFlags.writer(), OnSpread: gov.SpreadHook(),
		})
		if err != nil {
			return err
		}
		arrays = append(arrays, a)
		sb := a.Superblock()
		for _, m := range sb.Members {
			if m.State != meta.StateActive {
				slog.Warn("array is degraded", "array", name, "role", m.Role, "member", m.Path, "state", m.State)
			}
		}
		minBS := sb.BlockSize
		if c.MinBlockSize != "array" {
			n, err := units.ParseSize(c.MinBlockSize)
			if err != nil {
				return fmt.Errorf("--min-block-size: %w", err)
			}
			minBS = int(n)
		}
		if err := srv.AddExport(nbd.Export{Name: name, Device: a.Device(), ReadOnly: c.ReadOnly, MinBlockSize: minBS,
			Description: fmt.Sprintf("ddraid %s array %s", sb.Level, name)}); err != nil {
			return err
		}
	}
	ctlPath := filepath.Join(stateDir, "run", fmt.Sprintf("serve-%d.sock", os.Getpid()))
	if err := os.MkdirAll(filepath.Dir(ctlPath), 0o750); err != nil {
		return err
	}
	ctl, err := array.ListenControl(ctlPath, arrays, slog.Default())
	if err != nil {
		return err
	}
	defer ctl.Close()
	if c.HTTP != "" {
		ln, err := net.Listen("tcp", c.HTTP)
		if err != nil {
			return fmt.Errorf("--http: %w", err)
		}
		ctl.ServeReadOnly(ln)
	}
	listeners, addrs, activated, err := serveListeners(c.Listen)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := raid.WriteRunInfo(stateDir, name, raid.RunInfo{PID: os.Getpid(), Listen: addrs, Control: ctlPath}); err != nil {
			slog.Warn("cannot record run info", "err", err)
		}
		defer raid.RemoveRunInfo(stateDir, name)
	}
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErr <- srv.Serve(l) }()
	}
	// Under socket activation stdout belongs to whoever started us (for
	// `nbdinfo -- [ ddraid serve … ]` it is nbdinfo's output).
	out := os.Stdout
	if activated {
		out = os.Stderr
	}
	for _, a := range arrays {
		sb := a.Superblock()
		for _, addr := range addrs {
			fmt.Fprintf(out, "serving %s (%s, %s, %d members) at %s\n", sb.Name, sb.Level,
				units.FormatSize(sb.Size), len(sb.Members), nbdURL(addr, sb.Name))
		}
	}
	runErr := waitForStop(serveErr)
	ctx, cancel := context.WithTimeout(context.Background(), c.ShutdownWait)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		slog.Error("shutdown", "err", err)
		if runErr == nil {
			runErr = fmt.Errorf("shutdown: %w", err)
		}
	}
	slog.Info("stopped")
	return runErr
}

// serveListeners returns the sockets passed by systemd socket activation
// when there are any (activated is then set), otherwise listeners on
// listen; addrs are their addresses as --listen spells them.
func serveListeners(listen []string) (ls []net.Listener, addrs []string, activated bool, err error) {
	ls, err = nbd.ActivationListeners()
	if err != nil {
		return nil, nil, false, err
	}
	if ls != nil {
		for _, l := range ls {
			a := l.Addr().String()
			if l.Addr().Network() == "unix" {
				a = "unix:" + a
			}
			addrs = append(addrs, a)
		}
		slog.Info("socket activation: serving the sockets passed in; --listen is ignored", "sockets", addrs)
		return ls, addrs, true, nil
	}
	for _, addr := range listen {
		l, err := nbd.Listen(addr)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, nil, false, fmt.Errorf("listen %s: %w", addr, err)
		}
		ls = append(ls, l)
	}
	return ls, listen, false, nil
}

// memberDelay returns a member wrapper adding latency d, or nil for none.
func memberDelay(d time.Duration) func(int, blockdev.Device) blockdev.Device {
	if d <= 0 {
		return nil
	}
	return func(_ int, dev blockdev.Device) blockdev.Device { return blockdev.NewDelay(dev, d, d) }
}

// parseThrottle reads the flags --PREFIXspeed-min and --PREFIXspeed-max
// (prefix "" for serve and check, "serve-" for the agent).
func parseThrottle(minS, maxS, prefix string) (resync.Throttle, error) {
	flag := "--" + prefix + "speed-"
	lo, err := units.ParseSize(minS)
	if err != nil {
		return resync.Throttle{}, fmt.Errorf("%smin: %w", flag, err)
	}
	hi, err := units.ParseSize(maxS)
	if err != nil {
		return resync.Throttle{}, fmt.Errorf("%smax: %w", flag, err)
	}
	th := resync.Throttle{Min: lo, Max: hi}
	return th, th.Validate()
}

// waitForStop waits for SIGTERM or SIGINT, or for a listener to fail
// (returned as the error).
func waitForStop(serveErr <-chan error) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		slog.Info("shutting down", "signal", s.String())
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
}

// CPUFlags are serve's and agent's --cpus.
type CPUFlags struct {
	CPUs string `name:"cpus" help:"How many CPUs run ddraid's own code at once (GOMAXPROCS): 'auto' (one per client connection; all of them while none is open or while large array requests run) or a number. A GOMAXPROCS environment variable overrides auto." default:"auto" placeholder:"auto|N"`
}

// governor applies --cpus; see internal/procs.
func (f CPUFlags) governor() (*procs.Governor, error) {
	return procs.New(f.CPUs, slog.Default())
}
