package nbd

import (
	"encoding/binary"
	"errors"
	"strconv"
	"syscall"

	"github.com/ddraid/ddraid/blockdev"
)

// Magic numbers of the fixed newstyle protocol.
const (
	magicInit         = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt          = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply     = 0x0003e889045565a9
	magicRequest      = 0x25609513
	magicSimpleReply  = 0x67446698
	magicStructReply  = 0x668e33ef
	requestHeaderLen  = 28
	replyHeaderLen    = 16
	chunkHeaderLen    = 20 // structured reply chunk header
	optReplyHeaderLen = 20
	optHeaderLen      = 16
	zeroPadLen        = 124
)

// Handshake flags (server → client) and client flags (client → server).
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
	knownClientFlags   = flagCFixedNewstyle | flagCNoZeroes
)

// Transmission flags, sent with the export size.
const (
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagRotational      = 1 << 4
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagSendDF          = 1 << 7
	FlagCanMultiConn    = 1 << 8
	FlagSendResize      = 1 << 9
	FlagSendCache       = 1 << 10
	FlagSendFastZero    = 1 << 11
)

// Option types of the handshake phase.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optPeekExport      = 4
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck           = 1
	repServer        = 2
	repInfo          = 3
	repMetaContext   = 4
	repFlagError     = 1 << 31
	repErrUnsup      = repFlagError | 1
	repErrPolicy     = repFlagError | 2
	repErrInvalid    = repFlagError | 3
	repErrTLSReqd    = repFlagError | 5
	repErrUnknown    = repFlagError | 6
	repErrShutdown   = repFlagError | 7
	repErrTooBig     = repFlagError | 9
	infoExport       = 0
	infoName         = 1
	infoDescription  = 2
	infoBlockSize    = 3
	maxStringLen     = 4096      // longest export name or description (spec)
	maxOptionPayload = 64 << 10  // longest option payload we read into memory
	minBlockSizeCap  = 64 << 10  // largest minimum block size the spec allows
	defaultPreferred = 4096      // preferred block size floor
	maxPayloadCap    = 1 << 30   // largest MaxPayload accepted by Config
	minPayloadFloor  = 64 << 10  // smallest MaxPayload accepted by Config
	clientMaxPayload = 32 << 20  // what a client sends per request at most
	interopBlockSize = 512       // block size a client assumes when none is advertised
	maxZeroChunk     = 1 << 30   // largest TRIM/WRITE_ZEROES the client sends at once
	zeroBufLen       = 256 << 10 // zero buffer for emulating WRITE_ZEROES
)

// Structured reply chunk types and flags.
const (
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 | 1
	replyTypeErrorOffset = 1<<15 | 2
)

// Metadata contexts. base:allocation is the only one; its ID is fixed.
const (
	metaBaseAllocation   = "base:allocation"
	metaBaseNamespace    = "base:"
	metaIDBaseAllocation = 1
	// Extent flags of base:allocation (equal to blockdev.ExtentFlags).
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// Command is the type field of a transmission request.
type Command uint16

// Commands of the transmission phase.
const (
	CmdRead        Command = 0
	CmdWrite       Command = 1
	CmdDisc        Command = 2
	CmdFlush       Command = 3
	CmdTrim        Command = 4
	CmdCache       Command = 5
	CmdWriteZeroes Command = 6
	CmdBlockStatus Command = 7
)

// String returns the protocol name of the command.
func (c Command) String() string {
	switch c {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	case CmdBlockStatus:
		return "BLOCK_STATUS"
	case CmdClear:
		return "DDRAID_CLEAR"
	}
	return "CMD(" + strconv.Itoa(int(c)) + ")"
}

// Command flags of a transmission request.
const (
	CmdFlagFUA      = 1 << 0
	CmdFlagNoHole   = 1 << 1
	CmdFlagDF       = 1 << 2
	CmdFlagReqOne   = 1 << 3
	CmdFlagFastZero = 1 << 4
)

// Errno is an error value of the NBD protocol, as carried in the error
// field of a reply. The values equal the Linux errno values of the same
// name.
type Errno uint32

// Error values defined by the protocol.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

// name returns the protocol name of e ("EIO"), or a number.
func (e Errno) name() string {
	switch e {
	case EPERM:
		return "EPERM"
	case EIO:
		return "EIO"
	case ENOMEM:
		return "ENOMEM"
	case EINVAL:
		return "EINVAL"
	case ENOSPC:
		return "ENOSPC"
	case EOVERFLOW:
		return "EOVERFLOW"
	case ENOTSUP:
		return "ENOTSUP"
	case ESHUTDOWN:
		return "ESHUTDOWN"
	}
	return "error " + strconv.FormatUint(uint64(e), 10)
}

// Error implements error.
func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: EPERM (operation not permitted)"
	case EIO:
		return "nbd: EIO (input/output error)"
	case ENOMEM:
		return "nbd: ENOMEM (cannot allocate memory)"
	case EINVAL:
		return "nbd: EINVAL (invalid argument)"
	case ENOSPC:
		return "nbd: ENOSPC (no space left on device)"
	case EOVERFLOW:
		return "nbd: EOVERFLOW (value too large)"
	case ENOTSUP:
		return "nbd: ENOTSUP (operation not supported)"
	case ESHUTDOWN:
		return "nbd: ESHUTDOWN (server is shutting down)"
	}
	return "nbd: error " + strconv.FormatUint(uint64(e), 10)
}

// Is lets errors.Is match an Errno against the equal syscall.Errno and
// EPERM against blockdev.ErrReadOnly.
func (e Errno) Is(target error) bool {
	var se syscall.Errno
	if errors.As(target, &se) {
		return uint32(se) == uint32(e)
	}
	return e == EPERM && target == blockdev.ErrReadOnly
}

// deviceErrno maps an error returned by a blockdev.Device to the protocol
// error sent to the client.
func deviceErrno(err error) Errno {
	switch {
	case errors.Is(err, blockdev.ErrOutOfRange):
		return EINVAL
	case errors.Is(err, blockdev.ErrReadOnly):
		return EPERM
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return ENOSPC
	}
	return EIO
}

// Request is the fixed part of a transmission-phase request as sent on the
// wire; a WRITE request is followed by Length bytes of payload.
type Request struct {
	Flags  uint16
	Type   Command
	Cookie uint64 // the "handle"; the server echoes it in the reply
	Offset uint64
	Length uint32
}

// encode writes the request header into b.
func (r *Request) encode(b *[requestHeaderLen]byte) {
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], r.Flags)
	binary.BigEndian.PutUint16(b[6:], uint16(r.Type))
	binary.BigEndian.PutUint64(b[8:], r.Cookie)
	binary.BigEndian.PutUint64(b[16:], r.Offset)
	binary.BigEndian.PutUint32(b[24:], r.Length)
}

// errBadRequestMagic reports a request header without the request magic;
// the stream cannot be resynchronised after it.
var errBadRequestMagic = errors.New("bad request magic")

// parseRequest decodes a request header.
func parseRequest(b *[requestHeaderLen]byte) (Request, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != magicRequest {
		return Request{}, errBadRequestMagic
	}
	return Request{
		Flags:  binary.BigEndian.Uint16(b[4:]),
		Type:   Command(binary.BigEndian.Uint16(b[6:])),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// putSimpleReply writes a simple reply header into b.
func putSimpleReply(b *[replyHeaderLen]byte, errno Errno, cookie uint64) {
	binary.BigEndian.PutUint32(b[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:], uint32(errno))
	binary.BigEndian.PutUint64(b[8:], cookie)
}
