package raid

import (
	"math/bits"
	"sync"
)

// Scratch buffers come from power-of-two size classes between
// minPooledBuf and maxPooledBuf; larger requests are allocated and left to
// the garbage collector.
const (
	minPooledShift = 9  // 512 bytes
	maxPooledShift = 24 // 16 MiB
)

var bufPools [maxPooledShift - minPooledShift + 1]sync.Pool

// getBuf returns a scratch buffer of exactly n bytes with undefined
// contents. Return it with putBuf once no goroutine uses it any more.
func getBuf(n int) *[]byte {
	c := sizeClass(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if v := bufPools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minPooledShift))
	return &b
}

// putBuf recycles a buffer from getBuf. b must not be used afterwards.
func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	c := sizeClass(cap(*b))
	if c < 0 || cap(*b) != 1<<(c+minPooledShift) {
		return
	}
	bufPools[c].Put(b)
}

// sizeClass returns the pool index for an n-byte buffer, or -1 when n is
// too large to pool.
func sizeClass(n int) int {
	if n <= 1<<minPooledShift {
		return 0
	}
	shift := bits.Len(uint(n - 1))
	if shift > maxPooledShift {
		return -1
	}
	return shift - minPooledShift
}
