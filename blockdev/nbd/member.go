package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ddraid/ddraid/blockdev"
)

// ddraid's private additions to the protocol, used between a writer (a
// ddraid that serves an array) and a member host (ddraid agent). They are
// numbered far from the standard values so that they never collide with
// a future extension; see docs/nbd.md section 13.
const (
	// OptWriter is NBD_OPT_DDRAID_WRITER: the client names the export and
	// identifies itself as a writer of an array (see Writer). It must come
	// before NBD_OPT_GO for the same export.
	OptWriter = 0x6464_0001
	// CmdClear is NBD_CMD_DDRAID_CLEAR: the writer asks the member host to
	// clear its write-intent marks of the regions inside [offset,
	// offset+length). No flags, no payload.
	CmdClear Command = 0x6464
	// MetaDirtyPrefix names the metadata contexts that report a slot's
	// marked regions through NBD_CMD_BLOCK_STATUS: "ddraid:dirty/SLOT",
	// SLOT in decimal. Flag bit 0 (StateDirty) set = marked.
	MetaDirtyPrefix = "ddraid:dirty/"
	// StateDirty is the extent flag of a marked region.
	StateDirty = 1 << 0
)

// Limits of Writer.RegionSize (when not 0). A region must fit in one
// CLEAR, whose length is 32 bits: the client sends ranges in pieces of at
// most 1 GiB, so larger regions could never be cleared.
const (
	MinMarkRegion = 64 << 10
	MaxMarkRegion = 1 << 30
)

// metaIDDirty is the context ID of the selected ddraid:dirty/SLOT.
const metaIDDirty = 2

// writerLen is the length of the fixed part of the NBD_OPT_DDRAID_WRITER
// payload after the export name.
const writerLen = 16 + 4 + 8 + 8 + 8

// ErrFenced reports a writer whose slot's epoch the member host has been
// told is stale: it must stop writing (and never treat this as a member
// failure). The server sends it as NBD_EPERM (transmission) or
// NBD_REP_ERR_POLICY (handshake) with a message starting with "fenced".
var ErrFenced = errors.New("fenced: the member host refuses this writer's epoch")

// Writer is the identity a writer sends in NBD_OPT_DDRAID_WRITER.
type Writer struct {
	// Array is the array's UUID.
	Array [16]byte
	// Slot is the writer's node slot (its bitmap slot).
	Slot uint32
	// Epoch is the writer's fencing epoch for Slot.
	Epoch uint64
	// RegionSize is how many member bytes one write-intent mark covers (a
	// power of two from MinMarkRegion to MaxMarkRegion), or 0 for no marks
	// (fencing only).
	RegionSize uint64
	// DataOffset is where the array's data starts on the member: mark
	// region i covers [DataOffset + i·RegionSize, DataOffset +
	// (i+1)·RegionSize). Writes below it (the member header) are not
	// marked.
	DataOffset uint64
}

// String describes w for messages.
func (w Writer) String() string {
	return fmt.Sprintf("array %x slot %d epoch %d", w.Array, w.Slot, w.Epoch)
}

// marshalWriter encodes the NBD_OPT_DDRAID_WRITER payload:
//
//	u32 name length, name, 16 bytes array UUID, u32 slot, u64 epoch,
//	u64 region size, u64 data offset (all big-endian)
func marshalWriter(export string, w Writer) []byte {
	b := make([]byte, 4+len(export)+writerLen)
	binary.BigEndian.PutUint32(b, uint32(len(export)))
	p := b[4+copy(b[4:], export):]
	copy(p, w.Array[:])
	binary.BigEndian.PutUint32(p[16:], w.Slot)
	binary.BigEndian.PutUint64(p[20:], w.Epoch)
	binary.BigEndian.PutUint64(p[28:], w.RegionSize)
	binary.BigEndian.PutUint64(p[36:], w.DataOffset)
	return b
}

// parseWriter decodes an NBD_OPT_DDRAID_WRITER payload.
func parseWriter(b []byte) (export string, w Writer, err error) {
	name, rest, ok := cutString(b)
	if !ok {
		return "", w, errors.New("malformed export name")
	}
	if len(rest) != writerLen {
		return "", w, fmt.Errorf("identity is %d bytes, want %d", len(rest), writerLen)
	}
	copy(w.Array[:], rest)
	w.Slot = binary.BigEndian.Uint32(rest[16:])
	w.Epoch = binary.BigEndian.Uint64(rest[20:])
	w.RegionSize = binary.BigEndian.Uint64(rest[28:])
	w.DataOffset = binary.BigEndian.Uint64(rest[36:])
	if w.RegionSize != 0 && (w.RegionSize < MinMarkRegion || w.RegionSize&(w.RegionSize-1) != 0 || w.RegionSize > MaxMarkRegion) {
		return "", w, fmt.Errorf("region size %d is not 0 or a power of two from 64 KiB to 1 GiB", w.RegionSize)
	}
	if w.DataOffset > 1<<62 {
		return "", w, fmt.Errorf("data offset %d is out of range", w.DataOffset)
	}
	return name, w, nil
}

// parseDirtyContext parses "ddraid:dirty/SLOT". ok is false for any other
// name; a name with the prefix but a bad slot is invalid.
func parseDirtyContext(name string) (slot uint32, ok bool) {
	s, found := strings.CutPrefix(name, MetaDirtyPrefix)
	if !found || s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

// Member is implemented by exports that take ddraid's private protocol
// (Export.Member): writer identity, marks before writes, clears, and the
// dirty query. The server calls it from many connections at once.
type Member interface {
	// Admit checks a writer's identity and returns its session, which
	// the connection keeps until it ends. An error wrapping ErrFenced is
	// sent as NBD_REP_ERR_POLICY with the message "fenced: …"; others as
	// NBD_REP_ERR_INVALID with the error text.
	Admit(w Writer) (Session, error)
	// Dirty appends to dst the marks of slot inside [off, off+length) as
	// extents covering the whole range in order (Flags StateDirty for a
	// marked region, 0 otherwise).
	Dirty(slot uint32, off, length int64, dst []blockdev.Extent) ([]blockdev.Extent, error)
}

// Session is one writer's connection to a member export.
type Session interface {
	// StartWrite is called before a WRITE, WRITE_ZEROES or TRIM of
	// [off, off+length) is applied; it returns once the regions touched
	// are durably marked. The server calls end when the command is done.
	// An error wrapping ErrFenced refuses the command with NBD_EPERM.
	StartWrite(off, length int64) (end func(), err error)
	// Clear clears the marks of the regions inside [off, off+length).
	Clear(off, length int64) error
	// Close ends the session (the connection closed).
	Close()
}

// fencedMessage is the error message sent for a fenced writer.
func fencedMessage(err error) string {
	msg := err.Error()
	if !strings.HasPrefix(msg, "fenced") {
		msg = "fenced: " + msg
	}
	return msg
}

// errFencedWrite is what a client with writer identity returns for a
// write-type command the member host refused with EPERM.
var errFencedWrite = fmt.Errorf("%w (%w)", ErrFenced, EPERM)

// fenceable reports whether a member host refuses t from a fenced writer
// (with EPERM): the commands that change data, and CLEAR.
func fenceable(t Command) bool {
	return t == CmdWrite || t == CmdWriteZeroes || t == CmdTrim || t == CmdClear
}
