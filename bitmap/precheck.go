package bitmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

// This file checks a store directory before badger opens it. badger
// panics (in goroutines, where nobody can recover) on some damaged tables,
// silently drops what follows a damaged spot of its write-ahead log, and
// deletes tables a truncated manifest no longer names. The checks below
// turn those cases into ErrCorrupt instead.

// badger's on-disk constants this file depends on (badger v4 value.go,
// memtable.go, db.go).
const (
	walHeaderSize = 20 // key id (8) + base IV (12) at the start of .mem and .vlog files
	walBitTxn     = 1 << 6
	walBitFinTxn  = 1 << 7
	walMaxKeyLen  = 1 << 16
	// walZeroTail is how many bytes at the end of a write-ahead log that
	// badger did not truncate itself must be zero: badger creates the
	// file at twice the memtable size and starts a new one once half is
	// used, so a file that ends in data was cut short.
	walZeroTail = 64
	// keyRegistrySize is the size of an unencrypted key registry: a
	// 16-byte IV and the 12-byte sanity text.
	keyRegistrySize = 16 + 12
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// precheck validates the files in dir and reports whether dir holds no
// database yet.
func precheck(dir string, cfg StoreConfig) (fresh bool, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("bitmap store %s: %w", dir, err)
	}
	fresh = true
	hasManifest := false
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !badgerFile.MatchString(name) {
			return false, fmt.Errorf("bitmap store %s: unexpected file %q: %w", dir, name, ErrCorrupt)
		}
		if name != "LOCK" {
			fresh = false
		}
		path := filepath.Join(dir, name)
		switch {
		case name == "MANIFEST":
			hasManifest = true
		case name == badger.KeyRegistryFileName:
			data, err := os.ReadFile(path)
			if err != nil {
				return false, fmt.Errorf("bitmap store %s: %w", dir, err)
			}
			// An IV and the plain sanity text; no data keys, as the
			// store is never encrypted.
			if len(data) != keyRegistrySize || string(data[16:]) != "Hello Badger" {
				return false, fmt.Errorf("bitmap store %s: %s is not an unencrypted key registry (%d bytes): %w", dir, name, len(data), ErrCorrupt)
			}
		case strings.HasSuffix(name, ".vlog"):
			if err := checkLogHeader(path); err != nil {
				return false, fmt.Errorf("bitmap store %s: value log %s: %w", dir, name, err)
			}
		case strings.HasSuffix(name, ".mem"):
			data, err := os.ReadFile(path)
			if err != nil {
				return false, fmt.Errorf("bitmap store %s: %w", dir, err)
			}
			if err := checkWAL(data); err != nil {
				return false, fmt.Errorf("bitmap store %s: write-ahead log %s: %w", dir, name, err)
			}
		}
	}
	if fresh {
		return true, nil
	}
	if !hasManifest {
		return false, fmt.Errorf("bitmap store %s: MANIFEST is missing: %w", dir, ErrCorrupt)
	}
	if err := checkTables(dir, cfg); err != nil {
		return false, fmt.Errorf("bitmap store %s: %w", dir, err)
	}
	return false, nil
}

// checkTables reads the manifest and opens every table it names the way
// badger will, with checksums verified, recovering from badger's panics.
func checkTables(dir string, cfg StoreConfig) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("badger panicked reading the manifest: %s: %w", panicText(r), ErrCorrupt)
		}
	}()
	f, err := os.Open(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return err
	}
	defer f.Close()
	m, _, err := badger.ReplayManifestFile(f, storeMagic, badgerOptions(dir, cfg))
	if err != nil {
		return fmt.Errorf("MANIFEST: %w: %v", ErrCorrupt, err)
	}
	for id, tm := range m.Tables {
		if tm.KeyID != 0 || tm.Compression != options.None {
			return fmt.Errorf("table %d is encrypted or compressed, which this store never does: %w", id, ErrCorrupt)
		}
		if err := checkTable(table.NewFilename(id, dir)); err != nil {
			return err
		}
	}
	return nil
}

func checkTable(path string) (err error) {
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("table %s named by the MANIFEST is missing: %w", filepath.Base(path), ErrCorrupt)
		}
		return err
	}
	closed := false
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("table %s: badger panicked opening it: %s: %w", filepath.Base(path), panicText(r), ErrCorrupt)
		}
		if !closed {
			_ = mf.Close(-1)
		}
	}()
	t, err := table.OpenTable(mf, table.Options{ChkMode: options.OnTableRead, Compression: options.None, BlockSize: 4 << 10})
	if err != nil {
		// OpenTable closes the file on some errors and not on others;
		// closing twice only returns an error.
		return fmt.Errorf("table %s: %w: %v", filepath.Base(path), ErrCorrupt, err)
	}
	closed = true
	return t.MmapFile.Close(-1)
}

// panicText returns the first non-empty line of a recovered panic value,
// at most 200 bytes of it.
func panicText(r any) string {
	for line := range strings.Lines(fmt.Sprint(r)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "==") {
			return line[:min(len(line), 200)]
		}
	}
	return "(no message)"
}

// walEntry is one record of a badger write-ahead log.
type walEntry struct {
	meta       byte
	key, value []byte
	size       int // bytes the record takes, checksum included
}

