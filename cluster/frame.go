package cluster

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Channels: the first byte of every frame on the shared transport.
const (
	ChannelLockd     byte = 1
	ChannelMessenger byte = 2
)

// Frame kinds of the messenger channel.
const (
	kindRequest byte = 1
	kindReply   byte = 2
)

// Reply codes.
const (
	codeOK          byte = 0
	codeUnknownType byte = 1
	codeHandlerErr  byte = 2
	codeRefused     byte = 3
	numCodes        byte = 4
)

// maxName bounds Message.Type and Message.Array.
const maxName = 255

// Frame is one messenger frame (without the channel byte): a request or a
// reply.
type Frame struct {
	Reply bool
	ID    uint64
	// Request fields.
	Timeout time.Duration // what the caller still waits, whole milliseconds
	Msg     Message
	// Reply fields.
	Code byte
	Text string
	Body []byte
}

// Marshal appends the frame's encoding to dst (which may be nil).
func (f *Frame) Marshal(dst []byte) []byte {
	if !f.Reply {
		dst = append(dst, kindRequest)
		dst = binary.AppendUvarint(dst, f.ID)
		dst = binary.AppendUvarint(dst, uint64(max(f.Timeout, 0)/time.Millisecond))
		dst = appendBytes(dst, []byte(f.Msg.Type))
		dst = appendBytes(dst, []byte(f.Msg.Array))
		return appendBytes(dst, f.Msg.Body)
	}
	dst = append(dst, kindReply)
	dst = binary.AppendUvarint(dst, f.ID)
	dst = append(dst, f.Code)
	dst = appendBytes(dst, []byte(f.Text))
	return appendBytes(dst, f.Body)
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// UnmarshalFrame decodes a messenger frame (without the channel byte). The
// frame's byte slices are copies: p may be reused afterwards.
func UnmarshalFrame(p []byte) (Frame, error) {
	d := decoder{p: p}
	var f Frame
	kind := d.byte()
	f.ID = d.uvarint()
	switch kind {
	case kindRequest:
		ms := d.uvarint()
		if ms > uint64(24*time.Hour/time.Millisecond) {
			d.fail("timeout %d ms", ms)
		}
		f.Timeout = time.Duration(ms) * time.Millisecond
		f.Msg.Type = string(d.bytes(maxName))
		f.Msg.Array = string(d.bytes(maxName))
		f.Msg.Body = d.bytes(-1)
		if d.err == nil && f.Msg.Type == "" {
			d.fail("empty message type")
		}
	case kindReply:
		f.Reply = true
		f.Code = d.byte()
		if d.err == nil && f.Code >= numCodes {
			d.fail("reply code %d", f.Code)
		}
		f.Text = string(d.bytes(-1))
		f.Body = d.bytes(-1)
	default:
		d.fail("frame kind %d", kind)
	}
	if d.err == nil && len(d.p) > 0 {
		d.fail("%d trailing bytes", len(d.p))
	}
	if d.err != nil {
		return Frame{}, d.err
	}
	return f, nil
}

type decoder struct {
	p   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadFrame, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.p) == 0 {
		d.fail("short frame")
		return 0
	}
	b := d.p[0]
	d.p = d.p[1:]
	return b
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.p)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.p = d.p[n:]
	return v
}

// bytes reads a length-prefixed byte string of at most limit bytes (-1: no
// limit beyond the frame).
func (d *decoder) bytes(limit int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.p)) || (limit >= 0 && n > uint64(limit)) {
		d.fail("field of %d bytes", n)
		return nil
	}
	b := make([]byte, n)
	copy(b, d.p)
	d.p = d.p[n:]
	return b
}
