package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdSystem is a single-node etcd embedded in this process, on loopback,
// with its data in a temporary directory. Each client has its own
// connection and session, as separate processes would.
type etcdSystem struct {
	name string
	dir  string
	srv  *embed.Etcd
	url  string

	mu      sync.Mutex
	clients []*clientv3.Client
}

func startEtcd(ctx context.Context, noFsync bool) (System, error) {
	dir, err := os.MkdirTemp("", "lockd-bench-etcd-")
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = dir
	// etcd logs its own shutdown as errors; the table is what matters.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = noFsync
	cu, err := freeURL()
	if err != nil {
		return nil, err
	}
	pu, err := freeURL()
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-srv.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		srv.Close()
		os.RemoveAll(dir)
		return nil, errors.New("embedded etcd not ready after 60 s")
	}
	name := "etcd"
	if noFsync {
		name = "etcd-nofsync"
	}
	return &etcdSystem{name: name, dir: dir, srv: srv, url: cu.String()}, nil
}

// freeURL returns an http URL on a loopback port that was free a moment
// ago.
func freeURL() (*url.URL, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	return url.Parse("http://" + addr)
}

func (e *etcdSystem) Name() string { return e.name }

func (e *etcdSystem) Client(ctx context.Context, i int) (Locker, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.url}, DialTimeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	s, err := concurrency.NewSession(c, concurrency.WithTTL(30))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("etcd session: %w", err)
	}
	e.mu.Lock()
	e.clients = append(e.clients, c)
	e.mu.Unlock()
	return &etcdLocker{s: s}, nil
}

func (e *etcdSystem) Close() error {
	e.mu.Lock()
	for _, c := range e.clients {
		c.Close()
	}
	e.mu.Unlock()
	e.srv.Close()
	return os.RemoveAll(e.dir)
}

type etcdLocker struct{ s *concurrency.Session }

func (l *etcdLocker) Lock(ctx context.Context, resource string) (func(context.Context) error, error) {
	m := concurrency.NewMutex(l.s, "/locks/"+resource)
	if err := m.Lock(ctx); err != nil {
		return nil, err
	}
	return m.Unlock, nil
}
