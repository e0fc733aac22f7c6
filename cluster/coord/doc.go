// Package coord coordinates one array among the nodes that write it at
// the same time (md-cluster's job, done with fencing): each writer runs a
// [Coordinator] for the array on top of lockd (lockspace "array/<uuid>")
// and the agents' [cluster.Messenger]. docs/cluster-design.md describes the
// locks, messages and sequences; this is how the pieces fit.
//
// # Pieces
//
//   - [WriteGate]: what the array asks before every write. Writes wait
//     while they overlap a resync window some resyncer announced, and
//     while this node's slot lock is not valid. The fast path is lock- and
//     allocation-free. raid/array puts it in front of its bitmap
//     (array.WriteGate).
//   - [Coordinator]: [Coordinator.Join] takes a writer slot ("slot/N",
//     EX+NOQUEUE; its token's epoch is the writer's epoch at the member
//     hosts); [Coordinator.Start] resyncs marks an earlier holder of the
//     slot left and starts the loop that watches the slot lock (no quorum:
//     halt writes; lost: Config.OnSlotLost) and takes over the slots of
//     failed writers ([Coordinator.Scan]); [Coordinator.Update],
//     [Coordinator.FailMember] and [Coordinator.AddMember] change the
//     superblock under the "token" lock, acknowledged by every live node;
//     [Coordinator.MemberFailing] and [Coordinator.MemberFailed] are the
//     array's hooks for a member failure it saw (before the engine
//     publishes it, and after: writes halt, and those in flight are held
//     unacknowledged, until every writer recorded it).
//   - [Router]: the node's one set of handlers on the Messenger, which
//     hands each message to the coordinator of its array.
//   - [MemberHost]: fence, dirty query and clear at one member host;
//     [AgentHosts] reaches ddraid agents over their member export.
//   - [Local]: the array on this node; [ArrayLocal] adapts raid/array
//     from before it is assembled. Package cluster/serve puts it all
//     together for the agent (serve.Array).
//
// # Determinism
//
// The message codecs, the group planning and the gate's window table are
// pure and tested directly (table, rapid and fuzz tests). The sequences
// (join, update, takeover) run over lockd and the Messenger and are tested
// in testing/synctest bubbles over lockd/memnet and cluster.MemNet, with
// member hosts that hold real bytes, marks and fences, and a raid35 engine
// per writer: fake time, no sleeps that race.
package coord
