package bitmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// storeMagic is badger's external magic version for the bitmap store:
// badger refuses to open a directory written with another one.
const storeMagic = 0xdd01

// Dir returns the bitmap store directory inside a state directory.
func Dir(stateDir string) string { return filepath.Join(stateDir, "bitmap") }

// StoreConfig tunes the badger database behind a Store. The store is small
// (one key per dirty region), so every default is far below badger's own.
// Zero fields take the defaults of DefaultStoreConfig.
type StoreConfig struct {
	// MemTableSize is the size in bytes of one memtable and of its
	// write-ahead log file. Default 4 MiB; at least 1 MiB. One write batch
	// holds at most 15% of it (about 6000 keys at the default); bigger
	// batches are split, with one sync per part.
	MemTableSize int64
	// NumMemtables is how many memtables may be held in memory, the
	// active one included. Default 2; at least 1.
	NumMemtables int
	// BlockCacheSize is the size in bytes of badger's block cache.
	// Default 1 MiB.
	BlockCacheSize int64
	// IndexCacheSize is the size in bytes of badger's table index cache.
	// Default 1 MiB.
	IndexCacheSize int64
	// Logger receives badger's warnings and errors (its info and debug
	// output is dropped). Default slog.Default().
	Logger *slog.Logger
}

// DefaultStoreConfig returns the configuration used for zero fields.
func DefaultStoreConfig() StoreConfig {
	return StoreConfig{
		MemTableSize:   4 << 20,
		NumMemtables:   2,
		BlockCacheSize: 1 << 20,
		IndexCacheSize: 1 << 20,
	}
}

func (c *StoreConfig) validate() error {
	def := DefaultStoreConfig()
	if c.MemTableSize == 0 {
		c.MemTableSize = def.MemTableSize
	}
	if c.NumMemtables == 0 {
		c.NumMemtables = def.NumMemtables
	}
	if c.BlockCacheSize == 0 {
		c.BlockCacheSize = def.BlockCacheSize
	}
	if c.IndexCacheSize == 0 {
		c.IndexCacheSize = def.IndexCacheSize
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.MemTableSize < 1<<20:
		return fmt.Errorf("bitmap store: memtable size %d below 1 MiB", c.MemTableSize)
	case c.NumMemtables < 1:
		return fmt.Errorf("bitmap store: %d memtables, need at least 1", c.NumMemtables)
	case c.BlockCacheSize < 0 || c.IndexCacheSize < 0:
		return fmt.Errorf("bitmap store: negative cache size (block %d, index %d)", c.BlockCacheSize, c.IndexCacheSize)
	}
	return nil
}

// Store holds the dirty region sets of every (array, slot) pair of one
// node, in a badger database. It is safe for concurrent use. Every change
// is on stable storage when the method making it returns. Methods do not
// retain the slices passed to them.
//
// An open Bitmap keeps its own slot's marks in memory: change that slot
// only through the Bitmap while it is open. Reading any slot, and
// changing slots that have no open Bitmap (another node's slot on
// takeover, a stopped array), is fine.
type Store struct {
	dir string
	db  *badger.DB
	log *slog.Logger

	// closeMu is held shared by every operation and exclusively by Close.
	closeMu sync.RWMutex
	closed  bool

	// wmu serialises write batches together with their Sync. badger's Sync
	// only syncs the active memtable's log; a memtable switch caused by a
	// concurrent writer between our commit and our Sync would leave our
	// entries in an unsynced log. One writer at a time rules that out:
	// badger switches memtables only before applying a write, so the
	// entries of the transaction just committed are in the active log.
	wmu sync.Mutex

	// inUse holds the (array, slot) pairs of open Bitmaps.
	inUseMu sync.Mutex
	inUse   map[slotID]bool

	// afterSync, when set (tests only), is called under wmu after every
	// synced commit with the keys it wrote or deleted.
	afterSync func(del bool, keys [][]byte)
}

type slotID struct {
	array string
	slot  int
}

// badgerFile matches the names badger creates in its directory.
var badgerFile = regexp.MustCompile(`^([0-9]+\.(sst|vlog|mem)|MANIFEST|MANIFEST-REWRITE|KEYREGISTRY|REWRITE-KEYREGISTRY|DISCARD|LOCK)$`)

