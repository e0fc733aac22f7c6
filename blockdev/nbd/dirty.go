package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// maxDirtyQuery is the length one BLOCK_STATUS of QueryDirty asks about.
const maxDirtyQuery = 1 << 30

// QueryDirty asks a member export which regions are marked for slot: on
// the established connection nc it negotiates (STARTTLS first when o.TLS
// is set; o.Writer is ignored: the query needs no identity), structured
// replies and the metadata context ddraid:dirty/SLOT, then walks the whole
// export with NBD_CMD_BLOCK_STATUS. It returns extents covering the export
// in order, neighbours of equal flags merged, Flags StateDirty where
// marked. ctx bounds the whole query; the caller still owns nc and should
// close it afterwards. A server that does not offer the context (not a
// ddraid agent, or not a member export) is an error.
func QueryDirty(ctx context.Context, nc net.Conn, o ClientOptions, slot uint32) ([]blockdev.Extent, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c := &Client{nc: nc, br: bufio.NewReaderSize(nc, readBufferSize)}
	out, err := c.queryDirty(o, slot)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("nbd: dirty query of export %q: %w (%v)", o.Export, cerr, err)
		}
		return nil, fmt.Errorf("nbd: dirty query of export %q: %w", o.Export, err)
	}
	return out, nil
}

func (c *Client) queryDirty(o ClientOptions, slot uint32) ([]blockdev.Extent, error) {
	fixed, _, err := c.greet()
	if err != nil {
		return nil, err
	}
	if !fixed {
		return nil, errors.New("server does not speak fixed newstyle negotiation")
	}
	if o.TLS != nil {
		if err := c.startTLS(o.TLS); err != nil {
			return nil, err
		}
	}
	if err := c.sendOption(optStructuredReply, nil); err != nil {
		return nil, err
	}
	if typ, d, err := c.readOptReply(optStructuredReply); err != nil {
		return nil, err
	} else if typ != repAck {
		return nil, fmt.Errorf("server refused structured replies (reply type %#x): %s", typ, d)
	}
	ctxName := MetaDirtyPrefix + strconv.FormatUint(uint64(slot), 10)
	q := binary.BigEndian.AppendUint32(nil, uint32(len(o.Export)))
	q = append(q, o.Export...)
	q = binary.BigEndian.AppendUint32(q, 1)
	q = binary.BigEndian.AppendUint32(q, uint32(len(ctxName)))
	q = append(q, ctxName...)
	if err := c.sendOption(optSetMetaContext, q); err != nil {
		return nil, err
	}
	id, found := uint32(0), false
	for {
		typ, d, err := c.readOptReply(optSetMetaContext)
		if err != nil {
			return nil, err
		}
		if typ == repAck {
			break
		}
		if typ != repMetaContext {
			return nil, fmt.Errorf("server refused the metadata context %s (reply type %#x): %s", ctxName, typ, d)
		}
		if len(d) < 4 {
			return nil, errors.New("NBD_REP_META_CONTEXT shorter than 4 bytes")
		}
		if string(d[4:]) == ctxName {
			id, found = binary.BigEndian.Uint32(d), true
		}
	}
	if !found {
		return nil, fmt.Errorf("export %q does not offer %s (is it a disk served by a ddraid agent?)", o.Export, ctxName)
	}
	ok, err := c.optGo(o.Export, o.BlockSizes)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("server does not support NBD_OPT_GO")
	}
	var out []blockdev.Extent
	size := c.info.Size
	var cookie uint64
	for off := int64(0); off < size; {
		n := min(size-off, maxDirtyQuery)
		cookie++
		req := Request{Type: CmdBlockStatus, Cookie: cookie, Offset: uint64(off), Length: uint32(n)}
		var h [requestHeaderLen]byte
		req.encode(&h)
		if _, err := c.nc.Write(h[:]); err != nil {
			return nil, fmt.Errorf("sending BLOCK_STATUS: %w", err)
		}
		got, err := c.readStatus(cookie, id, off, n)
		if err != nil {
			return nil, err
		}
		for _, e := range got {
			if k := len(out) - 1; k >= 0 && out[k].Flags == e.Flags {
				out[k].Length += e.Length
			} else {
				out = append(out, e)
			}
			off += e.Length
		}
	}
	var h [requestHeaderLen]byte
	disc := Request{Type: CmdDisc}
	disc.encode(&h)
	c.nc.Write(h[:]) // best effort: the caller closes the connection
	return out, nil
}

// readStatus reads the structured reply to one BLOCK_STATUS of [off,
// off+n) and returns the extents of context id, clipped to the request.
func (c *Client) readStatus(cookie uint64, id uint32, off, n int64) ([]blockdev.Extent, error) {
	var ext []blockdev.Extent
	for {
		var h [chunkHeaderLen]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return nil, fmt.Errorf("reading BLOCK_STATUS reply: %w", err)
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != magicStructReply {
			if m == magicSimpleReply {
				if e := Errno(binary.BigEndian.Uint32(h[4:])); e != 0 {
					return nil, fmt.Errorf("BLOCK_STATUS: %w", e)
				}
			}
			return nil, fmt.Errorf("BLOCK_STATUS: unexpected reply magic %#x", m)
		}
		flags := binary.BigEndian.Uint16(h[4:])
		typ := binary.BigEndian.Uint16(h[6:])
		if got := binary.BigEndian.Uint64(h[8:]); got != cookie {
			return nil, fmt.Errorf("BLOCK_STATUS reply to cookie %d, want %d", got, cookie)
		}
		length := binary.BigEndian.Uint32(h[16:])
		if length > maxOptReplyLen+8*maxStatusExtents {
			return nil, fmt.Errorf("BLOCK_STATUS chunk of %d bytes is too long", length)
		}
		p := make([]byte, length)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return nil, fmt.Errorf("reading BLOCK_STATUS reply: %w", err)
		}
		switch {
		case typ == replyTypeBlockStatus:
			if len(p) < 4 || (len(p)-4)%8 != 0 {
				return nil, fmt.Errorf("BLOCK_STATUS chunk of %d bytes", len(p))
			}
			if binary.BigEndian.Uint32(p) == id {
				left := n
				for q := p[4:]; len(q) > 0 && left > 0; q = q[8:] {
					l := min(int64(binary.BigEndian.Uint32(q)), left)
					if l == 0 {
						return nil, errors.New("BLOCK_STATUS descriptor of length 0")
					}
					ext = append(ext, blockdev.Extent{Length: l, Flags: blockdev.ExtentFlags(binary.BigEndian.Uint32(q[4:]) & StateDirty)})
					left -= l
				}
			}
		case typ&(1<<15) != 0:
			if len(p) < 6 {
				return nil, fmt.Errorf("BLOCK_STATUS error chunk of %d bytes", len(p))
			}
			msg := p[6:]
			if ml := int(binary.BigEndian.Uint16(p[4:])); ml <= len(msg) {
				msg = msg[:ml]
			}
			return nil, fmt.Errorf("BLOCK_STATUS at %d: %w: %s", off, Errno(binary.BigEndian.Uint32(p)), msg)
		case typ != replyTypeNone:
			return nil, fmt.Errorf("BLOCK_STATUS: unexpected chunk type %d", typ)
		}
		if flags&replyFlagDone != 0 {
			if len(ext) == 0 {
				return nil, fmt.Errorf("BLOCK_STATUS at %d: no descriptor for %s", off, MetaDirtyPrefix)
			}
			return ext, nil
		}
	}
}
