// Package meta holds ddraid's persistent description of arrays: the small
// header at the start of every member, and the array superblocks kept in a
// pebble database in the state directory.
//
// # Member header
//
// The first HeaderSize bytes of a member hold a Header: magic, format
// version, array and member UUIDs, the member's role, the array geometry and
// the event counter at the time it was written, closed by a CRC-32C. A member's
// data area starts at DataOffset. The header lets assembly recognise a wrong
// disk (another array's member, a stale member, a file that is not a member).
//
// # Superblocks
//
// The Store keeps one Array record per array under the key "array/NAME":
// a CRC-32C followed by the JSON encoding. Every change to an array bumps its
// event counter (Array.Events). A record that fails its checksum, does not
// decode, or does not validate is reported with ErrCorrupt, never guessed at.
//
// The pebble directory is locked by the process that opens it. Commands open
// the store only for as long as they need it (see Update and View), so a
// running server and a status command can share one state directory.
package meta
