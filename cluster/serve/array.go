package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ddraid/ddraid/cluster/coord"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// ArrayConfig configures Array: an array served by this node in cluster mode.
type ArrayConfig struct {
	// Node, Lockd and Router are this node's (see coord.Config).
	Node   lockd.NodeID
	Lockd  *lockd.Node
	Router *coord.Router
	// Array opens the array (StateDir, Name, Remote, Throttle…); the
	// function Array sets its Writer, Gate and MemberFailed.
	Array array.Options
	// Slots, GroupRegions, Timeout, Poll: see coord.Config.
	Slots, GroupRegions int
	Timeout, Poll       time.Duration
	// Throttle bounds the speed of the cluster jobs this node runs.
	Throttle resync.Throttle
	Logger   *slog.Logger
	// WrapLocal, if set, wraps the array's Local as the coordinator sees
	// it (the agent counts the regions its takeovers resync).
	WrapLocal func(coord.Local) coord.Local
}

// Running is an array this node serves in cluster mode.
type Running struct {
	Array       *array.Array
	Coordinator *coord.Coordinator
	Gate        *coord.WriteGate
	timeout     time.Duration
}

// Array assembles an array in cluster mode: the coordinator joins the
// array's writers (a slot, its epoch), the array is opened with that
// identity, the write gate and the member-failure hook, and the
// coordinator starts (leftover marks of the slot resynced, the loop
// running). Serve the array's Device only after it returns.
func Array(ctx context.Context, cfg ArrayConfig) (*Running, error) {
	if cfg.Array.StateDir == "" || cfg.Array.Name == "" {
		return nil, errors.New("serve: the array's state dir and name are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	var sb *meta.Array
	if err := meta.View(cfg.Array.StateDir, func(s *meta.Store) error {
		var err error
		sb, err = s.Get(cfg.Array.Name)
		return err
	}); err != nil {
		return nil, fmt.Errorf("serve %s in cluster mode: %w", cfg.Array.Name, err)
	}
	s := &Running{Gate: coord.NewWriteGate(cfg.Timeout), timeout: cfg.Timeout}
	local := coord.NewArrayLocal(cfg.Array.StateDir, *sb, cfg.Array.Remote)
	var seen coord.Local = local
	if cfg.WrapLocal != nil {
		seen = cfg.WrapLocal(local)
	}
	co, err := coord.New(coord.Config{Node: cfg.Node, Lockd: cfg.Lockd, Router: cfg.Router, Local: seen, Gate: s.Gate,
		Slots: cfg.Slots, GroupRegions: cfg.GroupRegions, Timeout: cfg.Timeout, Poll: cfg.Poll, Throttle: cfg.Throttle, Logger: cfg.Logger,
		OnSlotLost: func(err error) {
			if s.Array != nil {
				s.Array.FenceWriter(err)
			}
		}})
	if err != nil {
		return nil, fmt.Errorf("serve %s in cluster mode: %w", cfg.Array.Name, err)
	}
	s.Coordinator = co
	w, err := co.Join(ctx)
	if err != nil {
		co.Close()
		return nil, fmt.Errorf("serve %s in cluster mode: %w", cfg.Array.Name, err)
	}
	opts := cfg.Array
	opts.Writer, opts.Gate, opts.Cluster = w, s.Gate, clusterOps{co}
	opts.MemberFailed = func(role int, cause error) error {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		return co.MemberFailed(ctx, role, cause)
	}
	opts.MemberFailing = func(role int, cause error) { co.MemberFailing(role, cause) }
	a, err := array.Open(opts)
	if err != nil {
		co.Leave(ctx, false)
		return nil, fmt.Errorf("serve %s in cluster mode: %w", cfg.Array.Name, err)
	}
	s.Array = a
	if err := local.Attach(a); err != nil {
		a.Close()
		co.Leave(ctx, false)
		return nil, fmt.Errorf("serve %s in cluster mode: %w", cfg.Array.Name, err)
	}
	if err := co.Start(ctx); err != nil {
		a.Close()
		co.Leave(ctx, false)
		return nil, fmt.Errorf("serve %s in cluster mode: %w", cfg.Array.Name, err)
	}
	return s, nil
}

// clusterOps makes the coordinator the array's array.Cluster.
type clusterOps struct{ co *coord.Coordinator }

func (o clusterOps) Update(ctx context.Context, what string, fn func(*meta.Array) error) error {
	_, err := o.co.Update(ctx, what, unchanged(fn))
	return err
}

func (o clusterOps) AddMember(ctx context.Context, spec string, fn func(*meta.Array) error) error {
	_, err := o.co.AddMember(ctx, spec, unchanged(fn))
	return err
}

func (o clusterOps) ScrubWindow(ctx context.Context, lo, hi int64) error {
	return o.co.ScrubWindow(ctx, lo, hi)
}

func (o clusterOps) EndScrubWindow() { o.co.EndScrubWindow() }

// unchanged translates the array's "nothing to change" into the
// coordinator's.
func unchanged(fn func(*meta.Array) error) func(*meta.Array) error {
	return func(sb *meta.Array) error {
		err := fn(sb)
		if errors.Is(err, array.ErrNoChange) {
			return coord.ErrUnchanged
		}
		return err
	}
}

// Close stops the array and leaves the writers: the slot is released
// clean (the next holder skips the takeover) when the array closed
// healthy, idle and unfenced, so that its marks were cleared.
func (s *Running) Close(ctx context.Context) error {
	st := s.Array.Status()
	clean := st.State == raid.ArrayClean && s.Array.Idle() && !s.Array.Fenced()
	err := s.Array.Close()
	if lerr := s.Coordinator.Leave(ctx, clean && err == nil); lerr != nil {
		err = errors.Join(err, lerr)
	}
	return err
}
