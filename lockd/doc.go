// Package lockd is ddraid's distributed lock manager: the semantics of the Linux DLM (six
// modes, granted/convert/wait queues, NOQUEUE, CANCEL, lock value blocks, blocking callbacks,
// conversion-deadlock detection) over a set of nodes that can fail and be partitioned.
//
// # Layers
//
// The package follows the shape of etcd-io/raft:
//
//   - [Core] is a deterministic state machine, one per node. It is fed inputs —
//     [Core.Step] (a message from a peer), [Core.Tick] (one unit of logical time),
//     [Core.SetMembers] (the live member list, in production from serf) and the local lock
//     calls — and it returns its outputs through [Core.Ready]: a [HardState] to save before
//     anything is sent, messages to send, completions and blocking callbacks to deliver.
//     [Core.Advance] acknowledges a Ready. The core never
//     reads a clock, touches the network or the file system, draws random numbers or starts
//     goroutines; a lint test enforces this on every file except node.go.
//   - [Node] (node.go) is the thin driver: one goroutine that feeds the core frames from a
//     [Transport], ticks it on a real ticker and hands its Ready to the transport and to the
//     waiting callers. It offers the user API: Lockspace, Lock, Convert, Unlock, LVB, Token.
//   - [Transport] moves opaque frames between nodes. lockd/memnet is a deterministic
//     in-memory network for tests (drop, delay, partition, crash); lockd/transport is the
//     real one (TCP with mutual TLS).
//
// # Node identity
//
// A node is named by a [NodeID], a non-empty string (the serf member name). The configured
// voter set is a fixed list of NodeIDs given to every node at construction; quorum is a strict
// majority of that set. A node restart is a new incarnation ([Config.Incarnation], a number
// that differs between boots of the same NodeID); locks of an earlier incarnation are purged
// like those of a dead node.
//
// # Frames
//
// Frames are produced by [Message.Marshal] and read by [UnmarshalMessage]. The transport
// must deliver a frame whole or not at all; it may drop, delay or reorder frames — the core
// retransmits what matters and ignores stale or duplicate messages.
//
// # Mastering and recovery
//
// Every resource has one master: the node chosen by a hash of (lockspace, resource) over the
// sorted agreed member list. On every membership change the nodes run the DLM recovery
// sequence (stop, agree on the member list, rebuild, purge, remaster, re-send locks, recover
// LVBs, grant); see docs/lockd.md. The member list comes from outside ([Core.SetMembers]);
// the epoch number is decided by the nodes (the lowest-named member coordinates a ballot),
// not by the caller. Only a strict majority of the configured voters completes a change;
// every completed change bumps the epoch, and every grant carries a fencing [Token] (epoch,
// sequence) that only grows for a resource.
//
// # Quorum lease
//
// A node may grant (as master) and may treat its own granted locks as valid only while it
// holds a quorum lease: within the last LeaseTicks it has heard heartbeat answers from a
// strict majority of the voters. A recovery that removes nodes waits out the lease before it
// grants anything, so a cut-off minority stops using its locks before the majority hands them
// to someone else (under the assumption that ticks on different nodes run at the same rate
// within the configured margin). Fencing tokens are the second line of defence.
package lockd
