// Package nbd serves blockdev.Device exports over the Network Block Device
// protocol and provides a small client for it. Both are written from the
// protocol specification (doc/proto.md in the NetworkBlockDevice/nbd
// repository), which is the authority wherever this comment is silent.
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
//     NBD_INFO_BLOCK_SIZE always, with minimum = Device.BlockSize() rounded
//     down to a power of two within [1, 64 KiB], preferred = max(minimum,
//     4096), maximum = Config.MaxPayload rounded down to a multiple of the
//     minimum. The replies depend only on the request, so INFO and a
//     following GO agree. Unknown export → NBD_REP_ERR_UNKNOWN; the empty
//     name selects the only export when exactly one exists.
//   - NBD_OPT_LIST: one NBD_REP_SERVER per export (name, then description),
//     sorted by name, then NBD_REP_ACK.
//   - NBD_OPT_ABORT: NBD_REP_ACK, then close.
//   - Anything else, including STARTTLS, STRUCTURED_REPLY and the metadata
//     context options: NBD_REP_ERR_UNSUP; negotiation continues.
//   - Option payloads above 64 KiB are skipped without being stored and
//     answered with NBD_REP_ERR_TOO_BIG. The whole option phase is bounded
//     by Config.HandshakeTimeout. During Shutdown options get
//     NBD_REP_ERR_SHUTDOWN.
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
// SEND_WRITE_ZEROES, SEND_CACHE, CAN_MULTI_CONN, plus READ_ONLY for
// read-only exports. SEND_DF and SEND_FAST_ZERO are not advertised. Only
// simple replies are sent.
//
// Commands and their errors:
//   - READ, WRITE (FUA: Device.Flush before the reply), FLUSH, TRIM (FUA
//     honoured), WRITE_ZEROES (FUA honoured, NO_HOLE accepted), CACHE (range
//     check only), DISC (in-flight requests finish, then the connection
//     closes).
//   - FUA is accepted on every command, as the spec requires once SEND_FUA
//     is advertised. Any other flag a command does not define is EINVAL,
//     including FAST_ZERO: the spec says a server that does not advertise
//     SEND_FAST_ZERO SHOULD fail it with EINVAL, not ENOTSUP.
//   - Unknown commands (BLOCK_STATUS among them) are EINVAL.
//   - Zero-length requests succeed without touching the device.
//   - Past the end of the export: EINVAL for READ, TRIM and CACHE, ENOSPC
//     for WRITE and WRITE_ZEROES, as the spec recommends.
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
// # Concurrency model
//
// Each connection has one reader goroutine. It runs the handshake, then
// reads request headers and WRITE payloads (into buffers pooled by
// power-of-two size class) and hands each request to a worker goroutine.
// Workers are started on demand up to Config.MaxInFlight and reused; when
// MaxInFlight requests are in flight the reader stops reading, which pushes
// back on the client. Workers call the export's Device directly and
// concurrently, so replies go out in completion order, not request order.
//
// Replies are queued under a per-connection mutex; the worker that finds
// no write under way becomes the writer and sends everything queued in one
// writev (net.Buffers), each reply's header next to its payload, until the
// queue is empty, while the other workers return to serving requests.
// Replies that complete together therefore share a syscall. Request
// records and payload buffers are recycled once their reply is written, so
// the steady state does not allocate per request. The payload buffers a
// connection holds at once are bounded by max(2 × MaxPayload, 64 MiB);
// beyond that the reader and READ workers wait for replies to drain, so a
// client cannot pin MaxInFlight × MaxPayload bytes.
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
//     holds.
//
// Logging goes to Config.Logger: connection open and close at Debug,
// refused requests at Debug, protocol violations at Info or Warn, device
// errors at Warn, all with the remote address.
//
// # Client
//
// Client is a blockdev.Device backed by one export on one connection. Its
// methods may be called concurrently; requests are pipelined (concurrent
// callers' requests are combined into one writev the same way) and matched
// to replies by cookie by one reader goroutine. Range checks happen locally (blockdev.ErrOutOfRange)
// before anything is sent; long reads and writes are split at the
// negotiated maximum payload; server errors come back as Errno values,
// wrapped with context. Client.Do sends a single request as given, for
// tests and tools. The client does not reconnect.
package nbd
