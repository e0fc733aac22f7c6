// Package serve runs the arrays an agent serves in cluster mode
// (`ddraid agent --serve NAME=LISTEN`): the node's one coordination
// router (cluster/coord.Router, on every cluster node, serving or not), and
// per array Array (coordinator, writer slot, the array
// opened with that writer identity behind the write gate, member failures
// recorded through the coordinator, a lost slot fencing the array), an NBD
// export on the array's own listener and the array's control socket (so
// `ddraid check NAME` works). A writer whose slot the majority took
// assembles the array again with a new slot and epoch behind the same
// export (EIO meanwhile). Close stops the exports and leaves the slots
// (clean when the array closed healthy and idle).
//
// Before it assembles, a node asks the live peers for the array's
// superblock (message type get-superblock) and uses the newest of theirs
// and its own, stored first; a node that has none waits for a peer that
// has it. Status (the agent's GET /v1/arrays) reports
// per array the slot, the epoch, the coordinator's windows and takeovers,
// and how many regions this node resynced for takeovers.
//
// Assembly runs in the background and is retried until it succeeds or the
// server closes: an agent starts before its cluster has quorum.
package serve
