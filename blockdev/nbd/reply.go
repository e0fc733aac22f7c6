package nbd

import (
	"encoding/binary"
	"errors"
	"net"

	"github.com/ddraid/ddraid/blockdev"
)

// holeGrain is the piece size in which READ data is checked for zeroes
// when structured replies are in use: aligned pieces that hold only zeroes
// are sent as NBD_REPLY_TYPE_OFFSET_HOLE instead of data. The check stops
// at the first nonzero byte, so it costs next to nothing on data.
const holeGrain = 64 << 10

// run is one content chunk of a READ reply: bytes [start, end) of the
// data, sent as a hole when zero is set.
type run struct {
	start, end int
	zero       bool
}

// putChunkHeader writes a structured reply chunk header into b.
func putChunkHeader(b []byte, flags, typ uint16, cookie uint64, length int) {
	binary.BigEndian.PutUint32(b[0:], magicStructReply)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint32(b[16:], uint32(length))
}

// scratchN returns r's scratch buffer resized to n bytes.
func (r *request) scratchN(n int) []byte {
	if cap(r.scratch) < n {
		r.scratch = make([]byte, n, max(n, 2*cap(r.scratch)))
	}
	return r.scratch[:n]
}

// encodeReply turns r's outcome into r.vec: a simple reply without
// structured replies; with them, chunks for READ (always) and
// BLOCK_STATUS, an error chunk carrying r.msg for any error, and a simple
// reply for the remaining successes (the spec allows simple replies
// without payload).
func (c *conn) encodeReply(r *request) {
	r.vec = r.vec[:0]
	if !c.structured || (r.errno == 0 && r.Type != CmdRead && r.Type != CmdBlockStatus) {
		putSimpleReply((*[replyHeaderLen]byte)(r.hdr[:replyHeaderLen]), r.errno, r.Cookie)
		r.vec = append(r.vec, r.hdr[:replyHeaderLen])
		if r.errno == 0 && len(r.data) > 0 {
			r.vec = append(r.vec, r.data)
		}
		return
	}
	switch {
	case r.errno != 0:
		c.encodeError(r)
	case r.Type == CmdRead:
		c.encodeRead(r)
	default:
		c.encodeBlockStatus(r)
	}
}

// encodeError encodes NBD_REPLY_TYPE_ERROR with r.msg as the message.
func (c *conn) encodeError(r *request) {
	msg := r.msg
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	b := r.scratchN(chunkHeaderLen + 6 + len(msg))
	putChunkHeader(b, replyFlagDone, replyTypeError, r.Cookie, 6+len(msg))
	binary.BigEndian.PutUint32(b[20:], uint32(r.errno))
	binary.BigEndian.PutUint16(b[24:], uint16(len(msg)))
	copy(b[26:], msg)
	r.vec = append(r.vec, b)
}

// encodeRead encodes a successful READ: one data chunk with DF, otherwise
// data and hole chunks as planned by planRuns. The last chunk carries
// NBD_REPLY_FLAG_DONE (the data is complete, no error can follow); an
// empty read gets a lone NBD_REPLY_TYPE_NONE.
func (c *conn) encodeRead(r *request) {
	if len(r.data) == 0 {
		putChunkHeader(r.hdr[:], replyFlagDone, replyTypeNone, r.Cookie, 0)
		r.vec = append(r.vec, r.hdr[:chunkHeaderLen])
		return
	}
	if r.Flags&CmdFlagDF != 0 {
		r.runs = append(r.runs[:0], run{0, len(r.data), false})
	} else {
		r.runs = planRuns(r.runs[:0], r.data, r.Offset)
	}
	if len(r.runs) == 1 {
		r.vec = r.appendChunk(r.vec, r.hdr[:], r.runs[0], replyFlagDone)
		return
	}
	b := r.scratchN(32 * len(r.runs))
	for i, rn := range r.runs {
		var flags uint16
		if i == len(r.runs)-1 {
			flags = replyFlagDone
		}
		r.vec = r.appendChunk(r.vec, b[32*i:32*i+32], rn, flags)
	}
}

// appendChunk encodes the content chunk for rn into h (32 bytes) and
// appends its pieces to vec.
func (r *request) appendChunk(vec [][]byte, h []byte, rn run, flags uint16) [][]byte {
	off := r.Offset + uint64(rn.start)
	n := rn.end - rn.start
	if rn.zero {
		putChunkHeader(h, flags, replyTypeOffsetHole, r.Cookie, 12)
		binary.BigEndian.PutUint64(h[20:], off)
		binary.BigEndian.PutUint32(h[28:], uint32(n))
		return append(vec, h[:32])
	}
	putChunkHeader(h, flags, replyTypeOffsetData, r.Cookie, 8+n)
	binary.BigEndian.PutUint64(h[20:], off)
	return append(vec, h[:28], r.data[rn.start:rn.end])
}

// planRuns splits data, read at export offset off, into runs of zero and
// nonzero holeGrain-aligned pieces, merging neighbours of the same kind.
func planRuns(dst []run, data []byte, off uint64) []run {
	for i := 0; i < len(data); {
		j := min(len(data), i+int(holeGrain-(off+uint64(i))%holeGrain))
		zero := isZero(data[i:j])
		if n := len(dst); n > 0 && dst[n-1].zero == zero {
			dst[n-1].end = j
		} else {
			dst = append(dst, run{i, j, zero})
		}
		i = j
	}
	return dst
}