// parseWALEntry decodes the record at the start of p: meta, user meta,
// uvarint key length, value length and expiry, key, value, and a
// big-endian CRC-32C of everything before it. ok is false when p does not
// start with a complete record with a matching checksum.
func parseWALEntry(p []byte) (e walEntry, ok bool) {
	if len(p) < 2 {
		return e, false
	}
	i := 2
	var lens [3]uint64
	for j := range lens {
		v, n := binary.Uvarint(p[i:])
		if n <= 0 {
			return e, false
		}
		lens[j], i = v, i+n
	}
	klen, vlen := lens[0], lens[1]
	if klen > walMaxKeyLen || vlen > uint64(len(p)) || uint64(i)+klen+vlen+4 > uint64(len(p)) {
		return e, false
	}
	end := i + int(klen) + int(vlen)
	if crc32.Checksum(p[:end], castagnoli) != binary.BigEndian.Uint32(p[end:]) {
		return e, false
	}
	return walEntry{meta: p[0], key: p[i : i+int(klen)], value: p[i+int(klen) : end], size: end + 4}, true
}

// walTxn returns the transaction a record belongs to: the commit
// timestamp for a transaction record or end marker, and for a record
// outside transactions a value no timestamp has.
func walTxn(e walEntry, off int) (uint64, bool) {
	switch {
	case e.meta&walBitTxn != 0:
		if len(e.key) <= 8 {
			return 0, false
		}
		return math.MaxUint64 - binary.BigEndian.Uint64(e.key[len(e.key)-8:]), true
	case e.meta&walBitFinTxn != 0:
		ts, err := strconv.ParseUint(string(e.value), 10, 64)
		return ts, err == nil
	}
	return uint64(off) | 1<<63, true
}

// walReplay finds where badger's replay of a write-ahead log ends: after
// the last complete transaction (validEnd). It mirrors badger's
// logFile.iterate.
func walReplay(data []byte) (validEnd int) {
	off, validEnd := walHeaderSize, walHeaderSize
	var open uint64 // timestamp of the transaction being read; 0 = none
	for off < len(data) {
		e, ok := parseWALEntry(data[off:])
		if !ok || len(e.key) == 0 {
			break
		}
		next := off + e.size
		switch {
		case e.meta&walBitTxn != 0:
			ts, _ := walTxn(e, off)
			if open == 0 {
				open = ts
			}
			if open != ts {
				return validEnd
			}
		case e.meta&walBitFinTxn != 0:
			ts, err := strconv.ParseUint(string(e.value), 10, 64)
			if err != nil || ts != open {
				return validEnd
			}
			open, validEnd = 0, next
		default:
			if open != 0 {
				return validEnd
			}
			validEnd = next
		}
		off = next
	}
	return validEnd
}

// checkWAL fails with ErrCorrupt when badger's replay of the write-ahead
// log data would silently lose records that had been synced.
//
// The store syncs after every transaction and writes one at a time, so a
// crash can only tear the last transaction of a log. Replay stops at the
// first record that does not decode; what follows it may therefore hold
// records of one transaction (the torn one) and nothing else. Records of
// a second transaction there mean the log was damaged in the middle. A
// log that badger did not truncate itself must also end in zeroes (see
// walZeroTail), or it was cut short.
func checkWAL(data []byte) error {
	switch {
	case len(data) == 0:
		// Damage, or a crash between creating the file and sizing it;
		// badger cannot open it either way.
		return fmt.Errorf("empty: %w", ErrCorrupt)
	case len(data) < walHeaderSize:
		return fmt.Errorf("truncated to %d bytes: %w", len(data), ErrCorrupt)
	case binary.BigEndian.Uint64(data) != 0:
		return fmt.Errorf("names encryption key %d, but the store is never encrypted: %w", binary.BigEndian.Uint64(data), ErrCorrupt)
	}
	validEnd := walReplay(data)
	if validEnd == len(data) {
		return nil
	}
	tail := data[max(validEnd, len(data)-walZeroTail):]
	if !allZero(tail) {
		return fmt.Errorf("ends in data at %d bytes, after the last complete transaction at %d: cut short: %w", len(data), validEnd, ErrCorrupt)
	}
	var torn uint64
	haveTorn := false
	for off := validEnd; off < len(data); {
		nz := nextNonZero(data, off)
		if nz < 0 {
			break
		}
		// A record may start up to two bytes before its first non-zero
		// byte (zero meta and user meta).
		found := false
		for start := max(off, nz-2); start <= nz; start++ {
			e, ok := parseWALEntry(data[start:])
			if !ok || len(e.key) == 0 {
				continue
			}
			ts, ok := walTxn(e, start)
			if !ok {
				continue
			}
			if !haveTorn {
				torn, haveTorn = ts, true
			} else if ts != torn {
				return fmt.Errorf("damaged at offset %d: complete records follow at %d: %w", validEnd, start, ErrCorrupt)
			}
			off, found = start+e.size, true
			break
		}
		if !found {
			off = nz + 1
		}
	}
	return nil
}

// checkLogHeader checks the header of a value log: present, and naming no
// encryption key.
func checkLogHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var hdr [walHeaderSize]byte
	if n, err := io.ReadFull(f, hdr[:]); err != nil {
		return fmt.Errorf("truncated to %d bytes: %w", n, ErrCorrupt)
	}
	if id := binary.BigEndian.Uint64(hdr[:]); id != 0 {
		return fmt.Errorf("names encryption key %d, but the store is never encrypted: %w", id, ErrCorrupt)
	}
	return nil
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// nextNonZero returns the index of the first non-zero byte of data at or
// after from, or -1.
func nextNonZero(data []byte, from int) int {
	i := from
	for i < len(data) && i%8 != 0 {
		if data[i] != 0 {
			return i
		}
		i++
	}
	for i+8 <= len(data) && binary.LittleEndian.Uint64(data[i:]) == 0 {
		i += 8
	}
	if j := bytes.IndexFunc(data[i:], func(r rune) bool { return r != 0 }); j >= 0 {
		return i + j
	}
	return -1
}
