package nbd

// A client that asked for NBD_INFO_BLOCK_SIZE (ClientOptions.BlockSizes)
// has promised the server to keep to its minimum block size, and the server
// may refuse (EINVAL) a request whose offset or length is not a multiple of
// it. A Client still takes requests of any offset and length, as
// blockdev.Device requires, and keeps the promise itself:
//
//   - a misaligned read reads the whole blocks at its ends into a pooled
//     buffer and copies out the part asked for;
//   - a misaligned write or zero reads the partial blocks at its ends,
//     merges, and writes whole blocks (a read-modify-write);
//   - a misaligned trim trims the whole blocks inside its range only (Trim
//     may leave old contents).
//
// Read-modify-writes hold rmw, so two of them that touch one block with
// different bytes do not undo each other. A request in whole blocks takes
// no lock: it can only share a block with a read-modify-write whose bytes it
// overlaps, and concurrent overlapping writes are undefined anyway. The
// lock covers one Client only; writers on two connections that misalign
// writes into one block can still lose one of them, which is why an array
// refuses a member whose minimum block size does not divide its fragment.

// span is one piece of a request: [off, end) lies within [lo, hi), which is
// whole blocks (the last may be cut short by the end of the export). The
// piece is whole when off == lo and end == hi.
type span struct{ off, end, lo, hi int64 }

func (s span) whole() bool { return s.off == s.lo && s.end == s.hi }

// misaligned reports whether [off, off+n) needs the work above.
func (c *Client) misaligned(off, n int64) bool {
	a := c.align
	if a <= 1 {
		return false
	}
	end := off + n
	return off&(a-1) != 0 || (end&(a-1) != 0 && end != c.info.Size)
}

// spans splits [off, end) into at most three pieces: a partial head block,
// the whole blocks, and a partial tail block. Empty pieces are left out.
func (c *Client) spans(off, end int64) ([3]span, int) {
	a := c.align
	var out [3]span
	n := 0
	block := func(at int64) (lo, hi int64) {
		lo = at &^ (a - 1)
		return lo, min(lo+a, c.info.Size)
	}
	add := func(s span) {
		if s.off < s.end {
			out[n] = s
			n++
		}
	}
	if off&(a-1) != 0 {
		lo, hi := block(off)
		add(span{off, min(end, hi), lo, hi})
		off = min(end, hi)
	}
	mid := end &^ (a - 1)
	if end == c.info.Size {
		mid = end
	}
	if mid > off {
		add(span{off, mid, off, mid})
		off = mid
	}
	if off < end {
		lo, hi := block(off)
		add(span{off, end, lo, hi})
	}
	return out, n
}

// readSpans serves a misaligned read.
func (c *Client) readSpans(p []byte, off int64) (int, error) {
	ss, n := c.spans(off, off+int64(len(p)))
	for _, s := range ss[:n] {
		q := p[s.off-off : s.end-off]
		if s.whole() {
			if _, err := c.read(q, s.off); err != nil {
				return 0, err
			}
			continue
		}
		buf := getBuf(int(s.hi - s.lo))
		_, err := c.read(*buf, s.lo)
		copy(q, (*buf)[s.off-s.lo:])
		putBuf(buf)
		if err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// writeSpans serves a misaligned write, or a misaligned zero when p is nil.
func (c *Client) writeSpans(p []byte, off, length int64) error {
	c.rmw.Lock()
	defer c.rmw.Unlock()
	ss, n := c.spans(off, off+length)
	for _, s := range ss[:n] {
		var q []byte
		if p != nil {
			q = p[s.off-off : s.end-off]
		}
		if s.whole() {
			var err error
			if p != nil {
				_, err = c.write(q, s.off)
			} else {
				err = c.zero(s.off, s.end-s.off)
			}
			if err != nil {
				return err
			}
			continue
		}
		if err := c.modify(s, q); err != nil {
			return err
		}
	}
	return nil
}

// modify reads the block span s lies in, puts q over s (zeroes when q is
// nil) and writes the block back.
func (c *Client) modify(s span, q []byte) error {
	buf := getBuf(int(s.hi - s.lo))
	defer putBuf(buf)
	b := *buf
	if _, err := c.read(b, s.lo); err != nil {
		return err
	}
	if q != nil {
		copy(b[s.off-s.lo:], q)
	} else {
		clear(b[s.off-s.lo : s.end-s.lo])
	}
	_, err := c.write(b, s.lo)
	return err
}

// trimSpan narrows a misaligned trim to the whole blocks inside it; ok is
// false when there are none.
func (c *Client) trimSpan(off, length int64) (lo, hi int64, ok bool) {
	a := c.align
	lo = (off + a - 1) &^ (a - 1)
	hi = (off + length) &^ (a - 1)
	if off+length == c.info.Size {
		hi = off + length
	}
	return lo, hi, lo < hi
}
