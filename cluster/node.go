package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/membership"
	"github.com/ddraid/ddraid/lockd/transport"
)

// Config configures a Node.
type Config struct {
	// Name is this node's name: its serf member name, lockd NodeID and
	// the DNS name in its certificate. It must be one of Voters.
	Name lockd.NodeID
	// Voters is the configured node set (every agent gets the same
	// list); lockd's quorum is a strict majority of it. Agents not in
	// it may gossip but take no part in locking.
	Voters []lockd.NodeID
	// Bind is the gossip (serf) address, UDP and TCP; default
	// 127.0.0.1:7946. Advertise, if set, is the gossip address others
	// use.
	Bind, Advertise string
	// RPC is the lock transport's listen address; default
	// 127.0.0.1:7947. Its actual address (host of Advertise or Bind when
	// RPC listens on a wildcard address) travels in the serf tags.
	RPC string
	// Join lists gossip addresses of agents to join; empty starts a new
	// cluster that the others join.
	Join []string
	// Key is the gossip encryption key (16, 24 or 32 bytes). Required.
	Key []byte
	// Certificate is this agent's certificate (DNS SAN = Name) and CA the
	// pool peers' certificates must chain to. Required (mutual TLS).
	Certificate tls.Certificate
	CA          *x509.CertPool
	// Tunables set gossip failure detection; zero means
	// membership.LAN().
	Tunables membership.Tunables
	// TickInterval is lockd's tick; zero means lockd's default (50 ms).
	TickInterval time.Duration
	// StatePath is the file lockd's hard state is kept in across
	// restarts (so epochs and fencing tokens never repeat); "" keeps
	// none.
	StatePath string
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Name == "" {
		return errors.New("cluster: a node name is required")
	}
	if len(c.Voters) == 0 {
		return errors.New("cluster: the node list (voters) is empty")
	}
	if !slices.Contains(c.Voters, c.Name) {
		return fmt.Errorf("cluster: node %s is not in the node list %v", c.Name, c.Voters)
	}
	if len(c.Key) == 0 {
		return fmt.Errorf("cluster: %w", membership.ErrNoKey)
	}
	if len(c.Certificate.Certificate) == 0 || c.CA == nil {
		return errors.New("cluster: a certificate and a CA are required (agents use mutual TLS)")
	}
	if c.Bind == "" {
		c.Bind = "127.0.0.1:7946"
	}
	if c.RPC == "" {
		c.RPC = "127.0.0.1:7947"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Node is one agent's cluster runtime: gossip, the transport, lockd and
// the messenger. Create it with New, register message handlers, then
// Start it.
type Node struct {
	cfg     Config
	log     *slog.Logger
	courier *Courier
	mux     *Mux

	tr    *transport.Transport
	locks *lockd.Node
	mem   *membership.Membership
	inc   uint64
	done  chan struct{}

	stopJoin chan struct{}
	joining  sync.WaitGroup
	stopOnce sync.Once

	mu    sync.Mutex
	known map[lockd.NodeID]MemberStatus // every node seen, and what became of it
}

// New checks cfg and prepares a node; nothing runs until Start.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", string(cfg.Name)), known: map[lockd.NodeID]MemberStatus{},
		done: make(chan struct{}), stopJoin: make(chan struct{})}
	n.mux = NewMux(func(to lockd.NodeID, frame []byte) error { return n.tr.Send(to, frame) }, n.log)
	n.courier = NewCourier(cfg.Name, n.mux.SendMessenger, n.log)
	n.mux.SetCourier(n.courier)
	n.courier.Handle(TypeLockDump, func(context.Context, lockd.NodeID, Message) ([]byte, error) {
		return json.Marshal(n.locks.Dump())
	})
	return n, nil
}

// TypeLockDump is the message a node answers with its lock dump (JSON
// lockd.Dump); ClusterDump sends it.
const TypeLockDump = "cluster.lock-dump"