// isZero reports whether b holds only zero bytes; it stops at the first
// difference.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroes))
		if string(b[:n]) != string(zeroes[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// encodeBlockStatus encodes one NBD_REPLY_TYPE_BLOCK_STATUS chunk per
// selected context: base:allocation from r.status, ddraid:dirty/SLOT from
// r.dirty. The last chunk carries NBD_REPLY_FLAG_DONE.
func (c *conn) encodeBlockStatus(r *request) {
	base := c.blockStatus
	dirty := c.dirtySelected()
	n := 0
	if base {
		n += chunkHeaderLen + 4 + 8*len(r.status)
	}
	if dirty {
		n += chunkHeaderLen + 4 + 8*len(r.dirty)
	}
	b := r.scratchN(n)
	if base {
		flags := uint16(replyFlagDone)
		if dirty {
			flags = 0
		}
		k := chunkHeaderLen + 4 + 8*len(r.status)
		putStatusChunk(b[:k], flags, r.Cookie, metaIDBaseAllocation, r.status, stateHole|stateZero)
		r.vec = append(r.vec, b[:k])
		b = b[k:]
	}
	if dirty {
		putStatusChunk(b, replyFlagDone, r.Cookie, metaIDDirty, r.dirty, StateDirty)
		r.vec = append(r.vec, b)
	}
}

// putStatusChunk encodes a BLOCK_STATUS chunk for context id into b, which
// has exactly the room it needs; flags outside mask are dropped.
func putStatusChunk(b []byte, flags uint16, cookie uint64, id uint32, ext []blockdev.Extent, mask uint32) {
	putChunkHeader(b, flags, replyTypeBlockStatus, cookie, 4+8*len(ext))
	binary.BigEndian.PutUint32(b[20:], id)
	p := b[24:]
	for _, e := range ext {
		binary.BigEndian.PutUint32(p, uint32(e.Length))
		binary.BigEndian.PutUint32(p[4:], uint32(e.Flags)&mask)
		p = p[8:]
	}
}

// queueReply queues r's encoded reply and, unless another goroutine is
// already writing or the reader holds replies back (cork), writes the
// queue. Each reply's pieces go out in the same writev. After the write,
// requests are recycled and leave the in-flight count.
func (c *conn) queueReply(r *request) {
	c.wmu.Lock()
	c.wq = append(c.wq, r)
	if c.corked {
		c.ncork++
		for _, b := range r.vec {
			c.corkLen += len(b)
		}
		if c.ncork < c.maxCork() && c.corkLen < maxCorkBytes {
			c.wmu.Unlock()
			return
		}
		c.corked = false
	}
	c.writeLocked()
}

// maxCork is the most replies held back at once: well below MaxInFlight,
// since held replies hold their requests, and small enough that the client
// starts on the first replies of a burst while the server runs the rest.
// Holding a whole queue depth's worth (64 at fio's iodepth 64) made the two
// sides take turns: 4k random IO on one connection ran 15-25 % faster with
// batches of 16 than of 64, in A/B runs on a 2-core machine (session 4).
func (c *conn) maxCork() int { return min(maxCorkReplies, c.maxInFlight/2) }

// cork holds replies back until uncork (or until enough are held).
func (c *conn) cork() {
	c.wmu.Lock()
	if !c.corked {
		c.corked, c.ncork, c.corkLen = true, 0, 0
	}
	c.wmu.Unlock()
}

// uncork sends the replies held back. The reader calls it before anything
// that may block, since held replies hold requests and buffers.
func (c *conn) uncork() {
	c.wmu.Lock()
	if !c.corked {
		c.wmu.Unlock()
		return
	}
	c.corked = false
	c.writeLocked()
}

// writeLocked is called with wmu held and releases it: unless a write is
// under way, it writes the queue until it is empty.
func (c *conn) writeLocked() {
	if c.writing || len(c.wq) == 0 {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	for len(c.wq) > 0 {
		batch := c.wq
		c.wq = c.wspare[:0]
		failed := c.werr != nil
		c.wmu.Unlock()

		if !failed {
			c.writeBatch(batch)
		}
		for i, q := range batch {
			c.recycle(q)
			c.inflight.Done()
			batch[i] = nil
		}

		c.wmu.Lock()
		c.wspare = batch[:0]
	}
	c.writing = false
	c.wmu.Unlock()
}

// writeBatch writes the replies of batch with one writev (the kernel may
// take it in parts; net.Buffers continues them). Under TLS the pieces are
// gathered in a buffer and sent as few records as possible.
func (c *conn) writeBatch(batch []*request) {
	vec := c.wvec[:0]
	for _, q := range batch {
		vec = append(vec, q.vec...)
	}
	var err error
	if c.bw != nil {
		for _, b := range vec {
			if _, err = c.bw.Write(b); err != nil {
				break
			}
		}
		if err == nil {
			err = c.bw.Flush()
		}
	} else {
		c.wbufs = vec
		_, err = c.wbufs.WriteTo(c.nc)
	}
	clear(vec)
	c.wvec = vec[:0]
	if err != nil {
		c.wmu.Lock()
		c.werr = err
		c.wmu.Unlock()
		if !errors.Is(err, net.ErrClosed) {
			c.log.Info("nbd: writing reply failed; closing connection", "export", c.exp.Name, "err", err)
		}
		c.nc.Close()
	}
}
