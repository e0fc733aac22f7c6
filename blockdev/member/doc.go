// Package member is the member-host side of ddraid: what `ddraid agent`
// runs to serve the disks it hosts to the writers of arrays (the nodes
// that assemble and serve them) over NBD, with blockdev/nbd's server.
//
// # What a writer gets
//
// Each hosted disk is one NBD export named by its path (`/dev/sdb`); a
// writer reaches it as the member `HOST[:PORT]:/dev/sdb`. Disk implements
// nbd.Member, so the export takes ddraid's private protocol (docs/nbd.md,
// section 13):
//
//   - Writer identity (NBD_OPT_DDRAID_WRITER, before NBD_OPT_GO): array
//     UUID, node slot, epoch, mark region size in member bytes and the
//     array's data offset on the member. Admit checks the epoch (see
//     Fencing) and opens the marks of (array, disk, slot).
//   - Mark before write: before a WRITE, WRITE_ZEROES or TRIM from a
//     writer reaches the disk, every region it touches is durably marked
//     for the writer's slot. Marks use a bitmap.Bitmap per (array, disk,
//     slot) in the agent's badger store, so concurrent writes to fresh
//     regions share one group-committed sync, and a write to a region
//     already marked touches no store. A connection without identity may
//     read but not write (EPERM): no write may bypass the marks or the
//     fence.
//   - Clear (NBD_CMD_DDRAID_CLEAR): the writer's lazy clear, forwarded by
//     the array after it cleared its own bitmap; the host flushes the disk
//     and clears the regions that lie wholly inside the range.
//   - Dirty query: NBD_CMD_BLOCK_STATUS on the metadata context
//     "ddraid:dirty/SLOT" reports the marked regions of SLOT on the disk
//     (flag 1) for the array whose member header the disk carries, for a
//     survivor taking a failed writer's slot over.
//
// # Regions
//
// Mark region i of a writer covers member bytes [DataOffset + i·R,
// DataOffset + (i+1)·R), R being the writer's member region size. For
// raid35 with M members and array regions of A bytes, R = A / (M−1), so
// member region i is exactly the part of array region i on that member
// (logical block n lives at member offset DataOffset + n·F). For a mirror
// R = A. Linear arrays have no bitmap and send R = 0: fencing only. Writes
// below DataOffset (the member header) are not marked.
//
// # Fencing
//
// The host keeps a minimum valid epoch per (array, slot). Fence raises it
// (an admin request on the agent's control socket, `ddraid fence`), and so
// does a writer identifying with an epoch above it: the newest writer of a
// slot fences the older ones. The minimum is persisted (state file, synced)
// before the fence or the identity is acknowledged. A writer whose epoch is
// below the minimum is refused: at identity time with NBD_REP_ERR_POLICY,
// afterwards every write-type command and CLEAR with NBD_EPERM, both with a
// message starting with "fenced". Fence waits until every write and clear
// already admitted has finished, so when it returns nothing more is
// written (or cleared) under the old epoch (invariant 4).
//
// # State
//
// Everything lives in the agent's state directory: the badger bitmap
// store in DIR/bitmap (keys "ARRAYUUID.DISKID", DISKID = the first 16 hex
// digits of the SHA-256 of the disk's absolute path), and DIR/agent.json
// (fencing minimums, and for each mark set the disk, array, region size and
// data offset needed to answer dirty queries). A second agent on the same
// directory is refused (ErrInUse).
package member