// ClusterDump returns the lock dumps of this node and of every live peer,
// sorted by node. When peers fail to answer, the dumps that came are
// returned with an error naming the others.
func (n *Node) ClusterDump(ctx context.Context) ([]lockd.Dump, error) {
	dumps := []lockd.Dump{n.locks.Dump()}
	replies, err := n.courier.Broadcast(ctx, Message{Type: TypeLockDump})
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for from, b := range replies {
		var d lockd.Dump
		if err := json.Unmarshal(b, &d); err != nil {
			errs = append(errs, fmt.Errorf("lock dump of %s: %w", from, err))
			continue
		}
		dumps = append(dumps, d)
	}
	slices.SortFunc(dumps, func(a, b lockd.Dump) int { return strings.Compare(string(a.Node), string(b.Node)) })
	return dumps, errors.Join(errs...)
}

// Messenger returns the node's messenger. Register handlers before Start.
func (n *Node) Messenger() Messenger { return n.courier }

// Locks returns the lockd node (nil before Start).
func (n *Node) Locks() *lockd.Node { return n.locks }

// Name returns the node's name.
func (n *Node) Name() lockd.NodeID { return n.cfg.Name }

// Start starts the transport, lockd and gossip, and joins Config.Join.
// On error everything started is stopped again.
func (n *Node) Start() (err error) {
	cfg := n.cfg
	hs, err := loadHardState(cfg.StatePath)
	if err != nil {
		return err
	}
	n.tr, err = transport.New(transport.Config{Name: cfg.Name, Listen: cfg.RPC, Certificate: cfg.Certificate, CA: cfg.CA,
		Handler: n.mux.Deliver, Logger: n.log})
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer func() {
		if err != nil {
			n.stop()
		}
	}()
	// The incarnation grows from boot to boot (lockd needs that) and is
	// the one gossip publishes. It is stored before lockd starts, so that
	// the next boot stays above it even if the clock is set back.
	n.inc = nextIncarnation(time.Now().UnixNano(), hs.Incarnation)
	var save func(lockd.HardState) error
	if cfg.StatePath != "" {
		if err := saveHardState(cfg.StatePath, nodeState{HardState: hs.HardState, Incarnation: n.inc}); err != nil {
			return err
		}
		save = func(h lockd.HardState) error {
			return saveHardState(cfg.StatePath, nodeState{HardState: h, Incarnation: n.inc})
		}
	}
	n.locks, err = lockd.StartNode(lockd.NodeConfig{
		Config:       lockd.Config{ID: cfg.Name, Incarnation: n.inc, Voters: cfg.Voters, HardState: hs.HardState},
		Transport:    n.mux.Lockd(),
		TickInterval: cfg.TickInterval,
		// Save before send: lockd drops the step's messages if this fails.
		SaveHardState: save,
		Logger:        n.log,
	})
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	rpc, err := n.rpcAddr()
	if err != nil {
		return err
	}
	n.mem, err = membership.Start(membership.Config{Name: cfg.Name, Bind: cfg.Bind, Advertise: cfg.Advertise, RPCAddr: rpc,
		Key: cfg.Key, Incarnation: n.inc, Tunables: cfg.Tunables, Logger: n.log})
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	go n.follow(n.mem.Views())
	if len(cfg.Join) > 0 {
		if _, err := n.mem.Join(cfg.Join); err != nil {
			n.log.Warn("cluster: cannot join yet; retrying in the background", "join", cfg.Join, "err", err)
			n.joining.Add(1)
			go n.retryJoin()
		}
	}
	return nil
}

