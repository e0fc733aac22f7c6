package remote

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
)

// Config tunes a remote Device. The zero value of every field selects its
// default; DefaultConfig returns them all filled in.
type Config struct {
	// FailAfter is how long the export may stay unreachable after its
	// connection was lost. Requests wait (and are retried) while the
	// Device reconnects; once FailAfter has passed without a working
	// connection, every waiting and every later request fails with an
	// error wrapping ErrUnreachable. Default 10 s; at least 1 ms.
	FailAfter time.Duration
	// ReconnectMin is the wait before the second reconnect attempt (the
	// first is made at once); each further wait doubles, up to
	// ReconnectMax. Defaults 50 ms and 1 s; 0 < ReconnectMin ≤
	// ReconnectMax.
	ReconnectMin time.Duration
	ReconnectMax time.Duration
	// DialTimeout bounds one connection attempt: the dial and the NBD
	// handshake. Open is bounded by it too (and by its context). Default
	// 5 s; positive.
	DialTimeout time.Duration
	// IOTimeout is how long a connection may have requests outstanding
	// without any reply before it is treated as lost (closed, reconnected,
	// the requests retried). It catches servers that hang and network
	// paths that drop packets silently. Default 30 s; negative disables
	// the check.
	IOTimeout time.Duration
	// ReplayBudget bounds the bytes of acknowledged but not yet flushed
	// writes kept for replay after a reconnect (see the package
	// documentation). A write that takes the total above it waits until a
	// flush, which the Device starts itself, has made it durable. Default
	// 32 MiB; at least 1 MiB.
	ReplayBudget int64
	// Verify, if set, is called after every reconnect, before anything is
	// replayed or retried, with the new connection as a Device (Verify
	// must not keep or close it). An error means the export that came back
	// is not the one that was lost (another disk, a reformatted file); the
	// Device then fails for good with an error wrapping ErrReplaced. IO
	// errors while Verify runs count as a failed reconnect attempt
	// instead. The raid package checks the member header here.
	Verify func(dev blockdev.Device) error
	// TLS, if set, upgrades every connection with NBD_OPT_STARTTLS (a
	// client certificate goes in Certificates; an empty ServerName is
	// taken from the URI's host). nbds:// and nbds+unix:// URIs need it.
	TLS *tls.Config
	// Writer, if set, identifies every connection as a ddraid writer
	// (NBD_OPT_DDRAID_WRITER): the server must be a ddraid agent. A
	// writer the agent refuses as fenced gets ErrFenced: at Open, on any
	// write-type request, or at a reconnect, after which the Device fails
	// for good with ErrFenced (never with ErrUnreachable).
	Writer *nbd.Writer
	// Dial opens connections; default a net.Dialer. Tests use it for an
	// in-memory network.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives connection loss, reconnect and failure events.
	// Default slog.Default().
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultFailAfter    = 10 * time.Second
	DefaultReconnectMin = 50 * time.Millisecond
	DefaultReconnectMax = time.Second
	DefaultDialTimeout  = 5 * time.Second
	DefaultIOTimeout    = 30 * time.Second
	DefaultReplayBudget = 32 << 20
	minReplayBudget     = 1 << 20
)

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	c := Config{}
	c.validate()
	return c
}

// validate fills defaults and checks limits.
func (c *Config) validate() error {
	if c.FailAfter == 0 {
		c.FailAfter = DefaultFailAfter
	}
	if c.FailAfter < time.Millisecond {
		return fmt.Errorf("remote: FailAfter %v is below 1ms", c.FailAfter)
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = min(DefaultReconnectMin, c.FailAfter)
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = max(min(DefaultReconnectMax, c.FailAfter), c.ReconnectMin)
	}
	if c.ReconnectMin <= 0 || c.ReconnectMax < c.ReconnectMin {
		return fmt.Errorf("remote: reconnect backoff %v..%v: want 0 < ReconnectMin ≤ ReconnectMax", c.ReconnectMin, c.ReconnectMax)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("remote: DialTimeout %v is negative", c.DialTimeout)
	}
	if c.IOTimeout == 0 {
		c.IOTimeout = DefaultIOTimeout
	}
	if c.ReplayBudget == 0 {
		c.ReplayBudget = DefaultReplayBudget
	}
	if c.ReplayBudget < minReplayBudget {
		return fmt.Errorf("remote: ReplayBudget %d is below %d", c.ReplayBudget, minReplayBudget)
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// backoff is the wait before reconnect attempt n (counted from 0): none
// before the first, then lo, 2·lo, 4·lo, … capped at hi.
func backoff(n int, lo, hi time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// nextAttempt decides when reconnect attempt n runs: the connection was
// lost at down, it is now (attempt n-1 has just failed), and the export
// counts as unreachable from down+failAfter on. It returns how long to
// wait first, clipped so that one last attempt is made at the deadline, or
// ok = false when the deadline has passed and no attempt is left.
func nextAttempt(n int, down, now time.Time, failAfter, lo, hi time.Duration) (wait time.Duration, ok bool) {
	deadline := down.Add(failAfter)
	if n > 0 && !now.Before(deadline) {
		return 0, false
	}
	wait = backoff(n, lo, hi)
	if left := deadline.Sub(now); wait > left {
		wait = max(left, 0)
	}
	return wait, true
}

// stalled reports whether a connection whose oldest unanswered request
// has waited since progress (the last reply, or the moment requests
// started to be outstanding) counts as hung at now.
func stalled(outstanding int64, progress, now time.Time, timeout time.Duration) bool {
	return timeout > 0 && outstanding > 0 && now.Sub(progress) >= timeout
}
