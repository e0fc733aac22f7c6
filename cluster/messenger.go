package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// Message is one request between agents.
type Message struct {
	// Type names what the receiver should do; handlers are registered
	// per type. 1 to 255 bytes.
	Type string
	// Array is the UUID of the array the message is about, or "" for
	// messages about the node. At most 255 bytes.
	Array string
	// Body is the type's payload, opaque to the messenger.
	Body []byte
}

// Handler serves one message type. It runs on its own goroutine; ctx ends
// when the caller stops waiting or the messenger stops. The reply (or the
// error, as a RemoteError) goes back to the caller. It must not retain m.Body
// beyond the call unless it copies it.
type Handler func(ctx context.Context, from lockd.NodeID, m Message) (reply []byte, err error)

// Messenger sends requests to other agents and serves theirs. See the
// package documentation for the contracts every implementation keeps.
type Messenger interface {
	// Handle registers h for messages of type typ. Call it before the
	// messenger starts (before Node.Start, or before MemNet.Messenger
	// returns traffic); a second registration of a type replaces the first.
	Handle(typ string, h Handler)
	// Call sends m to node to and waits for its reply, until ctx's
	// deadline (DefaultTimeout if it has none).
	Call(ctx context.Context, to lockd.NodeID, m Message) ([]byte, error)
	// Broadcast sends m to every live member but this node and waits for
	// every reply. The error names every node that failed, refused or did
	// not answer in time; the map holds the replies that did come.
	Broadcast(ctx context.Context, m Message) (map[lockd.NodeID][]byte, error)
	// Live returns the live members as this node sees them (itself
	// included), sorted.
	Live() []lockd.NodeID
}

// DefaultTimeout bounds Call and Broadcast when their context has no
// deadline.
const DefaultTimeout = 10 * time.Second

// Errors of the messenger.
var (
	// ErrUnknownType: the receiver has no handler for the message type.
	// A handler may return an error wrapping it too (a router that does
	// not know a sub-type): the caller then sees ErrUnknownType, not a
	// RemoteError.
	ErrUnknownType = errors.New("unknown message type")
	// ErrRefused: the receiver would not run the handler (too many
	// requests in progress, or it is stopping).
	ErrRefused = errors.New("request refused")
	// ErrStopped: this messenger was stopped.
	ErrStopped = errors.New("cluster: messenger stopped")
	// ErrBadFrame: a frame that does not decode.
	ErrBadFrame = errors.New("cluster: bad frame")
)

// RemoteError is a handler's error as the caller sees it.
type RemoteError struct {
	Node lockd.NodeID
	Type string
	Msg  string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s: %s failed: %s", e.Node, e.Type, e.Msg)
}
