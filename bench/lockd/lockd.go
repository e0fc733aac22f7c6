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

// lockdSystem is three lockd nodes (lockd.Node with its default tick) in
// this process on loopback, each with its own transport (mutual TLS over
// TCP). Client i talks to node i mod 3, so contended clients sit on
// different nodes and resources are mastered across all three.
type lockdSystem struct {
	nodes []*lockd.Node
	trs   []*transport.Transport
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
		sys.trs = append(sys.trs, tr)
		n, err := lockd.StartNode(lockd.NodeConfig{
			Config:    lockd.Config{ID: name, Voters: names},
			Transport: tr,
			Logger:    log,
		})
		if err != nil {
			sys.Close()
			return nil, err
		}
		sys.nodes = append(sys.nodes, n)
	}
	for _, a := range sys.trs {
		for _, b := range sys.trs {
			if a != b {
				if err := a.SetPeer(b.Name(), b.Addr().String()); err != nil {
					sys.Close()
					return nil, err
				}
			}
		}
	}
	for _, n := range sys.nodes {
		n.SetMembers(slices.Clone(names))
	}
	// Wait for the first recovery to agree on the three members.
	deadline := time.Now().Add(60 * time.Second)
	for !sys.ready() {
		if time.Now().After(deadline) {
			sys.Close()
			return nil, errors.New("lockd: the three nodes did not reach quorum within 60 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return sys, nil
}

func (s *lockdSystem) ready() bool {
	for _, n := range s.nodes {
		if !n.HasQuorum() {
			return false
		}
	}
	return true
}

func (s *lockdSystem) Name() string { return "lockd" }

func (s *lockdSystem) Client(ctx context.Context, i int) (Locker, error) {
	return lockdLocker{s.nodes[i%len(s.nodes)].Lockspace("bench")}, nil
}

func (s *lockdSystem) Close() error {
	for _, n := range s.nodes {
		n.Close()
	}
	for _, tr := range s.trs {
		tr.Close()
	}
	return nil
}

type lockdLocker struct{ ls *lockd.Lockspace }

func (l lockdLocker) Lock(ctx context.Context, resource string) (func(context.Context) error, error) {
	lk, err := l.ls.Lock(ctx, resource, lockd.EX, 0)
	if err != nil {
		return nil, err
	}
	return lk.Unlock, nil
}
