// Package membership tells a lockd node which agents are alive, using
// hashicorp/serf gossip (SWIM failure detection, AES-GCM encrypted).
//
// Each agent runs one Membership. It publishes two tags: "rpc", the
// address of its lock transport, and "inc", a random 64-bit incarnation
// drawn at every start. Consumers read a stream of Views: the sorted live
// members with both tags, and who joined and left since the previous view.
// A member that restarts carries a new incarnation; it is reported as the
// old incarnation leaving and the new one joining, even when the restart
// was so quick that gossip never saw it fail, so locks of the earlier boot
// are never mistaken for the new one's.
//
// Gossip gives every node its own opinion, not an agreed one: two nodes
// may see different views for a while, and both sides of a partition see
// the other side fail. lockd turns views into an agreed member list with
// its own quorum protocol; this package only reports.
//
// A consumer typically hands each view to the lock transport
// (View.ApplyTo sets and removes its peers) and the member names to the
// lock core (View.Names).
//
// Serf's event channel is drained by the Membership's own goroutine at all
// times, so serf never stalls behind a slow consumer: views that the
// consumer has not taken yet are merged into one (Joined and Left then
// cover everything since the last view it took).
package membership

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/serf/serf"

	"github.com/ddraid/ddraid/lockd"
)

// Tag keys published through serf.
const (
	TagRPC         = "rpc"
	TagIncarnation = "inc"
)

// Member is one live agent as gossip reports it.
type Member struct {
	Name lockd.NodeID
	// RPCAddr is the agent's lock transport address (tag "rpc").
	RPCAddr string
	// Incarnation identifies the agent's current boot (tag "inc").
	Incarnation uint64
	// GossipAddr is the agent's serf address.
	GossipAddr string
}

// View is the live membership as this node sees it.
type View struct {
	// Members are the live members, this node included, sorted by name.
	Members []Member
	// Joined and Left list the members (name and incarnation) that
	// appeared and disappeared since the previous view, sorted by name.
	// A restarted member is in both: its old incarnation in Left, its new
	// one in Joined.
	Joined, Left []Member
}

// Membership runs serf for one node. Its methods are safe for concurrent
// use.
type Membership struct {
	cfg    Config
	log    *slog.Logger
	serf   *serf.Serf
	events chan serf.Event
	views  chan View
	self   Member

	mu   sync.Mutex
	live []Member // latest members, sorted

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// Start starts gossip and, when Config.Join is set, joins those members;
// it fails when none of them can be joined.
func Start(cfg Config) (*Membership, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	for cfg.Incarnation == 0 {
		cfg.Incarnation = rand.Uint64()
	}
	m := &Membership{
		cfg:    cfg,
		log:    cfg.Logger.With("node", string(cfg.Name)),
		events: make(chan serf.Event, 1024),
		views:  make(chan View, cfg.ViewBuffer),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	sc, err := m.serfConfig()
	if err != nil {
		return nil, err
	}
	s, err := serf.Create(sc)
	if err != nil {
		return nil, fmt.Errorf("membership: start serf on %s: %w", cfg.Bind, err)
	}
	m.serf = s
	local := s.LocalMember()
	m.self = Member{
		Name:        cfg.Name,
		RPCAddr:     cfg.RPCAddr,
		Incarnation: cfg.Incarnation,
		GossipAddr:  net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port))),
	}
	go m.loop()
	if len(cfg.Join) > 0 {
		if _, err := m.Join(cfg.Join); err != nil {
			m.Shutdown()
			return nil, err
		}
	}
	return m, nil
}

