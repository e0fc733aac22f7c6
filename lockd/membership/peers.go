package membership

import (
	"errors"
	"fmt"

	"github.com/ddraid/ddraid/lockd"
)

// PeerSetter is the part of a lock transport a View updates;
// *lockd/transport.Transport implements it.
type PeerSetter interface {
	SetPeer(name lockd.NodeID, addr string) error
	RemovePeer(name lockd.NodeID)
}

// Names returns the live members' names, sorted (the member list to hand
// to the lock core).
func (v View) Names() []lockd.NodeID {
	out := make([]lockd.NodeID, len(v.Members))
	for i, m := range v.Members {
		out[i] = m.Name
	}
	return out
}

// ApplyTo brings a transport's peers in line with the view: members that
// left are removed (unless a new incarnation of them is live), and every
// live member other than self is set to its RPC address (a no-op for
// peers whose address did not change). It returns the errors of SetPeer
// joined; the other members are still applied.
func (v View) ApplyTo(p PeerSetter, self lockd.NodeID) error {
	live := make(map[lockd.NodeID]bool, len(v.Members))
	for _, m := range v.Members {
		live[m.Name] = true
	}
	for _, m := range v.Left {
		if !live[m.Name] && m.Name != self {
			p.RemovePeer(m.Name)
		}
	}
	var errs []error
	for _, m := range v.Members {
		if m.Name == self {
			continue
		}
		if err := p.SetPeer(m.Name, m.RPCAddr); err != nil {
			errs = append(errs, fmt.Errorf("membership: peer %s at %s: %w", m.Name, m.RPCAddr, err))
		}
	}
	return errors.Join(errs...)
}
