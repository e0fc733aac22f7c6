package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Outcomes of the option phase that end the connection without an error
// worth more than a Debug line.
var (
	errAbort         = errors.New("client sent NBD_OPT_ABORT")
	errShuttingDown  = errors.New("server is shutting down")
	errClientGoneOpt = errors.New("client closed the connection during the handshake")
)

// negotiated is the result of a successful option phase.
type negotiated struct {
	exp *export
	// strict is set when the client asked for NBD_INFO_BLOCK_SIZE in
	// NBD_OPT_GO: it promised to honour the block size constraints, so
	// misaligned requests are refused with EINVAL.
	strict bool
}

// handshake runs the server side of the fixed newstyle option phase over a
// buffered reader and writer. It holds no goroutines and touches no socket
// state, so it can be fed arbitrary bytes.
type handshake struct {
	s        *Server
	r        *bufio.Reader
	w        *bufio.Writer
	fixed    bool // client set NBD_FLAG_C_FIXED_NEWSTYLE
	noZeroes bool // client set NBD_FLAG_C_NO_ZEROES
	shutting func() bool
	scratch  [optReplyHeaderLen]byte
}

// run performs the handshake until the client enters transmission (nil
// error), aborts (errAbort) or violates the protocol (another error).
func (h *handshake) run() (negotiated, error) {
	var b [18]byte
	binary.BigEndian.PutUint64(b[0:], magicInit)
	binary.BigEndian.PutUint64(b[8:], magicOpt)
	binary.BigEndian.PutUint16(b[16:], flagFixedNewstyle|flagNoZeroes)
	h.w.Write(b[:])
	if err := h.w.Flush(); err != nil {
		return negotiated{}, fmt.Errorf("sending greeting: %w", err)
	}
	if _, err := io.ReadFull(h.r, b[:4]); err != nil {
		return negotiated{}, readErr("reading client flags", err)
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if cflags&^knownClientFlags != 0 {
		return negotiated{}, fmt.Errorf("unknown client flags %#x", cflags)
	}
	h.fixed = cflags&flagCFixedNewstyle != 0
	h.noZeroes = cflags&flagCNoZeroes != 0

	for {
		n, done, err := h.option()
		if err != nil || done {
			return n, err
		}
	}
}

// readErr wraps a read error, turning a clean EOF into errClientGoneOpt.
func readErr(what string, err error) error {
	if errors.Is(err, io.EOF) {
		return errClientGoneOpt
	}
	return fmt.Errorf("%s: %w", what, err)
}

// option reads and answers one option. done reports that the option phase
// is over (transmission begins).
func (h *handshake) option() (n negotiated, done bool, err error) {
	var hdr [optHeaderLen]byte
	if _, err := io.ReadFull(h.r, hdr[:]); err != nil {
		return n, false, readErr("reading option header", err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
		return n, false, fmt.Errorf("bad option magic %#x", m)
	}
	opt := binary.BigEndian.Uint32(hdr[8:])
	length := binary.BigEndian.Uint32(hdr[12:])

	if !h.fixed && opt != optExportName {
		// Plain newstyle knows only EXPORT_NAME; replies would confuse it.
		return n, false, fmt.Errorf("option %d from a client without NBD_FLAG_C_FIXED_NEWSTYLE", opt)
	}
	if opt == optExportName && length > maxStringLen {
		return n, false, fmt.Errorf("NBD_OPT_EXPORT_NAME with a %d-byte name", length)
	}
	if length > maxOptionPayload {
		if _, err := io.CopyN(io.Discard, h.r, int64(length)); err != nil {
			return n, false, readErr("skipping oversized option", err)
		}
		return n, false, h.reply(opt, repErrTooBig, "option payload of "+strconv.FormatUint(uint64(length), 10)+" bytes is too big")
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(h.r, data); err != nil {
		return n, false, readErr("reading option payload", err)
	}

	if h.shutting() && opt != optAbort {
		if opt == optExportName {
			return n, false, errShuttingDown
		}
		return n, false, h.reply(opt, repErrShutdown, "server is shutting down")
	}

	switch opt {
	case optExportName:
		return h.exportName(string(data))
	case optAbort:
		// The client may already have closed; a failed ACK does not matter.
		h.reply(opt, repAck, "")
		return n, false, errAbort
	case optList:
		if length != 0 {
			return n, false, h.reply(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		return n, false, h.list()
	case optInfo, optGo:
		return h.infoGo(opt, data)
	default:
		return n, false, h.reply(opt, repErrUnsup, "option "+strconv.FormatUint(uint64(opt), 10)+" is not supported")
	}
}

// exportName answers NBD_OPT_EXPORT_NAME, which cannot report errors: an
// unknown export ends the connection.
func (h *handshake) exportName(name string) (negotiated, bool, error) {
	e := h.s.lookup(name)
	if e == nil {
		return negotiated{}, false, fmt.Errorf("NBD_OPT_EXPORT_NAME: unknown export %q", name)
	}
	var b [10 + zeroPadLen]byte
	binary.BigEndian.PutUint64(b[0:], e.size)
	binary.BigEndian.PutUint16(b[8:], e.tflags)
	n := 10
	if !h.noZeroes {
		n += zeroPadLen
	}
	h.w.Write(b[:n])
	if err := h.w.Flush(); err != nil {
		return negotiated{}, false, fmt.Errorf("NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	return negotiated{exp: e}, true, nil
}

// list answers NBD_OPT_LIST: one NBD_REP_SERVER per export, then ACK.
func (h *handshake) list() error {
	for _, e := range h.s.list() {
		h.header(optList, repServer, 4+len(e.Name)+len(e.Description))
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(e.Name)))
		h.w.Write(l[:])
		h.w.WriteString(e.Name)
		h.w.WriteString(e.Description)
	}
	return h.reply(optList, repAck, "")
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO. Both send the same replies;
// GO then enters transmission.
func (h *handshake) infoGo(opt uint32, data []byte) (negotiated, bool, error) {
	if len(data) < 6 {
		return negotiated{}, false, h.reply(opt, repErrInvalid, "option data shorter than 6 bytes")
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return negotiated{}, false, h.reply(opt, repErrInvalid, "export name longer than the option data")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return negotiated{}, false, h.reply(opt, repErrInvalid, "information request count does not match the option length")
	}
	if len(name) > maxStringLen {
		return negotiated{}, false, h.reply(opt, repErrInvalid, "export name longer than 4096 bytes")
	}
	var wantName, wantDesc, wantBS bool
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		case infoBlockSize:
			wantBS = true
		}
	}
	e := h.s.lookup(name)
	if e == nil {
		return negotiated{}, false, h.reply(opt, repErrUnknown, "unknown export "+strconv.Quote(name))
	}

	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], e.size)
	binary.BigEndian.PutUint16(b[10:], e.tflags)
	h.header(opt, repInfo, 12)
	h.w.Write(b[:12])
	if wantName {
		h.infoString(opt, infoName, e.Name)
	}
	if wantDesc && e.Description != "" {
		h.infoString(opt, infoDescription, e.Description)
	}
	// Block sizes are always sent: the spec allows unrequested information,
	// and clients that did not ask learn our preferences without being
	// bound by them.
	binary.BigEndian.PutUint16(b[0:], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:], e.minBS)
	binary.BigEndian.PutUint32(b[6:], e.prefBS)
	binary.BigEndian.PutUint32(b[10:], e.maxBS)
	h.header(opt, repInfo, 14)
	h.w.Write(b[:14])
	if err := h.reply(opt, repAck, ""); err != nil {
		return negotiated{}, false, err
	}
	if opt == optGo {
		return negotiated{exp: e, strict: wantBS}, true, nil
	}
	return negotiated{}, false, nil
}

func (h *handshake) infoString(opt uint32, typ uint16, s string) {
	h.header(opt, repInfo, 2+len(s))
	var t [2]byte
	binary.BigEndian.PutUint16(t[:], typ)
	h.w.Write(t[:])
	h.w.WriteString(s)
}

// header buffers an option reply header announcing length bytes of data.
func (h *handshake) header(opt, typ uint32, length int) {
	b := &h.scratch
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(length))
	h.w.Write(b[:])
}

// reply sends an option reply carrying msg (error replies carry a message
// for humans; ACK carries none) and flushes everything buffered.
func (h *handshake) reply(opt, typ uint32, msg string) error {
	h.header(opt, typ, len(msg))
	h.w.WriteString(msg)
	if err := h.w.Flush(); err != nil {
		return fmt.Errorf("sending reply to option %d: %w", opt, err)
	}
	return nil
}
