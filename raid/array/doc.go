// Package array runs one array on this node: it assembles the members,
// puts the write-intent bitmap in front of the engine, runs the background
// jobs (resync after an unclean stop, initial sync, recovery, check) one at
// a time, and carries out the operator's actions (fail, remove, add,
// replace, check) on a running array. A Control server exposes it on a
// unix socket in the state directory, which the CLI uses; when no server
// runs, the CLI acts on the stored metadata directly (Offline* functions).
//
// Layers, from the NBD export down:
//
//	bitmap.Device (mark before write)
//	  raid engine (raid35 / mirror / linear)
//	    blockdev.Swap (replace a member in place)
//	      blockdev.Stats (per-member IO counters)
//	        member data area (blockdev.Section of a file or block device)
//
// A clean Close flushes the array and clears the bitmap when the array is
// healthy and every job finished; otherwise the marks stay, and the next
// Open resyncs exactly those regions.
package array
