// Package bitmap is ddraid's write-intent bitmap: it remembers which
// regions of an array may have writes that did not reach every member, so
// that after a crash only those regions are resynced, and after a member
// returns only those regions are rebuilt.
//
// # The invariant
//
// A region is durably marked before any write to it reaches a member, and
// cleared only after a flush once it is idle.
//
// Bitmap.StartWrite returns only when every region the write touches is
// marked on stable storage; the caller sends the write to the members
// after that and calls the returned end function when it has returned.
// A mark goes only when the region has had no write in flight for
// Config.ClearDelay, and only after Config.Flush (the array's flush)
// returned without error, so that the data the mark protected is on stable
// storage too. Device applies the first half to a whole array; the clearer
// inside Bitmap the second.
//
// # Regions
//
// The array is cut into regions of Config.RegionSize bytes (a power of two,
// 64 KiB to 1 TiB, default 4 MiB); the last region may be shorter. A write
// marks every region it touches, so a write across a boundary marks two.
// A zero-length write marks nothing.
//
// # Store and key format
//
// Marks live in a Store: one badger database per node, in the "bitmap"
// directory of the state directory (see Dir). Each node slot of each array
// has its own set of marks. Keys (binary parts big-endian, so that the
// keys of one slot sort by region):
//
//	"f"                                     format record; value "ddraid-bitmap/1"
//	"g/" ARRAY                              region size of ARRAY; value 8 bytes
//	"d/" ARRAY "/" SLOT(4 bytes) "/" REGION(8 bytes)   a mark; empty value
//
// ARRAY is 1 to 255 bytes without '/' or NUL. A mark exists exactly while
// its region is dirty. The format record is written when the store is
// created; a store that holds files but no format record is corrupt.
//
// The database is tuned for a small store: 4 MiB memtables, 1 MiB caches,
// one version per key, no compression, badger's warnings and errors logged
// through log/slog. Writes do not sync on their own (badger's SyncWrites is
// off); every Mark, Clear, ClearAll and Drop commits and then calls the
// database's Sync before it returns, one writer at a time.
//
// # Group commit
//
// StartWrite on marked regions touches no store and allocates nothing.
// StartWrite on an unmarked region queues the region and waits. One
// committer goroutine per Bitmap takes everything queued as one batch,
// writes it in one badger transaction followed by one sync, and releases
// all the waiters of the batch together; marks queued meanwhile form the
// next batch. Concurrent writers to fresh regions therefore share syncs.
//
// # Clearing
//
// A clearer goroutine looks every ClearDelay/4 for regions that are not
// pinned, have no write in flight and whose last write ended at least
// ClearDelay ago. It calls Config.Flush once, then, under the Bitmap's
// lock, keeps only the regions that saw no write start since it looked
// (a write that began during the flush may not be on stable storage) and
// clears those in one store batch. A write arriving while that batch is
// being committed waits for it and marks its region again. Rules:
//
//   - Nothing is cleared while the array is degraded (SetDegraded): a
//     returning member then needs only the dirty regions. The flag is
//     checked again after the flush, so a member that failed during it
//     stops the clear.
//   - Marks found when a Bitmap is opened, and those added with
//     MarkForResync, are pinned: only ClearRegions, called by resync once
//     it made a region consistent, removes them. ClearRegions flushes
//     first and leaves a region that is busy to the clearer.
//   - A failed flush clears nothing and is logged; the clearer tries again
//     on a later tick.
//   - Close stops the goroutines and keeps every mark. Shutdown, for a
//     clean stop once IO has stopped, flushes and clears every mark that
//     is neither pinned nor kept by a degraded array.
//
// # Errors and corruption
//
// Sentinel errors are documented in errors.go; functions wrap them with
// context. A store that cannot be read back intact fails OpenStore with
// ErrCorrupt, and the caller must fall back to a full resync with a
// warning (Quarantine moves the damaged directory aside). Before badger
// opens a directory, OpenStore checks it: unknown files, a missing or
// damaged manifest, key registry or value log header, tables that fail
// their checksums (badger itself would panic on some), and write-ahead
// logs that were cut short or damaged before their last transaction
// (badger would silently drop the rest). After opening, every key and
// value is read once and checked against the format above.
//
// What no check can see: a write-ahead log that lost whole transactions
// at its very end, or went missing while tables hold the format record,
// looks like a crash before those transactions were synced. ddraid's
// scrub (check) finds the inconsistencies such a loss can leave.
//
// badger leaks a few goroutines when its Open fails half-way (a badger
// bug); the checks above make that rare, and it happens at most once per
// failed open.
package bitmap
