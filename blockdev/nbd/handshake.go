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
	// structured is set when NBD_OPT_STRUCTURED_REPLY was acknowledged.
	structured bool
	// blockStatus is set when the last NBD_OPT_SET_META_CONTEXT selected
	// base:allocation for the export that was then chosen.
	blockStatus bool
	// tflags are the transmission flags the client was sent.
	tflags uint16
	// session is the writer session admitted for the export (member
	// exports only), or nil.
	session Session
	// dirty is the slot of the selected ddraid:dirty/SLOT context, or -1.
	dirty int64
}

// handshake runs the server side of the fixed newstyle option phase over a
// buffered reader and writer. It holds no goroutines and touches no socket
// state (the TLS upgrade is a callback), so it can be fed arbitrary bytes.
type handshake struct {
	s        *Server
	r        *bufio.Reader
	w        *bufio.Writer
	fixed    bool // client set NBD_FLAG_C_FIXED_NEWSTYLE
	noZeroes bool // client set NBD_FLAG_C_NO_ZEROES
	shutting func() bool
	// startTLS upgrades the connection to TLS once the ACK to
	// NBD_OPT_STARTTLS has been flushed and returns the new reader and
	// writer. nil means the upgrade fails.
	startTLS func() (*bufio.Reader, *bufio.Writer, error)

	tls        bool    // TLS is running
	structured bool    // NBD_OPT_STRUCTURED_REPLY acknowledged
	meta       *export // export base:allocation was last selected for, or nil
	// dirtyExp is the export a ddraid:dirty/SLOT context was last
	// selected for (slot dirtySlot), or nil.
	dirtyExp  *export
	dirtySlot uint32
	// session is the writer session admitted by NBD_OPT_DDRAID_WRITER
	// for sessionExp; dropSession closes it.
	session    Session
	sessionExp *export
	scratch    [optReplyHeaderLen]byte
}

// dropSession closes the admitted writer session, if any.
func (h *handshake) dropSession() {
	if h.session != nil {
		h.session.Close()
		h.session, h.sessionExp = nil, nil
	}
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

// tlsMode is the server's TLS mode.
func (h *handshake) tlsMode() TLSMode { return h.s.cfg.TLSMode }

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
	if h.tlsMode() == TLSRequired && !h.tls && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return n, false, errors.New("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a server that requires TLS")
		}
		return n, false, h.reply(opt, repErrTLSReqd, "this server requires TLS: send NBD_OPT_STARTTLS first")
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
	case optStartTLS:
		return n, false, h.startTLSOption(length)
	case optInfo, optGo:
		return h.infoGo(opt, data)
	case optStructuredReply:
		if length != 0 {
			return n, false, h.reply(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		h.structured = true
		return n, false, h.reply(opt, repAck, "")
	case optListMetaContext, optSetMetaContext:
		return n, false, h.metaContext(opt, data)
	case OptWriter:
		return n, false, h.writerOption(data)
	default:
		return n, false, h.reply(opt, repErrUnsup, "option "+strconv.FormatUint(uint64(opt), 10)+" is not supported")
	}
}

// visible reports whether e may be used on this connection: TLS-only
// exports need TLS.
func (h *handshake) visible(e *export) bool { return !e.TLSOnly || h.tls }

