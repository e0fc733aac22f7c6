// Package raid holds ddraid's array engines: Raid 3.5 ([Raid35]), n-way
// mirror ([Mirror]) and concatenation ([Linear]). Each engine is a
// [blockdev.Device] built over member Devices, so arrays nest and
// concatenate. Member headers, metadata and assembly also live here and in
// raid/meta; the engines themselves only see member data areas.
//
// # Raid 3.5 geometry
//
// M = 2^k+1 members (2, 3, 5 or 9). Every logical block of B bytes is a
// full stripe: 2^k data fragments of F = B>>k bytes plus one XOR parity
// fragment. Block n occupies bytes [n*F, (n+1)*F) of every member, whatever
// role the member plays for it, so member offset = logical block * F and a
// run of blocks is one contiguous range on every member.
//
// Five members (k = 2), B = 4096, F = 1024, rotating parity with chunk C
// (P = parity, Dd = data fragment d = logical bytes [d*F, (d+1)*F) of the
// block):
//
//	member offset     m0    m1    m2    m3    m4
//	block 0    0      P     D0    D1    D2    D3    } blocks 0..C-1:
//	block 1    F      P     D0    D1    D2    D3    } parity on m0
//	...
//	block C    C*F    D3    P     D0    D1    D2    } blocks C..2C-1:
//	block C+1         D3    P     D0    D1    D2    } parity on m1
//	...
//	block 5C          P     D0    D1    D2    D3    (the pattern repeats)
//
// ParityMember(n) = (n/C) mod M (dedicated parity: M-1) and data fragment d
// lives on member (ParityMember(n)+1+d) mod M. With M = 2 the single data
// fragment is the whole block and its parity is a copy: a mirror.
//
// # Raid 3.5 IO
//
// An aligned write of blocks n0..n1 computes each block's parity and
// issues exactly one WriteAt per live member over [n0*F, (n1+1)*F); it
// never reads. A write that covers part of a block reads that block
// (through the degraded-aware read path), patches it and writes it whole.
// Reads fetch data fragments only: per member one ReadAt per stretch of
// blocks it holds data for (rotating parity cuts long runs into stretches
// of C blocks). Requests larger than 4 MiB are served as consecutive 4 MiB
// runs. Member IOs of one run are issued in parallel.
//
// With one member lost (missing at build time, failed by an IO error or by
// Fail), writes skip it and reads rebuild its data fragments as the XOR of
// the block's other M-1 fragments, parity included. A member IO error
// marks the member failed (Config.OnFail is called once) and, while only
// one member is lost, the request completes degraded without an error. A
// second lost member fails requests with an error wrapping
// [ErrArrayFailed] and the [MemberError]s seen.
//
// Zero zeroes whole blocks on every member (all-zero fragments are
// parity-consistent) and edge blocks by read-modify-write. Trim zeroes the
// whole blocks inside its range and ignores partial edges, so parity
// always stays consistent. [Raid35.CheckBlocks] verifies parity.
//
// # Concurrency and buffers
//
// All engine methods may be called concurrently. Writes, zeroes and trims
// of a Raid35 lock their block range within the process, so overlapping
// requests are applied one after the other (first come, first served) and a
// read-modify-write never loses a concurrent write's bytes; a Mirror does
// the same so its copies stay identical. Reads take no lock: a read that
// overlaps a concurrent write sees old or new data per block. Locking is
// per process; writers on several nodes must coordinate through the
// cluster layers (Raid 3.5 needs no stripe lock for aligned writes because
// every block is a full stripe).
//
// Engines follow the io.ReaderAt/io.WriterAt buffer contract: p is not
// retained after return and is not modified by writes. Scratch buffers come
// from size-classed sync.Pools. Config.OnFail runs on the IO path that
// detected the failure, before that IO returns.
//
// Member devices must accept IOs of F bytes at multiples of F; a member
// whose BlockSize is larger than F (for instance a nested array with a
// bigger block size) works but does read-modify-write itself.
package raid
