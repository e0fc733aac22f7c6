package membership

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// Tunables set how fast gossip detects a failed member. Failure detection
// takes roughly ProbeInterval (until the member is probed) + ProbeTimeout +
// the suspicion timeout, SuspicionMult × log10(max(1, N)) × ProbeInterval
// for N members (memberlist's formula, at least one ProbeInterval per unit
// of the multiplier), plus the gossip that spreads the verdict.
type Tunables struct {
	// ProbeInterval is the time between probes of one random member.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for an ack before asking
	// other members to probe indirectly. It should be about the 99th
	// percentile of the network's round trip.
	ProbeTimeout time.Duration
	// SuspicionMult multiplies the suspicion timeout during which a
	// suspected member may refute the suspicion (at least 1).
	SuspicionMult int
	// GossipInterval is the time between gossip rounds that spread
	// membership changes.
	GossipInterval time.Duration
	// TCPTimeout bounds push/pull state exchanges and joins over TCP.
	TCPTimeout time.Duration
}

// LAN returns memberlist's defaults for a local network (probe 1 s, timeout
// 500 ms, suspicion ×4, gossip 200 ms, TCP 10 s): a crashed member is
// declared failed after about 5 to 7 s.
func LAN() Tunables {
	return Tunables{
		ProbeInterval:  time.Second,
		ProbeTimeout:   500 * time.Millisecond,
		SuspicionMult:  4,
		GossipInterval: 200 * time.Millisecond,
		TCPTimeout:     10 * time.Second,
	}
}

// FastLocal returns the aggressive settings serf's own tests use on
// loopback (probe 50 ms, timeout 25 ms, suspicion ×1, gossip 5 ms), with a
// TCP timeout of 1 s instead of their 100 ms so that joins survive a busy
// machine: failures are detected in well under a second. Only for loopback
// and tests; on a real network it causes false failures.
func FastLocal() Tunables {
	return Tunables{
		ProbeInterval:  50 * time.Millisecond,
		ProbeTimeout:   25 * time.Millisecond,
		SuspicionMult:  1,
		GossipInterval: 5 * time.Millisecond,
		TCPTimeout:     time.Second,
	}
}

func (tu *Tunables) validate() error {
	if *tu == (Tunables{}) {
		*tu = LAN()
		return nil
	}
	switch {
	case tu.ProbeInterval <= 0 || tu.ProbeTimeout <= 0 || tu.GossipInterval <= 0 || tu.TCPTimeout <= 0:
		return fmt.Errorf("membership: tunables must all be positive: %+v", *tu)
	case tu.ProbeTimeout > tu.ProbeInterval:
		return fmt.Errorf("membership: ProbeTimeout %v exceeds ProbeInterval %v", tu.ProbeTimeout, tu.ProbeInterval)
	case tu.SuspicionMult < 1:
		return fmt.Errorf("membership: SuspicionMult %d, want at least 1", tu.SuspicionMult)
	}
	return nil
}

// Config configures a Membership.
type Config struct {
	// Name is this node's name, unique in the cluster: letters, digits,
	// '-' and '.', at most 128 bytes (serf's rule).
	Name lockd.NodeID
	// Bind is the host:port gossip listens on (UDP and TCP); default
	// "127.0.0.1:7946". Port 0 picks a free port (see
	// Membership.GossipAddr).
	Bind string
	// Advertise, when set, is the host:port other members reach this
	// node's gossip at, if not Bind (NAT, wildcard bind).
	Advertise string
	// RPCAddr is the lock transport's address, published in the tags so
	// members know where to send lock traffic. Required.
	RPCAddr string
	// Join lists gossip addresses of members to join at start. Empty
	// starts a new cluster of one (others join it).
	Join []string
	// Key is the gossip encryption key (AES-GCM; 16, 24 or 32 bytes);
	// every member needs the same one. Required: gossip is never sent in
	// the clear. ParseKey reads the base64 form.
	Key []byte
	// Incarnation identifies this boot of the node; zero draws a random
	// one. A member seen with a new incarnation is reported as having
	// left and joined again. Pass the lockd node's incarnation (its boot
	// time in nanoseconds) so that gossip and lock traffic name a boot
	// the same way.
	Incarnation uint64
	// Tunables set failure detection; zero means LAN().
	Tunables Tunables
	// ViewBuffer is the capacity of the Views channel; default 16.
	ViewBuffer int
	// Logger receives membership events and serf's and memberlist's
	// logs; default slog.Default().
	Logger *slog.Logger
}

// Errors of Start.
var (
	// ErrNoKey: Config.Key is empty; membership refuses to gossip in
	// the clear.
	ErrNoKey = errors.New("membership: an encryption key is required")
)

func (c *Config) validate() error {
	if c.Name == "" || len(c.Name) > 128 {
		return fmt.Errorf("membership: node name must be 1 to 128 bytes, got %d", len(c.Name))
	}
	if len(c.Key) == 0 {
		return ErrNoKey
	}
	switch len(c.Key) {
	case 16, 24, 32:
	default:
		return fmt.Errorf("membership: key of %d bytes, want 16, 24 or 32", len(c.Key))
	}
	if c.RPCAddr == "" {
		return errors.New("membership: Config.RPCAddr is required")
	}
	if _, _, err := net.SplitHostPort(c.RPCAddr); err != nil {
		return fmt.Errorf("membership: RPC address %q: %w", c.RPCAddr, err)
	}
	if c.Bind == "" {
		c.Bind = "127.0.0.1:7946"
	}
	if _, _, err := splitHostPort(c.Bind); err != nil {
		return fmt.Errorf("membership: bind address: %w", err)
	}
	if c.Advertise != "" {
		if _, _, err := splitHostPort(c.Advertise); err != nil {
			return fmt.Errorf("membership: advertise address: %w", err)
		}
	}
	if c.ViewBuffer <= 0 {
		c.ViewBuffer = 16
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c.Tunables.validate()
}

// splitHostPort splits host:port with a numeric port.
func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", addr, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("%q: bad port: %w", addr, err)
	}
	return host, int(port), nil
}

// ParseKey decodes a gossip key given in standard base64 (as `serf keygen`
// and `consul keygen` print it).
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("membership: key is not base64: %w", err)
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("membership: key of %d bytes, want 16, 24 or 32", len(k))
}
