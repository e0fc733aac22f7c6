// Package nbd serves blockdev.Device exports over the Network Block Device
// protocol and provides a small client for it. Both are written from the
// protocol specification (doc/proto.md in the NetworkBlockDevice/nbd
// repository), which is the authority wherever this comment is silent.
// docs/nbd.md in this repository describes the protocol subset, the error
// mapping and the limits for operators and client authors.
//
// # Protocol subset
//
// Handshake: fixed newstyle only, with handshake flags FIXED_NEWSTYLE and
// NO_ZEROES. Client flags C_FIXED_NEWSTYLE and C_NO_ZEROES are honoured; any
// other client flag closes the connection. A client without
// C_FIXED_NEWSTYLE may only send NBD_OPT_EXPORT_NAME.
//
// Options:
//   - NBD_OPT_EXPORT_NAME: enters transmission; an unknown export closes the
//     connection (the option cannot carry an error). The 124 zero bytes
//     follow unless the client set C_NO_ZEROES.
//   - NBD_OPT_INFO and NBD_OPT_GO: NBD_INFO_EXPORT always; NBD_INFO_NAME and
//     NBD_INFO_DESCRIPTION when requested (the description only when set);
//     NBD_INFO_BLOCK_SIZE always, with minimum = Export.MinBlockSize, or 1
//     on a member export (its writers send fragments of any size), or
//     Device.BlockSize() rounded down to a power of two within [1, 64 KiB],
//     preferred = max(minimum, 4096, device block size), maximum =
//     Config.MaxPayload rounded down to a multiple of the minimum. The
//     replies depend only on the request and the options negotiated before
//     it, so INFO and a following GO agree. Unknown export →
//     NBD_REP_ERR_UNKNOWN; the empty name selects the only export when
//     exactly one exists.
//   - NBD_OPT_LIST: one NBD_REP_SERVER per export (name, then description),
//     sorted by name, then NBD_REP_ACK. TLS-only exports are left out until
//     TLS runs.
//   - NBD_OPT_ABORT: NBD_REP_ACK, then close.
//   - NBD_OPT_STRUCTURED_REPLY: NBD_REP_ACK (again if repeated); data →
//     NBD_REP_ERR_INVALID. Transmission flags then include SEND_DF.
//   - NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: need structured
//     replies first (else NBD_REP_ERR_INVALID). The one context is
//     base:allocation, ID 1 when selected (0 in LIST replies, as the spec
//     asks). LIST with no query, or with "base:", lists it; SET selects it
//     only for the exact query "base:allocation"; other namespaces are
//     ignored; a query without a colon, a length past the data, or trailing
//     bytes are NBD_REP_ERR_INVALID. SET replaces the selection even when it
//     fails; the selection counts only for the export named in it.
//   - NBD_OPT_STARTTLS: see TLS below.
//   - Anything else: NBD_REP_ERR_UNSUP; negotiation continues.
//   - Option payloads above 64 KiB are skipped without being stored and
//     answered with NBD_REP_ERR_TOO_BIG. The whole option phase, TLS
//     handshake included, is bounded by Config.HandshakeTimeout. During
//     Shutdown options get NBD_REP_ERR_SHUTDOWN.
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
// SEND_WRITE_ZEROES, SEND_CACHE, CAN_MULTI_CONN and SEND_FAST_ZERO always;
// SEND_DF once structured replies are negotiated; READ_ONLY for read-only
// exports.
//
// Commands:
//   - READ. With structured replies the data goes out as chunks: the data
//     is checked in 64 KiB-aligned pieces (the check stops at the first
//     nonzero byte) and all-zero pieces are sent as NBD_REPLY_TYPE_OFFSET_HOLE,
//     the rest as NBD_REPLY_TYPE_OFFSET_DATA, the last chunk flagged DONE.
//     With DF one OFFSET_DATA chunk carries everything. A zero-length READ
//     gets a lone NBD_REPLY_TYPE_NONE.
//   - WRITE (FUA: Device.Flush before the reply), FLUSH, TRIM (FUA
//     honoured), CACHE (range check only), DISC (in-flight requests finish,
//     then the connection closes).
//   - WRITE_ZEROES (FUA honoured). Without flags: Device.Zero (which may
//     punch holes). NO_HOLE: blockdev.NoHoleZeroer when the device has one
//     (e.g. FALLOC_FL_ZERO_RANGE), otherwise zeroes are written with WriteAt
//     so the range stays allocated. FAST_ZERO: fails at once with ENOTSUP,
//     changing nothing, unless blockdev.FastZeroer says Device.Zero is fast
//     (or, with NO_HOLE, the device's NoHoleZeroer succeeds).
//   - BLOCK_STATUS for base:allocation (flags REQ_ONE and FUA accepted):
//     the device's blockdev.Extenter answer (flags 0, "data or unknown",
//     for devices without one or when it fails), at most 1 GiB and 4096
//     descriptors per reply, with boundaries moved onto multiples of the
//     minimum block size (a granule shared by several extents keeps only
//     the flags all of them have). REQ_ONE sends the first descriptor.
//   - Structured replies carry every error as NBD_REPLY_TYPE_ERROR with a
//     message for humans; successful commands without data get simple
//     replies, which the spec allows.
//
// Refusals and their errors:
//   - A flag a command does not define is EINVAL (DF on READ without
//     structured replies included); FUA is accepted everywhere, as the spec
//     requires once SEND_FUA is advertised.
//   - Unknown commands are EINVAL; BLOCK_STATUS without base:allocation
//     selected for this export is EINVAL, as is a zero-length one.
//   - Zero-length READ, WRITE, TRIM, WRITE_ZEROES and CACHE succeed without
//     touching the device.
//   - Past the end of the export: EINVAL for READ, TRIM, CACHE and
//     BLOCK_STATUS, ENOSPC for WRITE and WRITE_ZEROES, as the spec
//     recommends.
//   - WRITE, TRIM and WRITE_ZEROES on a read-only export: EPERM.
//   - FLUSH with a nonzero offset or length: EINVAL.
//   - A READ longer than the maximum payload is EINVAL; a WRITE longer than
//     it closes the connection, since its payload cannot be skipped safely.
//   - A client that requested NBD_INFO_BLOCK_SIZE in NBD_OPT_GO promised to
//     honour the block sizes, so its requests not aligned to the minimum
//     block size are EINVAL (a request may end at an unaligned export
//     end). Other clients may send any alignment; the Device handles it.
//   - Device errors map as errors.Is: blockdev.ErrOutOfRange → EINVAL,
//     blockdev.ErrReadOnly → EPERM, ENOSPC, EDQUOT, EFBIG → ENOSPC,
//     anything else → EIO.
//   - A request header without the request magic closes the connection.
//     Every per-request error leaves the connection usable.
//
// # TLS
//
// Config.TLSMode selects the spec's NOTLS (TLSOff: STARTTLS →
// NBD_REP_ERR_POLICY), SELECTIVETLS (TLSOptional: a client may upgrade;
// exports with Export.TLSOnly need it) or FORCEDTLS (TLSRequired: before
// the upgrade every option but STARTTLS and ABORT gets
// NBD_REP_ERR_TLS_REQD and EXPORT_NAME disconnects). STARTTLS with data,
// or after TLS started, is NBD_REP_ERR_INVALID; otherwise the server
// acknowledges, runs the crypto/tls handshake (TLS 1.2 at least; client
// certificates when Config.TLS asks for them, see LoadTLSConfig) and
// forgets the options negotiated before, as the spec requires. A failed
// TLS handshake closes the connection. Under TLS, replies are gathered in a
// 64 KiB buffer so that a batch goes out in few records.
//
// # Concurrency model
//
// Each connection has one reader goroutine. It runs the handshake, then
// reads request headers and WRITE payloads (into buffers pooled by
// power-of-two size class).
//
// While the export's recent requests ran at memory speed (on average
// within Config.InlineLatency, default 10 µs, plus 0.5 µs per KiB of data
// moved; one request in eight is timed), the reader runs each request
// itself, and while more requests wait in its read buffer it holds their
// replies back and sends the batch in one writev when the buffer runs dry
// (at most 64 replies or 256 KiB at once). This avoids a goroutine hand-off
// and a thread wake-up per request, which cost more than a request served
// from memory, and wakes the client once per batch. A watchdog goroutine
// (one per server, ticking every 5 ms while requests run inline)
// notices a request that has run inline for more than 10 ms, marks the
// export slow and starts a new reader, so a stalled device delays the
// requests behind it by some tens of milliseconds at most.
//
// Otherwise, and for every request of a slow export, the reader hands each
// request to a worker goroutine; workers are started on demand up to
// Config.MaxInFlight and reused, and when MaxInFlight requests are in
// flight the reader stops reading, which pushes back on the client. Workers
// call the export's Device directly and concurrently, so replies go out in
// completion order, not request order. A worker that finds no reply write
// under way becomes the writer and sends everything queued in one writev
// (net.Buffers), each reply's header next to its payload, until the queue
// is empty.
//
// Request records, their reply scratch space and payload buffers are
// recycled once the reply is written, so the steady state does not
// allocate per request (the Raw benchmarks show 0 allocs/op). Payload
// buffers are bounded per connection by max(2 × MaxPayload, 64 MiB) and
// for the whole server by Config.MaxPayloadMemory (default 1 GiB); beyond
// that the reader and READ executions wait for replies to drain. The reader
// sends held-back replies before anything that may wait.
//
// Every connection to an export shares its one Device; there is no
// per-connection cache, so FLUSH and FUA on one connection cover writes
// acknowledged on all of them, which is what CAN_MULTI_CONN promises. The
// Device must therefore be safe for concurrent use (blockdev.Device
// requires it). Writes to overlapping ranges in flight at the same time
// have no defined order, as in the protocol.
//
// A client that sends garbage or vanishes mid-request loses only its own
// connection. No input should panic; a panic is nonetheless recovered per
// connection, logged, and ends that connection only.
//
// # Server contracts
//
//   - NewServer validates Config and fills its defaults; it does not listen.
//   - AddExport may be called before or while serving; new connections see
//     the export at once. The server never closes an export's Device.
//   - Serve blocks accepting on one listener; several Serve calls may run
//     at once on different listeners. It returns nil once Shutdown closed
//     the listener.
//   - Shutdown closes the listeners, cuts connections still negotiating,
//     stops reading requests (a request whose header already arrived is
//     still read and served), waits until every request in flight has been
//     answered, closes the connections, then flushes every export's Device.
//     If ctx ends first, the remaining connections are closed at once and
//     ctx's error is returned.
//   - Listen("host:port") listens on TCP; Listen("unix:/path") on a unix
//     socket, replacing a stale socket file but refusing one a live server
//     holds. ActivationListeners returns the sockets of systemd socket
//     activation (LISTEN_PID, LISTEN_FDS, descriptors from 3).
//
// Logging goes to Config.Logger: connection open and close at Debug,
// device errors at Warn, all with the remote address. A misbehaving client
// (a failed handshake, a malformed or invalid request, a connection broken
// mid-request) is logged once at Warn; its later offences go to Debug.
// These Warn lines, and those for connections refused by MaxConnections,
// pass a server-wide token bucket (20 at once, 10 per second); the count
// of lines dropped is reported with the next one that passes.
//
// # Client
//
// Client is a blockdev.Device backed by one export on one connection. Its
// methods may be called concurrently; requests are pipelined (concurrent
// callers' requests are combined into one writev the same way) and matched
// to replies by cookie by one reader goroutine. It does not negotiate
// structured replies; with ClientOptions.TLS it upgrades with STARTTLS
// first (crypto/tls, TLS 1.2 or later), and with ClientOptions.Writer it
// identifies as a ddraid writer (see below). Range checks happen locally
// (blockdev.ErrOutOfRange) before anything is sent; long reads and writes
// are split at the negotiated maximum payload; server errors come back as
// Errno values, wrapped with context. Client.Do sends a single request as
// given, for tests and tools. The client does not reconnect.
//
// # Member exports (ddraid's private protocol)
//
// An Export with Member set is a disk served by `ddraid agent` to the
// writers of arrays. Three private additions, numbered far from the
// standard ones (member.go; docs/nbd.md section 13): the option
// NBD_OPT_DDRAID_WRITER (array UUID, node slot, epoch, mark geometry),
// after which Member.Admit gives the connection a Session; the command
// NBD_CMD_DDRAID_CLEAR; and the metadata contexts ddraid:dirty/SLOT for
// BLOCK_STATUS. On a member export every WRITE, WRITE_ZEROES and TRIM
// goes through Session.StartWrite first (the member host marks the
// regions durably, or refuses a fenced writer: EPERM with a message
// starting with "fenced"), and connections without identity may only
// read. A Client with ClientOptions.Writer turns EPERM on a write-type
// command into ErrFenced.
package nbd
