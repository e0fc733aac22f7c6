package coord

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/meta"
)

// Message types of the coordination layer (cluster.Message.Type). See
// docs/cluster-design.md.
const (
	// TypeMetadataUpdated carries a new superblock (EncodeSuperblock); the
	// receiver stores it and acknowledges with an empty reply.
	TypeMetadataUpdated = "metadata-updated"
	// TypeResyncing carries a resync window (EncodeWindow); the receiver
	// installs it and answers once its own writes cannot touch it.
	TypeResyncing = "resyncing"
	// TypeNewDisk carries a member spec; the receiver answers once it has
	// opened it, or with an error.
	TypeNewDisk = "newdisk"
	// TypeWindows asks a node for the resync windows it has announced; the
	// reply is EncodeWindows of them (a joining writer learns the windows
	// announced before it listened).
	TypeWindows = "resync-windows"
)

// ErrBadBody reports a message body that does not decode.
var ErrBadBody = errors.New("coord: bad message body")

// windowBodySize is the size of a TypeResyncing body.
const windowBodySize = 4 + 8 + 8 + 8

// EncodeWindow encodes a window's slot and range (the owner is the sender).
func EncodeWindow(w Window) []byte {
	b := make([]byte, windowBodySize)
	binary.LittleEndian.PutUint32(b, w.Slot)
	binary.LittleEndian.PutUint64(b[4:], uint64(w.Lo))
	binary.LittleEndian.PutUint64(b[12:], uint64(w.Hi))
	binary.LittleEndian.PutUint64(b[20:], w.Seq)
	return b
}

// DecodeWindow decodes a TypeResyncing body sent by owner.
func DecodeWindow(owner lockd.NodeID, b []byte) (Window, error) {
	if len(b) != windowBodySize {
		return Window{}, fmt.Errorf("%w: resync window of %d bytes, want %d", ErrBadBody, len(b), windowBodySize)
	}
	w := Window{Slot: binary.LittleEndian.Uint32(b), Lo: int64(binary.LittleEndian.Uint64(b[4:])), Hi: int64(binary.LittleEndian.Uint64(b[12:])),
		Seq: binary.LittleEndian.Uint64(b[20:])}
	if w.Lo < 0 || w.Hi < 0 {
		return Window{}, fmt.Errorf("%w: resync window [%d, %d) has a negative bound", ErrBadBody, w.Lo, w.Hi)
	}
	w.Owner = owner
	return w, nil
}

// maxSuperblock bounds a TypeMetadataUpdated body.
const maxSuperblock = 1 << 20

// EncodeSuperblock encodes a superblock for TypeMetadataUpdated.
func EncodeSuperblock(sb *meta.Array) ([]byte, error) {
	if err := sb.Validate(); err != nil {
		return nil, fmt.Errorf("encode superblock of %s: %w", sb.Name, err)
	}
	b, err := json.Marshal(sb)
	if err != nil {
		return nil, fmt.Errorf("encode superblock of %s: %w", sb.Name, err)
	}
	return b, nil
}

// DecodeSuperblock decodes and validates a TypeMetadataUpdated body.
func DecodeSuperblock(b []byte) (*meta.Array, error) {
	if len(b) > maxSuperblock {
		return nil, fmt.Errorf("%w: superblock of %d bytes", ErrBadBody, len(b))
	}
	var sb meta.Array
	if err := json.Unmarshal(b, &sb); err != nil {
		return nil, fmt.Errorf("%w: superblock: %v", ErrBadBody, err)
	}
	if err := sb.Validate(); err != nil {
		return nil, fmt.Errorf("%w: superblock: %v", ErrBadBody, err)
	}
	return &sb, nil
}

// maxSpec bounds a TypeNewDisk body.
const maxSpec = 4096

// DecodeSpec checks a TypeNewDisk body: a non-empty UTF-8 member spec
// without control characters.
func DecodeSpec(b []byte) (string, error) {
	if len(b) == 0 || len(b) > maxSpec || !utf8.Valid(b) {
		return "", fmt.Errorf("%w: member spec of %d bytes", ErrBadBody, len(b))
	}
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("%w: member spec %q has a control character", ErrBadBody, b)
		}
	}
	return string(b), nil
}

// EncodeWindows encodes a list of windows (the owner is the sender).
func EncodeWindows(ws []Window) []byte {
	b := make([]byte, 0, len(ws)*windowBodySize)
	for _, w := range ws {
		b = append(b, EncodeWindow(w)...)
	}
	return b
}

// DecodeWindows decodes a TypeWindows reply sent by owner.
func DecodeWindows(owner lockd.NodeID, b []byte) ([]Window, error) {
	if len(b)%windowBodySize != 0 {
		return nil, fmt.Errorf("%w: window list of %d bytes", ErrBadBody, len(b))
	}
	var out []Window
	for len(b) > 0 {
		w, err := DecodeWindow(owner, b[:windowBodySize])
		if err != nil {
			return nil, err
		}
		out = append(out, w)
		b = b[windowBodySize:]
	}
	return out, nil
}
