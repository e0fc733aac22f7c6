package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ddraid/ddraid/internal/certs"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/transport"
)

// lockdNodes is the size of the measured lockd cluster.
const lockdNodes = 3

// tick is the lockd tick on the benchmark's nodes: heartbeats every tick,
// the quorum lease and retransmissions a few ticks long.
const tick = 10 * time.Millisecond

// lockdSystem is three lockd nodes in this process on loopback, each with
// its own transport (mutual TLS over TCP). Client i talks to node i mod 3,
// so contended clients sit on different nodes and resources are mastered
// across all three.
//
// Until the core's own node driver (lockd.Node) exists, each node is driven
// by benchNode below: the minimal loop the core documents (Step received
// messages, Tick on a ticker, send Ready.Messages, hand out Completions).
type lockdSystem struct {
	nodes []*benchNode
}

func startLockd(ctx context.Context, log *slog.Logger) (System, error) {
	ca, err := certs.NewCA("lockd bench CA", 0)
	if err != nil {
		return nil, err
	}
	var names []lockd.NodeID
	for i := range lockdNodes {
		names = append(names, lockd.NodeID(fmt.Sprintf("n%d", i+1)))
	}
	sys := &lockdSystem{}
	var trs []*transport.Transport
	for _, name := range names {
		kp, err := ca.IssueNode(string(name))
		if err != nil {
			sys.Close()
			return nil, err
		}
		tr, err := transport.New(transport.Config{
			Name:        name,
			Certificate: kp.TLSCertificate(),
			CA:          ca.Pool(),
			Logger:      log,
		})
		if err != nil {
			sys.Close()
			return nil, err
		}
		trs = append(trs, tr)
		core, err := lockd.NewCore(lockd.Config{ID: name, Incarnation: uint64(time.Now().UnixNano()), Voters: names})
		if err != nil {
			tr.Close()
			sys.Close()
			return nil, err
		}
		sys.nodes = append(sys.nodes, startBenchNode(core, tr))
	}
	for _, a := range trs {
		for _, b := range trs {
			if a != b {
				if err := a.SetPeer(b.Name(), b.Addr().String()); err != nil {
					sys.Close()
					return nil, err
				}
			}
		}
	}
	for _, n := range sys.nodes {
		n.do(func() { n.core.SetMembers(slices.Clone(names)) })
	}
	// Wait for the first recovery to agree on the three members.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ready := true
		for _, n := range sys.nodes {
			var ok bool
			n.do(func() { ok = n.core.Normal() && len(n.core.Members()) == lockdNodes })
			ready = ready && ok
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			sys.Close()
			return nil, errors.New("lockd: the three nodes did not agree on a membership within 60 s")
		}
		time.Sleep(tick)
	}
	return sys, nil
}

func (s *lockdSystem) Name() string { return "lockd" }

func (s *lockdSystem) Client(ctx context.Context, i int) (Locker, error) {
	return &lockdLocker{n: s.nodes[i%len(s.nodes)]}, nil
}

func (s *lockdSystem) Close() error {
	for _, n := range s.nodes {
		n.close()
	}
	return nil
}

// benchNode runs one Core: one goroutine owns it and serialises received
// frames, ticks and client calls.
type benchNode struct {
	core    *lockd.Core
	tr      *transport.Transport
	calls   chan func()
	waiters map[uint64]chan lockd.Completion // by lock handle; loop only
	stop    chan struct{}
	done    chan struct{}
}

func startBenchNode(core *lockd.Core, tr *transport.Transport) *benchNode {
	n := &benchNode{
		core:    core,
		tr:      tr,
		calls:   make(chan func()),
		waiters: make(map[uint64]chan lockd.Completion),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go n.loop()
	return n
}

func (n *benchNode) loop() {
	defer close(n.done)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case f := <-n.tr.Receive():
			m, err := lockd.UnmarshalMessage(f.Data)
			if err != nil || m.From != f.From {
				continue // not from whom the certificate says: ignore
			}
			n.core.Step(m)
		case <-t.C:
			n.core.Tick()
		case fn := <-n.calls:
			fn()
		case <-n.stop:
			return
		}
		if !n.core.HasReady() {
			continue
		}
		rd := n.core.Ready()
		n.core.Advance()
		// rd.HardState would be saved durably here before sending; the
		// benchmark's nodes never restart, so there is nothing to keep.
		for _, m := range rd.Messages {
			// A full queue drops the message; the core retransmits.
			n.tr.Send(m.To, m.Marshal())
		}
		for _, c := range rd.Completions {
			if ch := n.waiters[c.Lock]; ch != nil {
				delete(n.waiters, c.Lock)
				ch <- c
			}
		}
	}
}

// do runs fn on the node's goroutine and waits for it.
func (n *benchNode) do(fn func()) {
	ran := make(chan struct{})
	select {
	case n.calls <- func() { fn(); close(ran) }:
		<-ran
	case <-n.done:
	}
}

// await runs start on the node's goroutine (it returns the lock handle the
// next completion is for) and waits for that completion.
func (n *benchNode) await(ctx context.Context, start func() (uint64, error)) (lockd.Completion, error) {
	ch := make(chan lockd.Completion, 1)
	var err error
	n.do(func() {
		var id uint64
		if id, err = start(); err == nil {
			n.waiters[id] = ch
		}
	})
	if err != nil {
		return lockd.Completion{}, err
	}
	select {
	case c := <-ch:
		return c, nil
	case <-ctx.Done():
		return lockd.Completion{}, ctx.Err()
	}
}

func (n *benchNode) close() {
	close(n.stop)
	<-n.done
	n.tr.Close()
}

type lockdLocker struct{ n *benchNode }

func (l *lockdLocker) Lock(ctx context.Context, resource string) (func(context.Context) error, error) {
	c, err := l.n.await(ctx, func() (uint64, error) { return l.n.core.Lock("bench", resource, lockd.EX, 0) })
	if err != nil {
		return nil, err
	}
	if c.Status != lockd.StatusGranted {
		return nil, fmt.Errorf("lock %s: %v", resource, c.Status)
	}
	id := c.Lock
	return func(ctx context.Context) error {
		c, err := l.n.await(ctx, func() (uint64, error) { return id, l.n.core.Unlock(id, 0, nil) })
		if err != nil {
			return err
		}
		if c.Status != lockd.StatusUnlocked {
			return fmt.Errorf("unlock %s: %v", resource, c.Status)
		}
		return nil
	}, nil
}
