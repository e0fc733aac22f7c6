package nbd

import (
	"errors"
	"fmt"

	"github.com/ddraid/ddraid/blockdev"
)

// Limits of NBD_CMD_BLOCK_STATUS replies.
const (
	// maxStatusQuery bounds the bytes one BLOCK_STATUS asks the device
	// about; the client asks again for the rest.
	maxStatusQuery = 1 << 30
	// maxStatusExtents bounds the descriptors of one reply (8 bytes each).
	maxStatusExtents = 4096
)

// allowedFlags lists the command flags each command accepts on this
// connection. FUA is valid on every command once NBD_FLAG_SEND_FUA is
// advertised (the spec requires accepting it, if only by ignoring it). DF
// needs structured replies, which is when NBD_FLAG_SEND_DF is advertised.
func (c *conn) allowedFlags(t Command) (uint16, bool) {
	switch t {
	case CmdRead:
		if c.structured {
			return CmdFlagFUA | CmdFlagDF, true
		}
		return CmdFlagFUA, true
	case CmdWrite, CmdFlush, CmdTrim, CmdCache:
		return CmdFlagFUA, true
	case CmdWriteZeroes:
		return CmdFlagFUA | CmdFlagNoHole | CmdFlagFastZero, true
	case CmdBlockStatus:
		return CmdFlagFUA | CmdFlagReqOne, true
	case CmdClear:
		return 0, true
	}
	return 0, false
}

// execute validates and performs r, recording the outcome in r.errno,
// r.msg and, for a successful READ, r.data (r.status for BLOCK_STATUS).
func (c *conn) execute(r *request) {
	r.errno, r.msg, r.data = 0, "", nil
	e := c.exp
	allowed, known := c.allowedFlags(r.Type)
	if !known {
		c.refuse(r, EINVAL, "unknown command")
		return
	}
	if r.Flags&^allowed != 0 {
		c.refuse(r, EINVAL, "command flags not valid for this command")
		return
	}
	switch r.Type {
	case CmdRead:
		if r.Length > e.maxBS {
			c.refuse(r, EINVAL, "READ longer than the maximum block size")
			return
		}
		if !c.admit(r, false, EINVAL) {
			return
		}
		c.takeBuf(r, int(r.Length))
		if _, err := e.Device.ReadAt(*r.bufp, int64(r.Offset)); err != nil {
			c.deviceFailed(r, err)
			return
		}
		r.data = *r.bufp

	case CmdWrite:
		end, ok := c.startWrite(r, ENOSPC)
		if !ok {
			return
		}
		defer end()
		if _, err := e.Device.WriteAt(*r.bufp, int64(r.Offset)); err != nil {
			c.deviceFailed(r, err)
			return
		}
		c.fua(r)

	case CmdFlush:
		if r.Offset != 0 || r.Length != 0 {
			c.refuse(r, EINVAL, "FLUSH with nonzero offset or length")
			return
		}
		if err := e.Device.Flush(); err != nil {
			c.deviceFailed(r, err)
		}

	case CmdTrim:
		end, ok := c.startWrite(r, EINVAL)
		if !ok {
			return
		}
		defer end()
		if err := e.Device.Trim(int64(r.Offset), int64(r.Length)); err != nil {
			c.deviceFailed(r, err)
			return
		}
		c.fua(r)

	case CmdWriteZeroes:
		end, ok := c.startWrite(r, ENOSPC)
		if !ok {
			return
		}
		defer end()
		c.writeZeroes(r)

	case CmdCache:
		c.admit(r, false, EINVAL) // nothing to do: the device has no cache of ours to fill

	case CmdBlockStatus:
		if !c.blockStatus && !c.dirtySelected() {
			c.refuse(r, EINVAL, "BLOCK_STATUS without a metadata context selected")
			return
		}
		if !c.admit(r, false, EINVAL) {
			if r.errno == 0 {
				c.refuse(r, EINVAL, "BLOCK_STATUS of zero length")
			}
			return
		}
		if c.blockStatus {
			c.blockStatusQuery(r)
		}
		if c.dirtySelected() {
			c.dirtyQuery(r)
		}

	case CmdClear:
		if c.session == nil {
			c.refuse(r, EINVAL, "CLEAR needs writer identity (NBD_OPT_DDRAID_WRITER)")
			return
		}
		if !c.admit(r, false, EINVAL) {
			return
		}
		err := c.session.Clear(int64(r.Offset), int64(r.Length))
		switch {
		case errors.Is(err, ErrFenced):
			r.errno, r.msg = EPERM, fencedMessage(err)
		case err != nil:
			c.deviceFailed(r, err)
		}
	}
}

