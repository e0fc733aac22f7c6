// Package serve runs the arrays an agent serves in cluster mode
// (`ddraid agent --serve NAME=LISTEN`): for each array a
// [cluster/coord.Coordinator] on the node's lockd and Messenger, a writer
// slot taken with Join, the array assembled with that writer identity (its
// member connections carry slot and epoch) behind the coordinator's write
// gate, the coordinator's loop started (takeover scans), and an NBD export
// on the array's own listener. When the majority takes this node's slot,
// the array is put in its fenced state; Close leaves the slot (clean when
// nothing is left to resync).
//
// A node that does not hold the array's superblock in its state directory
// asks the live peers for it (message type get-superblock) and stores the
// newest before it assembles. Status (the agent's GET /v1/arrays) reports
// per array the slot, the epoch, the coordinator's windows and takeovers,
// and how many regions this node resynced for takeovers.
//
// Assembly runs in the background and is retried until it succeeds or the
// server closes: an agent starts before its cluster has quorum.
package serve