func (m *Membership) serfConfig() (*serf.Config, error) {
	cfg := &m.cfg
	sc := serf.DefaultConfig()
	sc.Init()
	sc.NodeName = string(cfg.Name)
	sc.Tags[TagRPC] = cfg.RPCAddr
	sc.Tags[TagIncarnation] = strconv.FormatUint(cfg.Incarnation, 16)
	sc.EventCh = m.events
	sc.ValidateNodeNames = true
	sc.DisableCoordinates = true
	logger := log.New(logWriter{m.log}, "", 0)
	sc.LogOutput = nil
	sc.Logger = logger

	ml := sc.MemberlistConfig
	ml.Logger = logger
	ml.LogOutput = nil
	host, port, _ := splitHostPort(cfg.Bind)
	ml.BindAddr, ml.BindPort = host, port
	if ml.BindAddr == "" {
		ml.BindAddr = "0.0.0.0"
	}
	if cfg.Advertise != "" {
		ml.AdvertiseAddr, ml.AdvertisePort, _ = splitHostPort(cfg.Advertise)
	}
	ml.SecretKey = slices.Clone(cfg.Key)
	ml.GossipVerifyIncoming = true
	ml.GossipVerifyOutgoing = true
	tu := cfg.Tunables
	ml.ProbeInterval = tu.ProbeInterval
	ml.ProbeTimeout = tu.ProbeTimeout
	ml.SuspicionMult = tu.SuspicionMult
	ml.GossipInterval = tu.GossipInterval
	ml.TCPTimeout = tu.TCPTimeout
	// serf tries to rejoin a member it saw fail every ReconnectInterval
	// (its default is 30 s), so that is how long the two sides of a
	// healed partition may take to find each other. A rejoin attempt is
	// one TCP connection, cheap on a cluster of a few nodes: try every
	// five probe intervals (5 s by default).
	sc.ReconnectInterval = 5 * tu.ProbeInterval
	return sc, nil
}

// Self returns this node as other members see it.
func (m *Membership) Self() Member { return m.self }

// GossipAddr returns the address serf listens on (the port is the real
// one when Config.Bind asked for port 0); other members join it.
func (m *Membership) GossipAddr() string { return m.self.GossipAddr }

// Views returns the stream of membership views. The first view lists the
// members known at the time (at least this node). The channel is closed by
// Shutdown. A consumer that falls behind receives merged views, never a
// stalled serf.
func (m *Membership) Views() <-chan View { return m.views }

// Live returns the latest live members, sorted by name.
func (m *Membership) Live() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.live)
}

// Join contacts the given gossip addresses and merges their membership;
// it returns how many answered, and an error when none did.
func (m *Membership) Join(addrs []string) (int, error) {
	n, err := m.serf.Join(addrs, true)
	if n == 0 {
		if err == nil {
			err = fmt.Errorf("no member answered")
		}
		return 0, fmt.Errorf("membership: join %v: %w", addrs, err)
	}
	if err != nil {
		m.log.Warn("membership: some join addresses failed", "joined", n, "err", err)
	}
	return n, nil
}

