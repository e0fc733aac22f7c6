package coord

import (
	"context"
	"fmt"
	"sync"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
)

// Router is the one set of coordination handlers of a node: it registers
// the message types on the Messenger (once, before it starts) and hands
// each message to the coordinator of its array.
//
// A node that does not serve the array (a member host only, or a writer
// that has not assembled it yet) has no writes to hold back and no copy to
// reload: it acknowledges windows and new disks, and passes superblocks to
// Unserved when set (an agent that keeps the superblocks of the arrays it
// takes part in), else acknowledges them.
type Router struct {
	m cluster.Messenger
	// Unserved, if set, is given the superblocks of arrays this node
	// does not serve.
	Unserved func(body []byte) error

	mu     sync.Mutex
	arrays map[string]*Coordinator
}

// NewRouter registers the coordination message types on m.
func NewRouter(m cluster.Messenger) *Router {
	r := &Router{m: m, arrays: map[string]*Coordinator{}}
	m.Handle(TypeMetadataUpdated, r.handle)
	m.Handle(TypeResyncing, r.handle)
	m.Handle(TypeNewDisk, r.handle)
	m.Handle(TypeWindows, r.handle)
	return r
}

func (r *Router) add(c *Coordinator) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.arrays[c.uuid] != nil {
		return fmt.Errorf("coord: array %s already has a coordinator on this node", c.uuid)
	}
	r.arrays[c.uuid] = c
	return nil
}

func (r *Router) remove(c *Coordinator) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.arrays[c.uuid] == c {
		delete(r.arrays, c.uuid)
	}
}

func (r *Router) handle(ctx context.Context, from lockd.NodeID, m cluster.Message) ([]byte, error) {
	r.mu.Lock()
	c := r.arrays[m.Array]
	r.mu.Unlock()
	if c == nil {
		switch m.Type {
		case TypeMetadataUpdated:
			if _, err := DecodeSuperblock(m.Body); err != nil {
				return nil, err
			}
			if r.Unserved != nil {
				return nil, r.Unserved(m.Body)
			}
		case TypeResyncing:
			_, err := DecodeWindow(from, m.Body)
			return nil, err
		case TypeNewDisk:
			_, err := DecodeSpec(m.Body)
			return nil, err
		case TypeWindows:
			return nil, nil
		default:
			return nil, fmt.Errorf("%w %q", cluster.ErrUnknownType, m.Type)
		}
		return nil, nil
	}
	switch m.Type {
	case TypeMetadataUpdated:
		return c.handleMetadata(m.Body)
	case TypeResyncing:
		return c.handleResyncing(ctx, from, m.Body)
	case TypeNewDisk:
		return c.handleNewDisk(ctx, m.Body)
	case TypeWindows:
		return c.handleWindows(), nil
	}
	return nil, fmt.Errorf("%w %q", cluster.ErrUnknownType, m.Type)
}