// OpenStore opens the store in dir, creating dir and an empty store when
// dir is empty or absent.
//
// A store that cannot be read back intact returns an error wrapping
// ErrCorrupt: a file in dir is not one of badger's, a table fails its
// checksum, the manifest or a log is damaged or cut short (see
// precheck.go), badger fails to open it, a key or value does not follow
// the format, or the directory holds files but no format record. The caller then treats every region of
// every array as dirty (a full resync), with a warning, and may move the
// directory aside with Quarantine. A store held by another process returns
// an error wrapping ErrLocked. Other failures (permissions, a full disk)
// are returned as they are.
//
// OpenStore reads every key once to check it, so its cost grows with the
// number of dirty regions.
func OpenStore(dir string, cfg StoreConfig) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("bitmap store %s: %w", dir, err)
	}
	if err := probeLock(dir); err != nil {
		return nil, err
	}
	fresh, err := precheck(dir, cfg)
	if err != nil {
		return nil, err
	}
	db, err := openBadger(dir, cfg)
	if err != nil {
		return nil, classifyOpenErr(dir, err)
	}
	s := &Store{
		dir:   dir,
		db:    db,
		log:   cfg.Logger,
		inUse: make(map[slotID]bool),
	}
	if err := s.verify(fresh); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("bitmap store %s: %w", dir, err)
	}
	return s, nil
}

// probeLock fails with ErrLocked when another process holds dir. badger
// takes the same flock when it opens; checking first gives a clear error
// (badger's own is a flattened string).
func probeLock(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("bitmap store %s: %w", dir, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("bitmap store %s: %w", dir, ErrLocked)
		}
		return fmt.Errorf("bitmap store %s: lock: %w", dir, err)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

func badgerOptions(dir string, cfg StoreConfig) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{cfg.Logger.With("component", "bitmap-store")}).
		WithSyncWrites(false).
		WithNumVersionsToKeep(1).
		WithCompression(options.None).
		WithMemTableSize(cfg.MemTableSize).
		WithNumMemtables(cfg.NumMemtables).
		WithBlockCacheSize(cfg.BlockCacheSize).
		WithIndexCacheSize(cfg.IndexCacheSize).
		WithBaseTableSize(1 << 20).
		WithBaseLevelSize(4 << 20).
		WithValueThreshold(1 << 10).
		WithValueLogFileSize(1 << 20).
		WithNumCompactors(2).
		WithNumGoroutines(1).
		WithMetricsEnabled(false).
		WithDetectConflicts(false).
		WithChecksumVerificationMode(options.OnTableAndBlockRead).
		WithVerifyValueChecksum(true).
		WithExternalMagic(storeMagic)
}

// openBadger opens the database, turning a panic inside badger (it panics
// on some kinds of damage) into an error.
func openBadger(dir string, cfg StoreConfig) (db *badger.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("badger panicked while opening: %v", r)
		}
	}()
	return badger.Open(badgerOptions(dir, cfg))
}

// classifyOpenErr maps a badger open error onto ErrLocked, ErrCorrupt or a
// plain environment error. badger flattens wrapped errors into strings, so
// the errno can only be recognised by its text.
func classifyOpenErr(dir string, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Cannot acquire directory lock"):
		return fmt.Errorf("bitmap store %s: %w", dir, ErrLocked)
	case strings.Contains(msg, syscall.EACCES.Error()),
		strings.Contains(msg, syscall.EPERM.Error()),
		strings.Contains(msg, syscall.ENOSPC.Error()),
		strings.Contains(msg, syscall.EROFS.Error()),
		strings.Contains(msg, syscall.EIO.Error()),
		strings.Contains(msg, syscall.ENOMEM.Error()):
		return fmt.Errorf("bitmap store %s: open: %w", dir, err)
	}
	return fmt.Errorf("bitmap store %s: %w: %v", dir, ErrCorrupt, err)
}

// verify reads every key and value once, and writes the format record
// into a new store. A store that has files but no format record was
// damaged (or never finished being created) and is corrupt.
func (s *Store) verify(fresh bool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("badger panicked while reading: %v: %w", r, ErrCorrupt)
		}
	}()
	found := false
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			d, err := decodeKey(item.Key())
			if err != nil {
				return err
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("read value of %q: %w: %v", item.Key(), ErrCorrupt, err)
			}
			if err := checkValue(d, v); err != nil {
				return err
			}
			if d.Kind == kindFormat {
				found = true
			}
		}
		return nil
	})
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			err = fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return err
	}
	switch {
	case found:
		return nil
	case !fresh:
		return fmt.Errorf("no format record although the directory holds a database: %w", ErrCorrupt)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	txn := s.db.NewTransaction(true)
	if err := txn.Set([]byte(formatKey), []byte(formatValue)); err != nil {
		txn.Discard()
		return fmt.Errorf("write format record: %w", err)
	}
	return s.commitSync(txn)
}

// Close closes the database. Bitmaps using the store must be closed
// first. Close is idempotent.
func (s *Store) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("bitmap store %s: close: %w", s.dir, err)
	}
	return nil
}

// enter takes the shared close lock; it fails once the store is closed.
func (s *Store) enter() error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return fmt.Errorf("bitmap store %s: %w", s.dir, ErrClosed)
	}
	return nil
}

func (s *Store) leave() { s.closeMu.RUnlock() }

