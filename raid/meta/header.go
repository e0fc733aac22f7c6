package meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/ddraid/ddraid/blockdev"
)

const (
	// HeaderSize is the space the header occupies at the start of a member.
	HeaderSize = 4096
	// DataOffset is where a member's data area starts: 1 MiB, so data stays
	// aligned for any block size and O_DIRECT.
	DataOffset = 1 << 20
	// HeaderVersion is the header format this code writes and reads.
	HeaderVersion = 1
	// MaxNameLen is the longest array name.
	MaxNameLen = 64
)

var headerMagic = [8]byte{'D', 'D', 'R', 'A', 'I', 'D', 'M', 'B'}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Header errors; test with errors.Is.
var (
	// ErrNoHeader reports a device that does not start with a ddraid header.
	ErrNoHeader = errors.New("no ddraid member header")
	// ErrCorrupt reports metadata that fails its checksum or does not decode.
	ErrCorrupt = errors.New("corrupt ddraid metadata")
)

// Header is the on-member record identifying a member. All integers are
// little-endian on disk:
//
//	0   magic "DDRAIDMB"      8
//	8   version               4
//	12  role (int32, -1 = spare) 4
//	16  array UUID            16
//	32  member UUID           16
//	48  members               4
//	52  block size            4
//	56  data offset           8
//	64  data size             8
//	72  events                8
//	80  level                 16 (NUL padded)
//	96  array name            64 (NUL padded)
//	... zero
//	4092 CRC-32C of bytes [0, 4092)
type Header struct {
	Version    uint32
	Role       int32
	ArrayUUID  UUID
	MemberUUID UUID
	Members    uint32
	BlockSize  uint32
	DataOffset uint64
	DataSize   uint64
	Events     uint64
	Level      string
	ArrayName  string
}

// Marshal encodes h into a HeaderSize-byte block.
func (h *Header) Marshal() ([]byte, error) {
	if len(h.Level) > 16 {
		return nil, fmt.Errorf("header: level %q too long", h.Level)
	}
	if len(h.ArrayName) > MaxNameLen {
		return nil, fmt.Errorf("header: array name longer than %d bytes", MaxNameLen)
	}
	b := make([]byte, HeaderSize)
	copy(b[0:8], headerMagic[:])
	le := binary.LittleEndian
	le.PutUint32(b[8:], HeaderVersion)
	le.PutUint32(b[12:], uint32(h.Role))
	copy(b[16:32], h.ArrayUUID[:])
	copy(b[32:48], h.MemberUUID[:])
	le.PutUint32(b[48:], h.Members)
	le.PutUint32(b[52:], h.BlockSize)
	le.PutUint64(b[56:], h.DataOffset)
	le.PutUint64(b[64:], h.DataSize)
	le.PutUint64(b[72:], h.Events)
	copy(b[80:96], h.Level)
	copy(b[96:160], h.ArrayName)
	le.PutUint32(b[HeaderSize-4:], crc32.Checksum(b[:HeaderSize-4], crcTable))
	return b, nil
}

// ParseHeader decodes a header block. It returns ErrNoHeader when the magic
// is absent and ErrCorrupt when the checksum or a field is wrong.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("header: %d bytes, want %d: %w", len(b), HeaderSize, ErrNoHeader)
	}
	if [8]byte(b[0:8]) != headerMagic {
		return h, ErrNoHeader
	}
	le := binary.LittleEndian
	if sum := crc32.Checksum(b[:HeaderSize-4], crcTable); sum != le.Uint32(b[HeaderSize-4:]) {
		return h, fmt.Errorf("header checksum mismatch: %w", ErrCorrupt)
	}
	h.Version = le.Uint32(b[8:])
	if h.Version != HeaderVersion {
		return h, fmt.Errorf("header version %d, this ddraid reads %d: %w", h.Version, HeaderVersion, ErrCorrupt)
	}
	h.Role = int32(le.Uint32(b[12:]))
	copy(h.ArrayUUID[:], b[16:32])
	copy(h.MemberUUID[:], b[32:48])
	h.Members = le.Uint32(b[48:])
	h.BlockSize = le.Uint32(b[52:])
	h.DataOffset = le.Uint64(b[56:])
	h.DataSize = le.Uint64(b[64:])
	h.Events = le.Uint64(b[72:])
	h.Level = cstring(b[80:96])
	h.ArrayName = cstring(b[96:160])
	return h, nil
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// ReadHeader reads and parses the header of dev.
func ReadHeader(dev blockdev.Device) (Header, error) {
	if dev.Size() < HeaderSize {
		return Header{}, fmt.Errorf("device of %d bytes: %w", dev.Size(), ErrNoHeader)
	}
	b := make([]byte, HeaderSize)
	if _, err := dev.ReadAt(b, 0); err != nil {
		return Header{}, fmt.Errorf("read header: %w", err)
	}
	return ParseHeader(b)
}

// WriteHeader writes h at the start of dev and flushes it.
func WriteHeader(dev blockdev.Device, h *Header) error {
	b, err := h.Marshal()
	if err != nil {
		return err
	}
	if _, err := dev.WriteAt(b, 0); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	if err := dev.Flush(); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	return nil
}