// Leave announces that this node leaves (other members see it leave, not
// fail) and waits for the news to spread, then shuts down.
func (m *Membership) Leave() error {
	err := m.serf.Leave()
	if serr := m.Shutdown(); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip without a leave message: other members will see
// this node fail. It closes the Views channel and waits for the
// Membership's goroutine.
func (m *Membership) Shutdown() error {
	err := m.serf.Shutdown()
	m.stopOnce.Do(func() { close(m.stop) })
	<-m.done
	if err != nil {
		return fmt.Errorf("membership: shutdown: %w", err)
	}
	return nil
}

// loop drains serf's events, keeps the live set and offers views to the
// consumer without ever waiting for it.
func (m *Membership) loop() {
	defer close(m.done)
	defer close(m.views)
	live := map[lockd.NodeID]Member{m.self.Name: m.self}
	var told map[lockd.NodeID]Member // what the last delivered view said
	pending := diff(told, live)
	m.publish(live)
	for {
		var out chan View
		var v View
		if pending != nil {
			out, v = m.views, *pending
		}
		select {
		case ev := <-m.events:
			me, ok := ev.(serf.MemberEvent)
			if !ok {
				continue
			}
			for _, sm := range me.Members {
				m.apply(live, me.EventType(), sm)
			}
			pending = diff(told, live)
			m.publish(live)
		case out <- v:
			told = make(map[lockd.NodeID]Member, len(v.Members))
			for _, mb := range v.Members {
				told[mb.Name] = mb
			}
			for _, mb := range v.Joined {
				m.log.Info("membership: member joined", "member", string(mb.Name), "rpc", mb.RPCAddr, "incarnation", fmt.Sprintf("%x", mb.Incarnation))
			}
			for _, mb := range v.Left {
				m.log.Info("membership: member gone", "member", string(mb.Name), "incarnation", fmt.Sprintf("%x", mb.Incarnation))
			}
			pending = nil
		case <-m.stop:
			return
		}
	}
}

// apply updates the live set with one member of a serf event.
func (m *Membership) apply(live map[lockd.NodeID]Member, typ serf.EventType, sm serf.Member) {
	name := lockd.NodeID(sm.Name)
	mb, err := fromSerf(sm)
	switch typ {
	case serf.EventMemberJoin, serf.EventMemberUpdate:
		if err != nil {
			m.log.Warn("membership: ignoring member without valid tags", "member", sm.Name, "err", err)
			delete(live, name)
			return
		}
		live[name] = mb
	case serf.EventMemberLeave, serf.EventMemberFailed, serf.EventMemberReap:
		// News of an earlier incarnation does not remove a newer one.
		if cur, ok := live[name]; ok && (err != nil || cur.Incarnation == mb.Incarnation) {
			delete(live, name)
		}
	}
}

func (m *Membership) publish(live map[lockd.NodeID]Member) {
	l := sorted(live)
	m.mu.Lock()
	m.live = l
	m.mu.Unlock()
}

// fromSerf reads a Member from serf's record and its tags.
func fromSerf(sm serf.Member) (Member, error) {
	rpc := sm.Tags[TagRPC]
	if _, _, err := net.SplitHostPort(rpc); err != nil {
		return Member{}, fmt.Errorf("tag %s=%q: %w", TagRPC, rpc, err)
	}
	inc, err := strconv.ParseUint(sm.Tags[TagIncarnation], 16, 64)
	if err != nil || inc == 0 {
		return Member{}, fmt.Errorf("tag %s=%q is not a nonzero hex number", TagIncarnation, sm.Tags[TagIncarnation])
	}
	return Member{
		Name:        lockd.NodeID(sm.Name),
		RPCAddr:     rpc,
		Incarnation: inc,
		GossipAddr:  net.JoinHostPort(sm.Addr.String(), strconv.Itoa(int(sm.Port))),
	}, nil
}

// diff returns the view of live relative to told, or nil when nothing
// changed. Members are the same member only if name, incarnation and RPC
// address all match.
func diff(told, live map[lockd.NodeID]Member) *View {
	same := func(a, b Member) bool {
		return a.Incarnation == b.Incarnation && a.RPCAddr == b.RPCAddr
	}
	v := &View{Members: sorted(live)}
	for _, mb := range v.Members {
		if old, ok := told[mb.Name]; !ok || !same(old, mb) {
			v.Joined = append(v.Joined, mb)
		}
	}
	for _, mb := range sorted(told) {
		if cur, ok := live[mb.Name]; !ok || !same(cur, mb) {
			v.Left = append(v.Left, mb)
		}
	}
	if told != nil && len(v.Joined) == 0 && len(v.Left) == 0 {
		return nil
	}
	return v
}

func sorted(ms map[lockd.NodeID]Member) []Member {
	out := make([]Member, 0, len(ms))
	for _, mb := range ms {
		out = append(out, mb)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(string(a.Name), string(b.Name)) })
	return out
}

// logWriter turns serf's and memberlist's "[LEVEL] text" log lines into
// slog records at the matching level.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, pl := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo},
		{"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
	} {
		if rest, ok := strings.CutPrefix(msg, pl.prefix); ok {
			msg, level = strings.TrimSpace(rest), pl.level
			break
		}
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}
