package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from one sync.Pool per power-of-two size class, so a
// connection in the steady state reuses buffers instead of allocating one
// per request. The pools hold *[]byte so that Put does not allocate.
const (
	minBufClass = 9  // 512 bytes
	maxBufClass = 30 // 1 GiB, the largest MaxPayload
)

var bufPools [maxBufClass + 1]sync.Pool

// bufClass returns the size class holding n bytes (n > 0).
func bufClass(n int) int {
	c := bits.Len(uint(n - 1))
	if c < minBufClass {
		c = minBufClass
	}
	return c
}

// getBuf returns a pooled buffer of length n (n ≤ 1 GiB). The caller hands
// the returned pointer back to putBuf when it no longer uses the buffer.
// n == 0 returns nil.
func getBuf(n int) *[]byte {
	if n <= 0 {
		return nil
	}
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<c)
	return &b
}

// putBuf returns a buffer obtained from getBuf to its pool. nil is ignored.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := bits.Len(uint(cap(*p) - 1))
	if cap(*p) != 1<<c || c < minBufClass || c > maxBufClass {
		return // not one of ours; let the GC have it
	}
	bufPools[c].Put(p)
}