// dirtySelected reports whether the connection selected a
// ddraid:dirty/SLOT context of a member export.
func (c *conn) dirtySelected() bool { return c.dirty >= 0 && c.exp.Member != nil }

// admit applies the checks every command on a range shares, refusing r
// when one fails: a write-type command (write) on a read-only export gets
// EPERM, and a range past the end or not aligned gets beyond there (see
// checkRange) and EINVAL otherwise. It reports whether r goes on, which a
// request of zero length does not: it succeeds at once.
func (c *conn) admit(r *request, write bool, beyond Errno) bool {
	if write && c.exp.ReadOnly {
		c.refuse(r, EPERM, r.Type.String()+" on a read-only export")
		return false
	}
	if errno := c.checkRange(r, beyond); errno != 0 {
		c.refuse(r, errno, rangeWhy(errno, r.Type.String()))
		return false
	}
	return r.Length != 0
}

// startWrite admits a write-type command (admit, with beyond) and applies
// the member export rules: without a writer session it is refused with
// EPERM; with one, the session marks the regions first (or refuses a
// fenced writer with EPERM). ok is false when r was refused or is of zero
// length; otherwise end must be called once the command is done.
func (c *conn) startWrite(r *request, beyond Errno) (end func(), ok bool) {
	if !c.admit(r, true, beyond) {
		return nil, false
	}
	if c.exp.Member == nil {
		return noop, true
	}
	if c.session == nil {
		c.refuse(r, EPERM, r.Type.String()+" to a member export needs writer identity (NBD_OPT_DDRAID_WRITER)")
		return nil, false
	}
	end, err := c.session.StartWrite(int64(r.Offset), int64(r.Length))
	switch {
	case errors.Is(err, ErrFenced):
		r.errno, r.msg = EPERM, fencedMessage(err)
		return nil, false
	case err != nil:
		c.deviceFailed(r, fmt.Errorf("mark before write: %w", err))
		return nil, false
	}
	return end, true
}

func noop() {}

// dirtyQuery answers BLOCK_STATUS for ddraid:dirty/SLOT into r.dirty:
// extents over at most 1 GiB from the request offset, at most 4096.
func (c *conn) dirtyQuery(r *request) {
	off, n := int64(r.Offset), min(int64(r.Length), maxStatusQuery)
	out, err := c.exp.Member.Dirty(uint32(c.dirty), off, n, r.dirty[:0])
	if err != nil || len(out) == 0 {
		c.log.Debug("nbd: dirty query failed; reporting dirty", "export", c.exp.Name, "err", err)
		out = append(out[:0], blockdev.Extent{Length: n, Flags: StateDirty})
	}
	if r.Flags&CmdFlagReqOne != 0 {
		out = out[:1]
	}
	if len(out) > maxStatusExtents {
		out = out[:maxStatusExtents]
	}
	r.dirty = out
}

// rangeWhy explains a range refusal.
func rangeWhy(errno Errno, cmd string) string {
	if errno == EINVAL || errno == ENOSPC {
		return cmd + " beyond the end of the export or not aligned to the minimum block size"
	}
	return cmd + " refused"
}