// Dirty returns the regions marked for (array, slot), sorted.
func (s *Store) Dirty(array string, slot int) ([]uint64, error) {
	if err := checkKey(array, slot); err != nil {
		return nil, err
	}
	var out []uint64
	err := s.scan(slotPrefix(array, slot), func(d decodedKey, it *badger.Iterator) error {
		out = append(out, d.Region)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bitmap store: dirty regions of %s slot %d: %w", array, slot, err)
	}
	return out, nil
}

// Mark durably marks regions of (array, slot) dirty, in one batch with one
// sync (more when the batch exceeds a badger transaction; see
// StoreConfig.MemTableSize). Marking a marked region is harmless.
func (s *Store) Mark(array string, slot int, regions []uint64) error {
	if err := s.update(array, slot, regions, false); err != nil {
		return fmt.Errorf("bitmap store: mark %d regions of %s slot %d: %w", len(regions), array, slot, err)
	}
	return nil
}

// Clear durably removes the marks of regions of (array, slot), in one
// batch like Mark. Clearing an unmarked region is harmless.
func (s *Store) Clear(array string, slot int, regions []uint64) error {
	if err := s.update(array, slot, regions, true); err != nil {
		return fmt.Errorf("bitmap store: clear %d regions of %s slot %d: %w", len(regions), array, slot, err)
	}
	return nil
}

// ClearAll durably removes every mark of (array, slot).
func (s *Store) ClearAll(array string, slot int) error {
	regions, err := s.Dirty(array, slot)
	if err != nil {
		return err
	}
	if err := s.update(array, slot, regions, true); err != nil {
		return fmt.Errorf("bitmap store: clear all of %s slot %d: %w", array, slot, err)
	}
	return nil
}

// Drop durably removes everything the store holds about array: the marks
// of every slot and its region size. A newly created array whose name was
// used before starts with Drop.
func (s *Store) Drop(array string) error {
	if err := checkArray(array); err != nil {
		return err
	}
	var keys [][]byte
	err := s.scan(arrayPrefix(array), func(_ decodedKey, it *badger.Iterator) error {
		keys = append(keys, it.Item().KeyCopy(nil))
		return nil
	})
	if err != nil {
		return fmt.Errorf("bitmap store: drop %s: %w", array, err)
	}
	keys = append(keys, geometryKey(array))
	if err := s.write(keys, true); err != nil {
		return fmt.Errorf("bitmap store: drop %s: %w", array, err)
	}
	return nil
}

// Arrays returns the names of the arrays the store knows (those with marks
// or a recorded region size), sorted.
func (s *Store) Arrays() ([]string, error) {
	names := make(map[string]bool)
	err := s.scan([]byte(dirtyPrefix), func(d decodedKey, it *badger.Iterator) error {
		names[d.Array] = true
		// Skip the rest of this array: "d/<array>0" follows every
		// "d/<array>/..." key ('0' is '/'+1).
		it.Seek([]byte(dirtyPrefix + d.Array + "0"))
		return errSeeked
	})
	if err == nil {
		err = s.scan([]byte(geometryPrefix), func(d decodedKey, _ *badger.Iterator) error {
			names[d.Array] = true
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("bitmap store: list arrays: %w", err)
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

// Slots returns the slots of array that have at least one mark, sorted.
func (s *Store) Slots(array string) ([]int, error) {
	if err := checkArray(array); err != nil {
		return nil, err
	}
	prefix := arrayPrefix(array)
	var out []int
	err := s.scan(prefix, func(d decodedKey, it *badger.Iterator) error {
		out = append(out, d.Slot)
		if uint64(d.Slot) == MaxSlot {
			return nil
		}
		it.Seek(binary.BigEndian.AppendUint32(append([]byte(nil), prefix...), uint32(d.Slot+1)))
		return errSeeked
	})
	if err != nil {
		return nil, fmt.Errorf("bitmap store: slots of %s: %w", array, err)
	}
	return out, nil
}

// regionSize returns the region size recorded for array, if any.
func (s *Store) regionSize(array string) (int64, bool, error) {
	if err := s.enter(); err != nil {
		return 0, false, err
	}
	defer s.leave()
	var rs int64
	found := false
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(geometryKey(array))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		if err := checkValue(decodedKey{Kind: kindGeometry, Array: array}, v); err != nil {
			return err
		}
		rs, found = int64(binary.BigEndian.Uint64(v)), true
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("bitmap store: region size of %s: %w", array, err)
	}
	return rs, found, nil
}

// setRegionSize durably records the region size of array.
func (s *Store) setRegionSize(array string, rs int64) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	txn := s.db.NewTransaction(true)
	if err := txn.Set(geometryKey(array), binary.BigEndian.AppendUint64(nil, uint64(rs))); err != nil {
		txn.Discard()
		return fmt.Errorf("bitmap store: record region size of %s: %w", array, err)
	}
	if err := s.commitSync(txn); err != nil {
		return fmt.Errorf("bitmap store: record region size of %s: %w", array, err)
	}
	return nil
}

// claim registers an open Bitmap for (array, slot); a second one for the
// same pair is refused.
func (s *Store) claim(array string, slot int) error {
	s.inUseMu.Lock()
	defer s.inUseMu.Unlock()
	id := slotID{array, slot}
	if s.inUse[id] {
		return fmt.Errorf("bitmap: array %s slot %d: %w", array, slot, ErrInUse)
	}
	s.inUse[id] = true
	return nil
}

func (s *Store) release(array string, slot int) {
	s.inUseMu.Lock()
	defer s.inUseMu.Unlock()
	delete(s.inUse, slotID{array, slot})
}

func checkKey(array string, slot int) error {
	if err := checkArray(array); err != nil {
		return err
	}
	return checkSlot(slot)
}

// errSeeked tells scan that the callback moved the iterator itself.
var errSeeked = errors.New("seeked")

// scan calls fn for every key with the given prefix, decoded. fn may move
// the iterator and return errSeeked so scan does not advance it.
func (s *Store) scan(prefix []byte, fn func(d decodedKey, it *badger.Iterator) error) (err error) {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("badger panicked while reading: %v: %w", r, ErrCorrupt)
		}
	}()
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefix})
		defer it.Close()
		it.Seek(prefix)
		for it.Valid() {
			d, err := decodeKey(it.Item().Key())
			if err != nil {
				return err
			}
			switch err := fn(d, it); {
			case errors.Is(err, errSeeked):
				continue
			case err != nil:
				return err
			}
			it.Next()
		}
		return nil
	})
}

