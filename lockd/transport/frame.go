package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Wire format. After the TLS handshake the dialling side sends a hello
// frame, the accepting side answers with its own, and from then on the
// dialler sends data frames and the acceptor only reads. Every frame is a
// 4-byte big-endian payload length followed by the payload.
//
// A hello payload is:
//
//	"DDLK"  magic
//	1 byte  protocol version (helloVersion)
//	1 byte  name length n (1..MaxNameLen)
//	n bytes the sender's node name
const (
	frameHeaderLen = 4
	helloMagic     = "DDLK"
	helloVersion   = 1
	helloMaxLen    = len(helloMagic) + 2 + MaxNameLen

	// MaxNameLen is the longest node name, the longest DNS name.
	MaxNameLen = 253
	// MaxFrameLimit is the largest Config.MaxFrame accepted.
	MaxFrameLimit = 64 << 20
)

// Frame and hello decoding errors.
var (
	// ErrFrameTooLarge reports a frame longer than the configured
	// maximum, in either direction.
	ErrFrameTooLarge = errors.New("transport: frame too large")
	// ErrBadHello reports a hello frame that does not parse.
	ErrBadHello = errors.New("transport: bad hello")
)

// appendFrameHeader appends the length header of a payload of n bytes.
func appendFrameHeader(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// readFrame reads one frame whose payload is at most max bytes. The
// payload is freshly allocated and belongs to the caller. A clean end of
// stream before the header is io.EOF; a stream that ends inside a frame is
// io.ErrUnexpectedEOF.
func readFrame(r io.Reader, max int) ([]byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(max) {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// helloFrame returns the whole hello frame (header included) for name.
func helloFrame(name string) []byte {
	payload := len(helloMagic) + 2 + len(name)
	b := appendFrameHeader(make([]byte, 0, frameHeaderLen+payload), payload)
	b = append(b, helloMagic...)
	b = append(b, helloVersion, byte(len(name)))
	return append(b, name...)
}

// parseHello returns the node name a hello payload carries.
func parseHello(p []byte) (string, error) {
	if len(p) < len(helloMagic)+2 || !bytes.HasPrefix(p, []byte(helloMagic)) {
		return "", fmt.Errorf("%w: no magic", ErrBadHello)
	}
	if v := p[len(helloMagic)]; v != helloVersion {
		return "", fmt.Errorf("%w: protocol version %d, want %d", ErrBadHello, v, helloVersion)
	}
	n := int(p[len(helloMagic)+1])
	name := p[len(helloMagic)+2:]
	if len(name) != n {
		return "", fmt.Errorf("%w: name length %d, %d bytes follow", ErrBadHello, n, len(name))
	}
	if err := ValidName(string(name)); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadHello, err)
	}
	return string(name), nil
}

// ValidName checks a node name: 1 to MaxNameLen bytes of ASCII letters,
// digits, '-', '_' and '.', the characters a DNS SAN can carry.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("transport: node name must be 1 to %d bytes, got %d", MaxNameLen, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("transport: node name %q: byte %#x at %d not allowed", name, c, i)
		}
	}
	return nil
}