// writeZeroes performs WRITE_ZEROES. NO_HOLE needs the range to stay
// allocated: a device that can zero without holes (blockdev.NoHoleZeroer)
// does so, any other gets zeroes written. FAST_ZERO fails at once with
// ENOTSUP unless the chosen way is fast.
func (c *conn) writeZeroes(r *request) {
	dev := c.exp.Device
	off, n := int64(r.Offset), int64(r.Length)
	fast := r.Flags&CmdFlagFastZero != 0
	if r.Flags&CmdFlagNoHole != 0 {
		err := blockdev.ZeroNoHole(dev, off, n)
		switch {
		case err == nil:
			c.fua(r)
			return
		case !errors.Is(err, blockdev.ErrNotSupported):
			c.deviceFailed(r, err)
			return
		case fast:
			r.errno, r.msg = ENOTSUP, "the export cannot zero fast without leaving holes"
			return
		}
		for n > 0 {
			k := min(n, int64(len(zeroes)))
			if _, err := dev.WriteAt(zeroes[:k], off); err != nil {
				c.deviceFailed(r, err)
				return
			}
			off += k
			n -= k
		}
		c.fua(r)
		return
	}
	if fast && !blockdev.CanFastZero(dev) {
		r.errno, r.msg = ENOTSUP, "the export cannot zero fast"
		return
	}
	if err := dev.Zero(off, n); err != nil {
		c.deviceFailed(r, err)
		return
	}
	c.fua(r)
}

// blockStatusQuery answers BLOCK_STATUS for base:allocation into r.ext.
// Descriptor boundaries fall on multiples of the minimum block size (the
// query's own start and the export's end excepted). A device that cannot
// describe its extents, or fails to, reports flags 0 (unknown) for the
// whole range, which the spec allows.
func (c *conn) blockStatusQuery(r *request) {
	e := c.exp
	off := int64(r.Offset)
	n := int64(r.Length)
	if n > maxStatusQuery {
		// Answer the first part; end it on a block boundary.
		n = maxStatusQuery
		if end, m := off+n, int64(e.minBS); end%m != 0 && end-end%m > off {
			n = end - end%m - off
		}
	}
	src, err := blockdev.ExtentsOf(e.Device, r.ext[:0], off, n)
	if err != nil {
		c.log.Debug("nbd: device cannot report extents; reporting unknown", "export", e.Name,
			"offset", off, "length", n, "err", err)
		src = append(src[:0], blockdev.Extent{Length: n})
	}
	r.ext = src
	out := blockdev.AlignExtents(r.status[:0], src, off, int64(e.minBS))
	if r.Flags&CmdFlagReqOne != 0 {
		out = out[:1]
	}
	if len(out) > maxStatusExtents {
		out = out[:maxStatusExtents]
	}
	r.status = out
}

// checkRange validates r's range against the export. A zero-length request
// touches nothing and always passes. Past the end it returns beyond (EINVAL
// for reads, ENOSPC for writes, as the spec recommends). When the client
// negotiated block sizes, a range not aligned to the minimum block size is
// EINVAL, except that a request may end exactly at an unaligned export end.
func (c *conn) checkRange(r *request, beyond Errno) Errno {
	if r.Length == 0 {
		return 0
	}
	size := c.exp.size
	if r.Offset > size || uint64(r.Length) > size-r.Offset {
		return beyond
	}
	if c.strict && c.exp.minBS > 1 {
		m := uint64(c.exp.minBS)
		end := r.Offset + uint64(r.Length)
		if r.Offset%m != 0 || (end%m != 0 && end != size) {
			return EINVAL
		}
	}
	return 0
}

// fua flushes the device after a write-type command with the FUA flag.
func (c *conn) fua(r *request) {
	if r.Flags&CmdFlagFUA == 0 {
		return
	}
	if err := c.exp.Device.Flush(); err != nil {
		c.deviceFailed(r, fmt.Errorf("flush for FUA: %w", err))
	}
}
