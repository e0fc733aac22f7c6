package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/internal/units"
	"github.com/ddraid/ddraid/raid"
)

// ServeCmd is `ddraid serve`.
type ServeCmd struct {
	Names          []string      `arg:"" help:"Arrays to serve; each is an NBD export of the same name."`
	Listen         []string      `help:"Address to listen on: HOST:PORT or unix:/PATH (repeatable)." default:"127.0.0.1:10809"`
	ReadOnly       bool          `help:"Serve the arrays read-only."`
	Direct         bool          `help:"Open members with O_DIRECT."`
	MaxConnections int           `help:"Most client connections at once." default:"1024"`
	MaxPayload     units.Size    `help:"Largest read or write request." default:"32MiB"`
	MinBlockSize   string        `help:"NBD minimum block size to advertise: 512 (works with every client), a power of two up to 64K, or 'array' for the array block size (clients then send only whole blocks)." default:"512"`
	ShutdownWait   time.Duration `help:"How long SIGTERM waits for requests in flight." default:"30s"`
	MemberDelay    time.Duration `hidden:"" help:"Add this latency to every member request (benchmarks only)."`
}

// Run serves until SIGTERM or SIGINT.
func (c *ServeCmd) Run(g *Globals) error {
	return serveArrays(g.StateDir, c.Names, c)
}

func nbdURL(listen, name string) string {
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, path)
	}
	return fmt.Sprintf("nbd://%s/%s", listen, name)
}

func serveArrays(stateDir string, names []string, c *ServeCmd) error {
	cfg := nbd.DefaultConfig()
	cfg.MaxConnections = c.MaxConnections
	cfg.MaxPayload = int(c.MaxPayload)
	cfg.Logger = slog.Default()
	srv, err := nbd.NewServer(cfg)
	if err != nil {
		return err
	}
	var arrays []*raid.Assembled
	defer func() {
		for _, a := range arrays {
			if err := a.Close(); err != nil {
				slog.Error("close array", "array", a.Array.Name, "err", err)
			}
		}
	}()
	for _, name := range names {
		a, err := raid.Assemble(stateDir, name, raid.AssembleOptions{
			Direct: c.Direct,
			Wrap:   memberDelay(c.MemberDelay),
			OnFail: func(member int, err error) {
				slog.Warn("member failed; array continues degraded", "array", name, "member", member, "err", err)
				go func() {
					if err := raid.RecordFailure(stateDir, name, member); err != nil {
						slog.Error("record member failure", "array", name, "member", member, "err", err)
					}
				}()
			},
		})
		if err != nil {
			return err
		}
		arrays = append(arrays, a)
		for role, why := range a.Lost {
			slog.Warn("array is degraded", "array", name, "role", role, "member", a.Array.Members[role].Path, "state", why)
		}
		minBS := a.Array.BlockSize
		if c.MinBlockSize != "array" {
			n, err := units.ParseSize(c.MinBlockSize)
			if err != nil {
				return fmt.Errorf("--min-block-size: %w", err)
			}
			minBS = int(n)
		}
		if err := srv.AddExport(nbd.Export{Name: name, Device: a.Device(), ReadOnly: c.ReadOnly, MinBlockSize: minBS,
			Description: fmt.Sprintf("ddraid %s array %s", a.Array.Level, name)}); err != nil {
			return err
		}
	}
	var listeners []net.Listener
	for _, addr := range c.Listen {
		l, err := nbd.Listen(addr)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		listeners = append(listeners, l)
	}
	for _, name := range names {
		if err := raid.WriteRunInfo(stateDir, name, raid.RunInfo{PID: os.Getpid(), Listen: c.Listen}); err != nil {
			slog.Warn("cannot record run info", "err", err)
		}
		defer raid.RemoveRunInfo(stateDir, name)
	}
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErr <- srv.Serve(l) }()
	}
	for _, a := range arrays {
		for _, addr := range c.Listen {
			fmt.Printf("serving %s (%s, %s, %d members) at %s\n", a.Array.Name, a.Array.Level,
				units.FormatSize(a.Array.Size), len(a.Array.Members), nbdURL(addr, a.Array.Name))
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	var runErr error
	select {
	case s := <-sig:
		slog.Info("shutting down", "signal", s.String())
	case err := <-serveErr:
		runErr = fmt.Errorf("serve: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.ShutdownWait)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		slog.Error("shutdown", "err", err)
		if runErr == nil {
			runErr = fmt.Errorf("shutdown: %w", err)
		}
	}
	for _, a := range arrays {
		if err := a.Device().Flush(); err != nil {
			slog.Error("final flush", "array", a.Array.Name, "err", err)
			if runErr == nil {
				runErr = fmt.Errorf("flush %s: %w", a.Array.Name, err)
			}
		}
	}
	slog.Info("stopped")
	return runErr
}

// memberDelay returns a member wrapper adding latency d, or nil for none.
func memberDelay(d time.Duration) func(int, blockdev.Device) blockdev.Device {
	if d <= 0 {
		return nil
	}
	return func(_ int, dev blockdev.Device) blockdev.Device { return blockdev.NewDelay(dev, d, d) }
}
