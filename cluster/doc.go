// Package cluster is the cluster runtime of `ddraid agent`: it joins the
// agent to the other agents and gives the layers above a lock service and a
// way to talk to their peers.
//
// # Pieces
//
// A [Node] runs, for one agent:
//
//   - membership (lockd/membership): serf gossip, encrypted with a key every
//     agent shares, that tells who is alive. Each agent publishes its RPC
//     address and a per-boot incarnation in its serf tags.
//   - the transport (lockd/transport): TCP with mutual TLS 1.3 between
//     agents, each named by its certificate. Gossip views set its peers.
//   - lockd (a [lockd.Node]) whose voters are the configured node list;
//     gossip views feed its live member list. A node seen with a new
//     incarnation is reported to lockd as having left, then joined.
//   - a [Messenger] for the coordination layer (metadata updates, resync
//     windows, takeover): request/reply messages between agents.
//
// # One transport, two channels
//
// lockd frames and messenger frames share the transport's connections. The
// first byte of every frame names its channel (see [ChannelLockd],
// [ChannelMessenger]); a [Mux] strips it on the way in and hands the rest
// to lockd or to the messenger. Frames on an unknown channel are dropped.
//
// # Messenger
//
// A [Message] has a Type (what the receiver should do, e.g.
// "metadata-updated"), an Array (the array's UUID, or "" for messages about
// the node) and an opaque Body. A receiver registers one [Handler] per type
// before the messenger starts; the handler's reply (or error) goes back to
// the caller.
//
// Contracts, for every implementation (the real one over the transport and
// the in-memory [MemNet] for tests):
//
//   - Every request carries an id; its reply carries the same id. Replies
//     that match no waiting call (late, duplicate) are dropped.
//   - A request of a type nobody registered is answered with an error
//     wrapping [ErrUnknownType] ("unknown message type X"), never ignored.
//   - A handler's error comes back to the caller as a [*RemoteError]
//     naming the peer and the type.
//   - Call and Broadcast wait at most until ctx's deadline, or
//     [DefaultTimeout] when ctx has none, and then fail with an error that
//     names the peers that did not answer (wrapping
//     context.DeadlineExceeded). The remaining time travels with the
//     request: the handler's context ends with it.
//   - Delivery is at most once: a request lost with a broken connection is
//     not resent, its call times out. Callers retry if they need to, so
//     handlers should be idempotent.
//   - Broadcast sends to every member of Live() except this node and waits
//     for all of them; it fails if any of them failed, refused or timed
//     out, and the error names each such node. The replies it did get are
//     returned either way.
//   - Handlers run on their own goroutines, several at once; a slow
//     handler never holds up lockd traffic or other requests.
//   - A request or reply must fit the transport's frame (1 MiB with the
//     Node's transport): Call fails at once on a request too large, and a
//     reply too large reaches the caller as an error.
//
// # Frame format (messenger channel)
//
// After the channel byte, a messenger frame is:
//
//	kind    1 byte   1 = request, 2 = reply
//	id      uvarint  chosen by the caller, unique among its calls
//	request: timeout uvarint (ms the caller still waits), type, array, body
//	reply:   code 1 byte (0 ok, 1 unknown type, 2 handler error,
//	         3 refused: busy or stopping), text (error message), body
//
// where type, array, text and body are each a uvarint length and that many
// bytes. Type and array are at most 255 bytes. Anything else is rejected by
// [UnmarshalFrame] with an error; trailing bytes are an error too.
package cluster
