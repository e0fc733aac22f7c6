package raid

import (
	"fmt"
	"math/bits"
)

// Geometry limits and defaults.
const (
	// DefaultBlockSize is the logical block size B when none is given.
	DefaultBlockSize = 4096
	// DefaultParityChunk is the number of blocks C that keep one parity
	// member before rotating parity moves on.
	DefaultParityChunk = 16
	// MaxBlockSize is the largest logical block size B.
	MaxBlockSize = 64 << 10
	// MinFragmentSize is the smallest fragment F = B >> k: one sector.
	MinFragmentSize = 512
	// maxMembers is the largest raid35 member count (k = 3).
	maxMembers = 9
)

// Geometry is the layout of a Raid 3.5 array.
//
// Every logical block n is a full stripe: it is cut into 2^k data fragments
// of F = B >> k bytes, and their XOR is the parity fragment. The M = 2^k+1
// fragments of block n sit at offset n*F of the data area of every member,
// one fragment per member; which member holds which fragment is given by
// ParityMember and DataMember.
type Geometry struct {
	// Members is M = 2^k+1: 2, 3, 5 or 9.
	Members int
	// BlockSize is the logical block size B in bytes: a power of two, at
	// most 64 KiB, with B >> k at least 512. Zero means DefaultBlockSize.
	BlockSize int
	// Parity is the parity placement. Empty means ParityRotating.
	Parity Parity
	// ParityChunk is the number of consecutive blocks C whose parity stays
	// on one member before it rotates to the next (rotating parity only;
	// ignored for dedicated). Zero means DefaultParityChunk.
	ParityChunk int
}

// WithDefaults returns g with zero fields replaced by their defaults.
// Members has no default.
func (g Geometry) WithDefaults() Geometry {
	if g.BlockSize == 0 {
		g.BlockSize = DefaultBlockSize
	}
	if g.Parity == "" {
		g.Parity = ParityRotating
	}
	if g.ParityChunk == 0 && g.Parity == ParityRotating {
		g.ParityChunk = DefaultParityChunk
	}
	return g
}

// Validate reports the first problem with g as a one-line error, or nil.
// It does not apply defaults: validate g.WithDefaults() to accept zero
// fields.
func (g Geometry) Validate() error {
	switch g.Members {
	case 2, 3, 5, 9:
	default:
		return fmt.Errorf("raid35 needs 2, 3, 5 or 9 members, got %d", g.Members)
	}
	b := g.BlockSize
	if b <= 0 || b&(b-1) != 0 {
		return fmt.Errorf("block size %d is not a power of two", b)
	}
	if b > MaxBlockSize {
		return fmt.Errorf("block size %d is larger than the maximum %d", b, MaxBlockSize)
	}
	if f := b >> g.Order(); f < MinFragmentSize {
		return fmt.Errorf("block size %d is too small for %d members: fragments would be %d bytes, need at least %d (block size %d or more)",
			b, g.Members, f, MinFragmentSize, MinFragmentSize<<g.Order())
	}
	switch g.Parity {
	case ParityRotating:
		if g.ParityChunk < 1 {
			return fmt.Errorf("parity chunk %d must be at least 1 block", g.ParityChunk)
		}
	case ParityDedicated:
	default:
		return fmt.Errorf("unknown parity placement %q (valid: rotating, dedicated)", string(g.Parity))
	}
	return nil
}

// Order returns k, where Members = 2^k+1 (0 for an invalid member count
// below 2).
func (g Geometry) Order() int {
	if g.Members < 2 {
		return 0
	}
	return bits.Len(uint(g.Members-1)) - 1
}

// FragmentSize returns F = B >> k, the bytes of one block on one member.
func (g Geometry) FragmentSize() int { return g.BlockSize >> g.Order() }

// DataFragments returns 2^k = M-1, the number of data fragments per block.
func (g Geometry) DataFragments() int { return g.Members - 1 }

// ParityMember returns the member holding the parity fragment of block:
// (block / ParityChunk) mod M for rotating parity, M-1 for dedicated.
func (g Geometry) ParityMember(block int64) int {
	if g.Parity == ParityDedicated {
		return g.Members - 1
	}
	return int((block / int64(g.ParityChunk)) % int64(g.Members))
}

// DataMember returns the member holding data fragment d (0 <= d < M-1,
// bytes [d*F, (d+1)*F) of the block) of block: (p+1+d) mod M where p is
// ParityMember(block).
func (g Geometry) DataMember(block int64, d int) int {
	return (g.ParityMember(block) + 1 + d) % g.Members
}

// Role returns what member holds of block: the data fragment index d in
// [0, M-1), or M-1 when it holds the parity fragment. It is the inverse of
// DataMember.
func (g Geometry) Role(block int64, member int) int {
	return (member - g.ParityMember(block) - 1 + g.Members) % g.Members
}

// Blocks returns the number of logical blocks that fit in members whose
// data area is memberDataSize bytes.
func (g Geometry) Blocks(memberDataSize int64) int64 {
	f := int64(g.FragmentSize())
	if f <= 0 || memberDataSize <= 0 {
		return 0
	}
	return memberDataSize / f
}

// Locate returns the member and the offset in its data area that hold the
// logical byte at off.
func (g Geometry) Locate(off int64) (member int, memberOff int64) {
	b, f := int64(g.BlockSize), int64(g.FragmentSize())
	n, in := off/b, off%b
	return g.DataMember(n, int(in/f)), n*f + in%f
}