// retryJoin retries Config.Join with growing pauses (1 s to 30 s) until
// one address answers or the node stops: agents may start in any order.
func (n *Node) retryJoin() {
	defer n.joining.Done()
	wait := time.Second
	for {
		t := time.NewTimer(wait)
		select {
		case <-n.stopJoin:
			t.Stop()
			return
		case <-t.C:
		}
		_, err := n.mem.Join(n.cfg.Join)
		if err == nil {
			n.log.Info("cluster: joined", "join", n.cfg.Join)
			return
		}
		wait = min(2*wait, 30*time.Second)
		n.log.Warn("cluster: cannot join yet", "join", n.cfg.Join, "err", err, "next_try", wait)
	}
}

// rpcAddr is the transport address to publish: the listener's, with a
// wildcard host replaced by the gossip host.
func (n *Node) rpcAddr() (string, error) {
	host, port, err := net.SplitHostPort(n.tr.Addr().String())
	if err != nil {
		return "", fmt.Errorf("cluster: transport address: %w", err)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		g := n.cfg.Advertise
		if g == "" {
			g = n.cfg.Bind
		}
		gh, _, err := net.SplitHostPort(g)
		if err != nil {
			return "", fmt.Errorf("cluster: gossip address %q: %w", g, err)
		}
		if gip := net.ParseIP(gh); gh == "" || (gip != nil && gip.IsUnspecified()) {
			return "", fmt.Errorf("cluster: the RPC address %s and the gossip address %s are both wildcards: give --advertise or a host in --rpc", n.tr.Addr(), g)
		}
		host = gh
	}
	return net.JoinHostPort(host, port), nil
}

// follow applies gossip views to the transport, lockd and the messenger
// until the views channel closes.
func (n *Node) follow(views <-chan membership.View) {
	defer close(n.done)
	for v := range views {
		n.apply(v)
	}
}

func (n *Node) apply(v membership.View) {
	if err := v.ApplyTo(n.tr, n.cfg.Name); err != nil {
		n.log.Warn("cluster: transport peers", "err", err)
	}
	names := v.Names()
	// A member in both Left and Joined restarted: lockd first sees it
	// leave, then join, so its earlier boot's locks are purged.
	var restarted []lockd.NodeID
	for _, l := range v.Left {
		if slices.ContainsFunc(v.Joined, func(j membership.Member) bool { return j.Name == l.Name }) {
			restarted = append(restarted, l.Name)
		}
	}
	if len(restarted) > 0 {
		n.locks.SetMembers(slices.DeleteFunc(slices.Clone(names), func(x lockd.NodeID) bool { return slices.Contains(restarted, x) }))
	}
	n.locks.SetMembers(names)
	n.courier.SetLive(names)

	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range v.Left {
		if k, ok := n.known[m.Name]; ok && k.Incarnation == m.Incarnation {
			k.State = StateFailed
			n.known[m.Name] = k
		}
	}
	for _, m := range v.Members {
		n.known[m.Name] = MemberStatus{Name: m.Name, State: StateAlive, Incarnation: m.Incarnation, Gossip: m.GossipAddr, RPC: m.RPCAddr}
	}
}

// Close leaves the cluster gracefully (others see this node leave rather
// than fail) and stops everything.
func (n *Node) Close() error {
	n.endJoin()
	var err error
	if n.mem != nil {
		err = n.mem.Leave()
		<-n.done
		n.mem = nil
	}
	n.stop()
	return err
}

// stop stops what Start started, in reverse order, without a leave.
func (n *Node) stop() {
	n.endJoin()
	if n.mem != nil {
		n.mem.Shutdown()
		<-n.done
		n.mem = nil
	}
	n.courier.Stop()
	if n.locks != nil {
		n.locks.Close()
	}
	n.mux.Close()
	if n.tr != nil {
		n.tr.Close()
	}
}

// endJoin stops retrying the join and waits for that.
func (n *Node) endJoin() {
	n.stopOnce.Do(func() { close(n.stopJoin) })
	n.joining.Wait()
}

// GossipAddr returns the address gossip listens on ("" before Start);
// other agents join it.
func (n *Node) GossipAddr() string {
	if n.mem == nil {
		return ""
	}
	return n.mem.GossipAddr()
}
