package serve

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/coord"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/meta"
)

// ErrNoSuperblock: no live node has the array's superblock.
var ErrNoSuperblock = errors.New("serve: no live node has the array's superblock")

// stored returns the superblock of name in the state directory
// (meta.ErrNotFound if there is none).
func (s *Server) stored(name string) (*meta.Array, error) {
	var sb *meta.Array
	err := meta.View(s.cfg.StateDir, func(st *meta.Store) error {
		var err error
		sb, err = st.Get(name)
		return err
	})
	return sb, err
}

// superblock returns the array's superblock: the newest of the one in the
// state directory and those the live peers have (assembly follows the
// highest event counter; a newer one is stored here first). Without a
// stored one, peers are asked again every Retry until one answers or
// Timeout passes (a node starting may not see its peers yet).
func (s *Server) superblock(ctx context.Context, name string) (*meta.Array, error) {
	local, err := s.stored(name)
	if err != nil && !errors.Is(err, meta.ErrNotFound) {
		return nil, fmt.Errorf("array %s: read the stored superblock: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	for {
		peer, asked, err := s.fetch(ctx, name)
		switch {
		case local != nil && peer != nil && peer.UUID != local.UUID:
			return nil, fmt.Errorf("array %s: this node has UUID %s, peers %s: refusing to guess", name, local.UUID, peer.UUID)
		case local != nil && (peer == nil || peer.Events <= local.Events):
			return local, nil
		case peer != nil:
			if err := meta.View(s.cfg.StateDir, func(st *meta.Store) error { return st.Put(peer) }); err != nil {
				return nil, fmt.Errorf("array %s: store the superblock fetched from a peer: %w", name, err)
			}
			s.log.Info("stored the array's superblock from a peer", "array", name, "uuid", peer.UUID, "events", peer.Events)
			return peer, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("array %s: %w within %v (asked %v: %v)", name, ErrNoSuperblock, s.cfg.Timeout, asked, err)
		case <-time.After(s.cfg.Retry):
		}
	}
}

// fetch asks every live peer for name's superblock and returns the one
// with the highest event counter (nil if none has it), the nodes asked,
// and why the others did not answer.
func (s *Server) fetch(ctx context.Context, name string) (*meta.Array, []lockd.NodeID, error) {
	m := s.cfg.Messenger
	asked := slices.DeleteFunc(m.Live(), func(n lockd.NodeID) bool { return n == s.cfg.Node })
	replies, err := m.Broadcast(ctx, cluster.Message{Type: TypeGetSuperblock, Body: []byte(name)})
	var best *meta.Array
	for from, b := range replies {
		sb, derr := coord.DecodeSuperblock(b)
		if derr != nil {
			err = errors.Join(err, fmt.Errorf("superblock from %s: %w", from, derr))
			continue
		}
		if sb.Name != name {
			err = errors.Join(err, fmt.Errorf("%s answered with the superblock of %s", from, sb.Name))
			continue
		}
		if best != nil && best.UUID != sb.UUID {
			return nil, asked, fmt.Errorf("array %s: peers disagree on its UUID (%s, %s): refusing to guess", name, best.UUID, sb.UUID)
		}
		if best == nil || sb.Events > best.Events {
			best = sb
		}
	}
	if best == nil && err == nil {
		err = errors.New("no peer has it")
	}
	return best, asked, err
}

// handleGetSuperblock answers TypeGetSuperblock from the state directory
// (a served array stores every superblock it applies there).
func (s *Server) handleGetSuperblock(_ context.Context, _ lockd.NodeID, m cluster.Message) ([]byte, error) {
	name := string(m.Body)
	if err := meta.ValidateName(name); err != nil {
		return nil, fmt.Errorf("get-superblock: %w", err)
	}
	sb, err := s.stored(name)
	if err != nil {
		return nil, fmt.Errorf("get-superblock %s: %w", name, err)
	}
	return coord.EncodeSuperblock(sb)
}

// storeUnserved keeps a superblock another writer broadcast for an array
// this node has but does not serve (yet): a newer event counter replaces
// the stored one, so a later assembly starts from it. Arrays this node
// does not know are acknowledged and not stored.
func (s *Server) storeUnserved(body []byte) error {
	sb, err := coord.DecodeSuperblock(body)
	if err != nil {
		return err
	}
	return meta.View(s.cfg.StateDir, func(st *meta.Store) error {
		cur, err := st.Get(sb.Name)
		if errors.Is(err, meta.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.UUID != sb.UUID {
			return fmt.Errorf("superblock of %s (%s) does not match this node's array %s (%s)", sb.Name, sb.UUID, cur.Name, cur.UUID)
		}
		if sb.Events <= cur.Events {
			return nil
		}
		return st.Put(sb)
	})
}
