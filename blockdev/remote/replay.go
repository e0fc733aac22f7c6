package remote

import (
	"math/bits"
	"sync"

	"github.com/ddraid/ddraid/blockdev"
)

// entry is one acknowledged, not yet flushed change: a write (data holds a
// private copy of its bytes) or a Zero (data is nil).
type entry struct {
	seq  uint64
	off  int64
	n    int64
	data *[]byte
}

// entryOverhead is what an entry counts against the replay budget on top
// of its data, so that a flood of Zero entries is bounded too.
const entryOverhead = 64

func (e *entry) cost() int64 {
	if e.data == nil {
		return entryOverhead
	}
	return e.n + entryOverhead
}

// apply sends the entry again on dev.
func (e *entry) apply(dev blockdev.Device) error {
	if e.data == nil {
		return dev.Zero(e.off, e.n)
	}
	_, err := dev.WriteAt((*e.data)[:e.n], e.off)
	return err
}

// replayLog holds the changes acknowledged since the last flush, in the
// order they were acknowledged. Not safe for concurrent use: the Device
// guards it with its mutex.
type replayLog struct {
	entries []entry
	next    uint64 // seq of the next entry
	bytes   int64  // sum of cost() over entries
}

// addWrite records an acknowledged write of the bytes in buf (a private
// copy from getBuf, which the log now owns).
func (l *replayLog) addWrite(buf *[]byte, off int64) uint64 {
	return l.add(entry{off: off, n: int64(len(*buf)), data: buf})
}

// addZero records an acknowledged Zero.
func (l *replayLog) addZero(off, n int64) uint64 {
	return l.add(entry{off: off, n: n})
}

func (l *replayLog) add(e entry) uint64 {
	e.seq = l.next
	l.next++
	l.entries = append(l.entries, e)
	l.bytes += e.cost()
	return e.seq
}

// trim drops the entries acknowledged before seq upto, which a flush has
// made durable. Their buffers go back to the pool when recycle is set;
// while a replay may still read them it is not.
func (l *replayLog) trim(upto uint64, recycle bool) {
	k := 0
	for k < len(l.entries) && l.entries[k].seq < upto {
		e := &l.entries[k]
		l.bytes -= e.cost()
		if recycle && e.data != nil {
			putBuf(e.data)
		}
		*e = entry{}
		k++
	}
	l.entries = l.entries[k:]
	if len(l.entries) == 0 {
		l.entries = l.entries[:0:0]
	}
}

// pending reports whether entry seq is still in the log.
func (l *replayLog) pending(seq uint64) bool {
	return len(l.entries) > 0 && l.entries[0].seq <= seq
}

// snapshot returns the entries in order; the caller must not change them.
func (l *replayLog) snapshot() []entry {
	return append([]entry(nil), l.entries...)
}

// Buffers for entry data, pooled by power-of-two size class from 512 B to
// 64 MiB; larger ones are allocated and dropped.
const (
	minBufShift = 9
	maxBufShift = 26
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

func getBuf(n int) *[]byte {
	c := bufClass(n)
	if c >= len(bufPools) {
		b := make([]byte, n)
		return &b
	}
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

func putBuf(b *[]byte) {
	c := bufClass(cap(*b))
	if c < len(bufPools) && cap(*b) == 1<<(c+minBufShift) {
		bufPools[c].Put(b)
	}
}
