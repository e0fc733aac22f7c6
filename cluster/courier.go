package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// MaxHandlers bounds the handlers a Courier runs at once; requests beyond
// it are refused (ErrRefused), not queued.
const MaxHandlers = 256

// Courier implements Messenger over a function that sends messenger frames
// (without the channel byte) to a named node. Frames coming in are given to
// Deliver. It is the one implementation behind both Node and MemNet.
type Courier struct {
	self lockd.NodeID
	send func(to lockd.NodeID, frame []byte) error
	log  *slog.Logger

	nextID atomic.Uint64
	stats  courierStats

	mu       sync.Mutex
	handlers map[string]Handler
	calls    map[uint64]*call
	live     []lockd.NodeID
	running  int
	stopped  bool

	ctx    context.Context // ends at Stop: handlers' contexts derive from it
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// courierStats count calls made (by outcome) and requests served (by
// outcome), for metrics.
type courierStats struct {
	callsOK, callsFailed                         atomic.Uint64
	servedOK, servedFailed, refused, unknownType atomic.Uint64
}

type call struct {
	to    lockd.NodeID
	reply chan Frame // buffered 1
}

// NewCourier returns a messenger for node self that sends frames with send.
// send must not block for long and must not call back into the Courier.
func NewCourier(self lockd.NodeID, send func(to lockd.NodeID, frame []byte) error, log *slog.Logger) *Courier {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Courier{self: self, send: send, log: log, handlers: map[string]Handler{}, calls: map[uint64]*call{},
		live: []lockd.NodeID{self}, ctx: ctx, cancel: cancel}
}

var _ Messenger = (*Courier)(nil)

// Handle registers h for messages of type typ.
func (c *Courier) Handle(typ string, h Handler) {
	c.mu.Lock()
	c.handlers[typ] = h
	c.mu.Unlock()
}

// SetLive sets the live members (self is always included).
func (c *Courier) SetLive(members []lockd.NodeID) {
	l := append(slices.Clone(members), c.self)
	slices.Sort(l)
	l = slices.Compact(l)
	c.mu.Lock()
	c.live = l
	c.mu.Unlock()
}

// Live returns the live members, sorted, self included.
func (c *Courier) Live() []lockd.NodeID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.live)
}

// Stop fails calls in progress with ErrStopped, refuses new requests, ends
// the handlers' contexts and waits for the handlers to return.
func (c *Courier) Stop() {
	c.mu.Lock()
	c.stopped = true
	for id, cl := range c.calls {
		delete(c.calls, id)
		close(cl.reply)
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}

func validMessage(m Message) error {
	switch {
	case m.Type == "" || len(m.Type) > maxName:
		return fmt.Errorf("cluster: message type %q: want 1 to %d bytes", m.Type, maxName)
	case len(m.Array) > maxName:
		return fmt.Errorf("cluster: message array %q: at most %d bytes", m.Array, maxName)
	}
	return nil
}

// Call sends m to node to and waits for the reply.
func (c *Courier) Call(ctx context.Context, to lockd.NodeID, m Message) ([]byte, error) {
	if err := validMessage(m); err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return c.call(ctx, to, m)
}

// count records the outcome of one call.
func (c *Courier) count(err error) {
	if err != nil {
		c.stats.callsFailed.Add(1)
	} else {
		c.stats.callsOK.Add(1)
	}
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

func (c *Courier) call(ctx context.Context, to lockd.NodeID, m Message) (reply []byte, err error) {
	defer func() { c.count(err) }()
	id := c.nextID.Add(1)
	cl := &call{to: to, reply: make(chan Frame, 1)}
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil, fmt.Errorf("%s to %s: %w", m.Type, to, ErrStopped)
	}
	c.calls[id] = cl
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.calls, id)
		c.mu.Unlock()
	}()
	timeout := time.Duration(0)
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout < time.Millisecond {
		timeout = time.Millisecond
	}
	f := Frame{ID: id, Timeout: timeout, Msg: m}
	if err := c.send(to, f.Marshal(nil)); err != nil {
		return nil, fmt.Errorf("%s to %s: send: %w", m.Type, to, err)
	}
	select {
	case r, ok := <-cl.reply:
		if !ok {
			return nil, fmt.Errorf("%s to %s: %w", m.Type, to, ErrStopped)
		}
		switch r.Code {
		case codeOK:
			return r.Body, nil
		case codeUnknownType:
			return nil, &unknownTypeError{node: to, text: r.Text}
		case codeRefused:
			return nil, fmt.Errorf("%s refused %s: %w: %s", to, m.Type, ErrRefused, r.Text)
		default:
			return nil, &RemoteError{Node: to, Type: m.Type, Msg: r.Text}
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("%s to %s: no reply: %w", m.Type, to, ctx.Err())
	}
}