// startTLSOption answers NBD_OPT_STARTTLS and upgrades the connection.
func (h *handshake) startTLSOption(length uint32) error {
	switch {
	case h.tlsMode() == TLSOff:
		return h.reply(optStartTLS, repErrPolicy, "TLS is not enabled on this server")
	case length != 0:
		return h.reply(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case h.tls:
		return h.reply(optStartTLS, repErrInvalid, "TLS is already running")
	}
	if err := h.reply(optStartTLS, repAck, ""); err != nil {
		return err
	}
	if h.startTLS == nil {
		return errors.New("TLS handshake: no TLS transport")
	}
	r, w, err := h.startTLS()
	if err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	// The spec: no negotiation state survives the upgrade.
	h.r, h.w, h.tls = r, w, true
	h.structured, h.meta, h.dirtyExp = false, nil, nil
	h.dropSession()
	return nil
}

// exportName answers NBD_OPT_EXPORT_NAME, which cannot report errors: an
// unknown export ends the connection.
func (h *handshake) exportName(name string) (negotiated, bool, error) {
	e := h.s.lookup(name)
	if e == nil {
		return negotiated{}, false, fmt.Errorf("NBD_OPT_EXPORT_NAME: unknown export %q", name)
	}
	if !h.visible(e) {
		return negotiated{}, false, fmt.Errorf("NBD_OPT_EXPORT_NAME: export %q needs TLS", name)
	}
	n := h.negotiated(e, false)
	if h.sessionExp == e {
		n.session, h.session, h.sessionExp = h.session, nil, nil
	} else {
		h.dropSession()
	}
	var b [10 + zeroPadLen]byte
	binary.BigEndian.PutUint64(b[0:], e.size)
	binary.BigEndian.PutUint16(b[8:], n.tflags)
	size := 10
	if !h.noZeroes {
		size += zeroPadLen
	}
	h.w.Write(b[:size])
	if err := h.w.Flush(); err != nil {
		if n.session != nil {
			n.session.Close()
		}
		return negotiated{}, false, fmt.Errorf("NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	return n, true, nil
}

// negotiated returns the outcome of choosing e now.
func (h *handshake) negotiated(e *export, strict bool) negotiated {
	n := negotiated{exp: e, strict: strict, structured: h.structured, tflags: e.tflags, dirty: -1}
	if h.structured {
		n.tflags |= FlagSendDF
		n.blockStatus = h.meta == e
		if h.dirtyExp == e {
			n.dirty = int64(h.dirtySlot)
		}
	}
	return n
}

// writerOption answers NBD_OPT_DDRAID_WRITER: the export must be a member
// export, which admits the writer (or refuses it as fenced).
func (h *handshake) writerOption(data []byte) error {
	name, w, err := parseWriter(data)
	if err != nil {
		return h.reply(OptWriter, repErrInvalid, "NBD_OPT_DDRAID_WRITER: "+err.Error())
	}
	e := h.s.lookup(name)
	switch {
	case e == nil:
		return h.reply(OptWriter, repErrUnknown, "unknown export "+strconv.Quote(name))
	case !h.visible(e):
		return h.reply(OptWriter, repErrTLSReqd, "export "+strconv.Quote(name)+" needs TLS")
	case e.Member == nil:
		return h.reply(OptWriter, repErrUnsup, "export "+strconv.Quote(name)+" is not a ddraid member export")
	}
	h.dropSession()
	sess, err := e.Member.Admit(w)
	switch {
	case errors.Is(err, ErrFenced):
		return h.reply(OptWriter, repErrPolicy, fencedMessage(err))
	case err != nil:
		return h.reply(OptWriter, repErrInvalid, err.Error())
	}
	h.session, h.sessionExp = sess, e
	return h.reply(OptWriter, repAck, "")
}

// list answers NBD_OPT_LIST: one NBD_REP_SERVER per export, then ACK.
// TLS-only exports are left out until TLS runs.
func (h *handshake) list() error {
	for _, e := range h.s.list() {
		if !h.visible(e) {
			continue
		}
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
	if !h.visible(e) {
		return negotiated{}, false, h.reply(opt, repErrTLSReqd, "export "+strconv.Quote(name)+" needs TLS")
	}
	n := h.negotiated(e, wantBS)

	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], e.size)
	binary.BigEndian.PutUint16(b[10:], n.tflags)
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
		if h.sessionExp == e {
			n.session, h.session, h.sessionExp = h.session, nil, nil
		} else {
			h.dropSession()
		}
		return n, true, nil
	}
	return negotiated{}, false, nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation; a query
// "base:" lists it (and selects nothing), other namespaces are ignored,
// and a query without a colon is invalid.
func (h *handshake) metaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		h.meta, h.dirtyExp = nil, nil // replaced even when the option fails
	}
	if !h.structured {
		return h.reply(opt, repErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY first")
	}
	name, rest, ok := cutString(data)
	if !ok || len(rest) < 4 {
		return h.reply(opt, repErrInvalid, "malformed export name or query count")
	}
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	base, all := false, count == 0 && !set
	var dirty []uint32 // ddraid:dirty/SLOT contexts asked for
	for i := uint32(0); i < count; i++ {
		var q string
		q, rest, ok = cutString(rest)
		if !ok {
			return h.reply(opt, repErrInvalid, "query "+strconv.FormatUint(uint64(i), 10)+" runs past the option data")
		}
		ns, leaf, hasColon := cutNamespace(q)
		if !hasColon {
			return h.reply(opt, repErrInvalid, "query "+strconv.Quote(q)+" has no namespace")
		}
		if ns == "base" && (leaf == "allocation" || (!set && leaf == "")) {
			base = true
		}
		if slot, ok := parseDirtyContext(q); ok {
			dirty = append(dirty, slot)
		}
	}
	if len(rest) != 0 {
		return h.reply(opt, repErrInvalid, "option data continues after the last query")
	}
	e := h.s.lookup(name)
	if e == nil {
		return h.reply(opt, repErrUnknown, "unknown export "+strconv.Quote(name))
	}
	if !h.visible(e) {
		return h.reply(opt, repErrTLSReqd, "export "+strconv.Quote(name)+" needs TLS")
	}
	if set && e.Member != nil && len(dirty) > 1 {
		return h.reply(opt, repErrInvalid, "select at most one ddraid:dirty/SLOT context")
	}
	if base || all {
		id := uint32(0) // the spec reserves the ID in LIST replies
		if set {
			id = metaIDBaseAllocation
			h.meta = e
		}
		h.header(opt, repMetaContext, 4+len(metaBaseAllocation))
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], id)
		h.w.Write(b[:])
		h.w.WriteString(metaBaseAllocation)
	}
	if e.Member != nil && len(dirty) > 0 {
		for _, slot := range dirty {
			id := uint32(0)
			if set {
				id = metaIDDirty
				h.dirtyExp, h.dirtySlot = e, slot
			}
			name := MetaDirtyPrefix + strconv.FormatUint(uint64(slot), 10)
			h.header(opt, repMetaContext, 4+len(name))
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], id)
			h.w.Write(b[:])
			h.w.WriteString(name)
		}
	}
	return h.reply(opt, repAck, "")
}

// cutString splits a 32-bit length-prefixed string off the front of b; ok
// is false when it does not fit or is longer than the spec allows.
func cutString(b []byte) (s string, rest []byte, ok bool) {
	if len(b) < 4 {
		return "", b, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) || n > maxStringLen {
		return "", b, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}

// cutNamespace splits a metadata context query at its first colon.
func cutNamespace(q string) (ns, leaf string, ok bool) {
	for i := 0; i < len(q); i++ {
		if q[i] == ':' {
			return q[:i], q[i+1:], true
		}
	}
	return "", "", false
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
