// Package transport carries lockd's messages between agents: opaque frames
// addressed by node name, over TCP with mutual TLS 1.3.
//
// # Identity
//
// Every agent has one certificate (see internal/certs) whose DNS subject
// alternative name is its node name, issued by the cluster's CA. A
// connection is accepted only when the dialler's certificate chains to the
// CA and names the node the dialler claims to be in its hello; a dialler
// accepts the other end only when its certificate chains to the CA and
// names the node it meant to reach. Handlers therefore see authenticated
// sender names.
//
// # Connections and wire format
//
// Each node dials one persistent connection to every peer and only writes
// on it; it only reads from the connections peers dial to it. After the
// TLS handshake the dialler sends a hello frame (magic "DDLK", version,
// name) and the acceptor answers with its own hello once it has checked
// the dialler; then the dialler streams data frames. A frame is a 4-byte
// big-endian length and that many payload bytes, at most Config.MaxFrame.
// An oversized length, a bad hello or any other garbage closes the
// connection with a logged error.
//
// # Delivery
//
// Send copies a frame onto the peer's bounded queue and returns; a
// goroutine per peer writes queued frames in batches (pipelining) and
// reconnects with exponential backoff when the connection fails. Frames
// sent to this node's own name go through a queue to the handler too.
// Inbound frames go to Config.Handler or, without one, to the channel
// Receive returns: a Transport is a lockd.Transport. Frames arrive at
// most once, and in order while a connection lasts: a full queue drops
// frames (ErrQueueFull), frames in flight on a broken connection are lost,
// and when a peer reconnects, frames buffered from the old connection can
// still be delivered after the first ones of the new. The lock protocol above
// tolerates loss and reordering and retransmits, so the transport never
// blocks its caller to wait for a slow or dead peer.
package transport
