// Package remote opens an export of any NBD server (nbdkit, qemu-nbd,
// another ddraid) as a blockdev.Device that survives short connection
// losses. ddraid uses it for array members given as URIs:
//
//	nbd://HOST[:PORT]/EXPORT             TCP, port 10809 by default
//	nbd+unix:///EXPORT?socket=/PATH      unix socket (absolute path)
//
// The export is just a disk: ddraid writes its member header at offset 0
// like on any member, so the wrong-disk checks apply unchanged. With
// Config.TLS every connection is upgraded with NBD_OPT_STARTTLS (mutual
// TLS when it carries a client certificate); nbds:// and nbds+unix://
// need it.
//
// # Writer identity and fencing
//
// Members hosted by a ddraid agent (raid's HOST:/PATH members) set
// Config.Writer: every connection, the first and each reconnect, sends it
// with NBD_OPT_DDRAID_WRITER, so the agent marks regions for the writer's
// slot and can fence it. A fenced writer gets ErrFenced: at Open, as the
// answer to a write-type request (reads still work), or when a reconnect
// is refused, which fails the Device at once with ErrFenced instead of
// retrying until FailAfter (ErrUnreachable would fail the member; a fence
// must never do that). Clear forwards the array's bitmap clears.
//
// # Requests
//
// A Device has one connection (a pipelined nbd.Client): every method may
// be called from many goroutines and their requests are in flight together.
// Range checks are local (blockdev.ErrOutOfRange). An error the server
// returns (EIO, ENOSPC, EPERM, …) is an answer and is returned at once,
// wrapped; the raid engine then fails the member as for any IO error.
// Extenter and FastZeroer are left out: the client negotiates
// neither block status nor fast zero.
//
// The client asks for the server's block sizes (nbd.ClientOptions
// BlockSizes), so MinBlockSize reports the minimum even of servers that
// send it only when asked, and the raid engine can refuse a member that
// would refuse its requests. Requests need not be aligned to it: the
// client reads whole blocks and read-modify-writes partial ones, at the
// cost of extra round trips.
//
// # Reconnecting
//
// When the connection fails (a reset or closed socket, a protocol error, an
// ESHUTDOWN answer, or no reply for Config.IOTimeout while requests are
// outstanding), the Device closes it and reconnects in the background: the
// first attempt at once, then after ReconnectMin, doubling up to
// ReconnectMax. Requests that had not been answered, and requests made
// meanwhile, wait and are sent again on the new connection; their callers
// see no error. Reads and writes are idempotent (the same bytes at the same
// offset), so sending one twice is harmless.
//
// If no attempt succeeds within Config.FailAfter (default 10 s) of the
// loss, the Device fails for good: every waiting and every later request
// returns an error wrapping ErrUnreachable. A single attempt is bounded by
// DialTimeout, so the last one ends at most that long after the deadline.
// A reconnect that finds an export of another size, or one Config.Verify
// refuses (raid checks that the member header still names the same array,
// member and role), fails the Device with ErrReplaced instead: it never
// writes to a disk it does not recognise.
//
// # Flush after a reconnect: acknowledged writes are replayed
//
// A server that advertises NBD_FLAG_SEND_FLUSH has a write cache: a write
// it acknowledged is durable only after a later FLUSH succeeds. If the
// connection is lost between the two, the server may have lost the write
// (nbdkit killed before its cache reached the disk, a host that rebooted),
// and a FLUSH on the new connection would claim durability for data that
// is gone. The Device therefore keeps a copy of every write and Zero it has
// acknowledged since the last successful Flush, in acknowledgement order
// (the replay log), and after every reconnect it sends them all again —
// after Verify and before any retried or new request — in that order where
// they overlap. Only then is the new connection used, so a Flush that
// succeeds on it covers every write that returned before the Flush was
// called, whichever connection first carried it. A Flush drops the entries
// it covered. Trims are not replayed: a lost trim leaves the old contents,
// which Trim allows.
//
// The log is bounded by Config.ReplayBudget (default 32 MiB): a write that
// takes it over the budget waits for a flush, which the Device starts
// itself, so a caller that never flushes costs a FLUSH per budget's worth
// of writes. A write acknowledged on a connection that was lost before the
// acknowledgement could be logged is sent again rather than logged. A
// server without SEND_FLUSH promises that acknowledged writes are durable,
// so nothing is logged for it. If a replayed write fails with an error
// answer the Device fails with that error; if the member stays unreachable
// the log is dropped with the Device, and the array's bitmap and
// resync/recovery take over, as for any failed member.
//
// Failing the Flush instead (and so the member) would also be safe, but
// would turn every short outage under write load into a rebuild; replaying
// keeps a brief disconnect invisible, which is what the reconnect is for.
//
// One hazard remains, shared with every NBD client that reconnects: a
// request the old connection had already delivered may still be executed
// by the server after the connection was lost. It writes the same bytes as
// its retry, so it can only do harm by landing after a later write to the
// same range, which the caller can only issue once the retry has been
// answered on a new connection — after a dial, a handshake and the replay.
//
// # Concurrency and lifetime
//
// All methods are safe for concurrent use; ReadAt and WriteAt do not
// retain their buffers (the replay log holds copies). Close flushes
// unflushed writes when the connection is up, ends the session with
// NBD_CMD_DISC, stops reconnecting and fails waiting requests with
// blockdev.ErrClosed. Open, the reconnect loop and the IO timeout take
// their time from the time package, so tests drive them with
// testing/synctest; the backoff and timeout arithmetic are pure functions
// (backoff, nextAttempt, stalled).
package remote