// unknownTypeError is a refusal for an unknown type, in the receiver's
// words; it matches ErrUnknownType.
type unknownTypeError struct {
	node lockd.NodeID
	text string
}

func (e *unknownTypeError) Error() string        { return string(e.node) + ": " + e.text }
func (e *unknownTypeError) Is(target error) bool { return target == ErrUnknownType }

// Broadcast sends m to every live member but self and waits for all.
func (c *Courier) Broadcast(ctx context.Context, m Message) (map[lockd.NodeID][]byte, error) {
	if err := validMessage(m); err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var peers []lockd.NodeID
	for _, n := range c.Live() {
		if n != c.self {
			peers = append(peers, n)
		}
	}
	type result struct {
		node  lockd.NodeID
		reply []byte
		err   error
	}
	results := make(chan result, len(peers))
	for _, p := range peers {
		go func() {
			r, err := c.call(ctx, p, m)
			results <- result{p, r, err}
		}()
	}
	replies := make(map[lockd.NodeID][]byte, len(peers))
	var failed []string
	var errs []error
	for range peers {
		r := <-results
		if r.err != nil {
			failed = append(failed, string(r.node))
			errs = append(errs, r.err)
			continue
		}
		replies[r.node] = r.reply
	}
	if len(errs) > 0 {
		sort.Strings(failed)
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return replies, fmt.Errorf("broadcast %s: %d of %d nodes failed (%s): %w",
			m.Type, len(failed), len(peers), strings.Join(failed, ", "), errors.Join(errs...))
	}
	return replies, nil
}

// Deliver takes one messenger frame from node from (authenticated by the
// transport). It never blocks on a handler.
func (c *Courier) Deliver(from lockd.NodeID, p []byte) {
	f, err := UnmarshalFrame(p)
	if err != nil {
		c.log.Warn("cluster: dropping messenger frame", "from", from, "err", err)
		return
	}
	if f.Reply {
		c.mu.Lock()
		cl := c.calls[f.ID]
		if cl != nil && cl.to == from {
			delete(c.calls, f.ID)
			cl.reply <- f
		}
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	h := c.handlers[f.Msg.Type]
	var code byte
	var text string
	switch {
	case c.stopped:
		code, text = codeRefused, "node is stopping"
	case h == nil:
		code, text = codeUnknownType, "unknown message type "+f.Msg.Type
	case c.running >= MaxHandlers:
		code, text = codeRefused, fmt.Sprintf("%d requests in progress", c.running)
	default:
		c.running++
		c.wg.Add(1)
	}
	c.mu.Unlock()
	if code != codeOK {
		if code == codeUnknownType {
			c.stats.unknownType.Add(1)
		} else {
			c.stats.refused.Add(1)
		}
		c.reply(from, Frame{Reply: true, ID: f.ID, Code: code, Text: text})
		return
	}
	go c.serve(from, f, h)
}

func (c *Courier) serve(from lockd.NodeID, f Frame, h Handler) {
	defer c.wg.Done()
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	body, err := c.run(ctx, h, from, f.Msg)
	cancel()
	c.mu.Lock()
	c.running--
	c.mu.Unlock()
	r := Frame{Reply: true, ID: f.ID, Body: body}
	switch {
	case errors.Is(err, ErrUnknownType):
		// A router under the handler did not know the type either.
		r.Code, r.Text, r.Body = codeUnknownType, err.Error(), nil
		c.stats.unknownType.Add(1)
	case err != nil:
		r.Code, r.Text, r.Body = codeHandlerErr, err.Error(), nil
		c.stats.servedFailed.Add(1)
	default:
		c.stats.servedOK.Add(1)
	}
	c.reply(from, r)
}

// run calls h; a panic (a handler's bug, maybe on a peer's bad body)
// becomes an error for the caller instead of taking the agent down.
func (c *Courier) run(ctx context.Context, h Handler, from lockd.NodeID, m Message) (body []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("cluster: message handler panicked", "type", m.Type, "from", from, "panic", p, "stack", string(debug.Stack()))
			body, err = nil, fmt.Errorf("handler for %s panicked: %v", m.Type, p)
		}
	}()
	return h(ctx, from, m)
}

func (c *Courier) reply(to lockd.NodeID, r Frame) {
	err := c.send(to, r.Marshal(nil))
	if err != nil && r.Code == codeOK {
		// Too large for the transport, say: tell the caller rather than
		// let it wait for its deadline.
		r = Frame{Reply: true, ID: r.ID, Code: codeHandlerErr, Text: "reply not sent: " + err.Error()}
		err = c.send(to, r.Marshal(nil))
	}
	if err != nil {
		c.log.Debug("cluster: send reply", "to", to, "id", r.ID, "err", err)
	}
}