// update sets or deletes the dirty keys of regions.
func (s *Store) update(array string, slot int, regions []uint64, del bool) error {
	if err := checkKey(array, slot); err != nil {
		return err
	}
	if len(regions) == 0 {
		return nil
	}
	keyLen := len(array) + len(dirtyPrefix) + dirtySuffixLen
	buf := make([]byte, 0, keyLen*len(regions))
	keys := make([][]byte, len(regions))
	for i, r := range regions {
		start := len(buf)
		buf = appendDirtyKey(buf, array, slot, r)
		keys[i] = buf[start:len(buf):len(buf)]
	}
	return s.write(keys, del)
}

// write sets (with empty values) or deletes keys, in as few transactions
// as badger allows, each committed and synced before the next starts.
func (s *Store) write(keys [][]byte, del bool) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	txn := s.db.NewTransaction(true)
	from := 0
	for i := 0; i < len(keys); {
		var err error
		if del {
			err = txn.Delete(keys[i])
		} else {
			err = txn.Set(keys[i], nil)
		}
		if errors.Is(err, badger.ErrTxnTooBig) && i > from {
			if err := s.commitSync(txn); err != nil {
				return err
			}
			s.notify(del, keys[from:i])
			txn, from = s.db.NewTransaction(true), i
			continue
		}
		if err != nil {
			txn.Discard()
			return err
		}
		i++
	}
	if err := s.commitSync(txn); err != nil {
		return err
	}
	s.notify(del, keys[from:])
	return nil
}

// commitSync commits txn and syncs the log it went to. Called under wmu.
func (s *Store) commitSync(txn *badger.Txn) error {
	defer txn.Discard()
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

func (s *Store) notify(del bool, keys [][]byte) {
	if s.afterSync != nil && len(keys) > 0 {
		s.afterSync(del, keys)
	}
}

// Quarantine moves a store directory that OpenStore reported corrupt out of
// the way, to dir + ".corrupt-" + a UTC timestamp, keeping its files for
// inspection, and returns the new path. The next OpenStore of dir creates
// an empty store. A store in use by a process fails with ErrLocked.
func Quarantine(dir string) (string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return "", fmt.Errorf("bitmap store %s: quarantine: %w", dir, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return "", fmt.Errorf("bitmap store %s: quarantine: %w", dir, ErrLocked)
		}
		return "", fmt.Errorf("bitmap store %s: quarantine: lock: %w", dir, err)
	}
	base := strings.TrimRight(dir, string(os.PathSeparator)) + ".corrupt-" + time.Now().UTC().Format("20060102T150405Z")
	to := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(to); errors.Is(err, os.ErrNotExist) {
			break
		}
		to = fmt.Sprintf("%s.%d", base, i)
	}
	if err := os.Rename(dir, to); err != nil {
		return "", fmt.Errorf("bitmap store %s: quarantine: %w", dir, err)
	}
	return to, nil
}

// badgerLogger passes badger's warnings and errors to slog and drops its
// info and debug messages.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}

func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}

func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}
