package meta

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Member states in the superblock.
const (
	StateActive  = "active"  // in sync and in use
	StateFailed  = "failed"  // failed by an error or by the operator
	StateMissing = "missing" // absent at assembly, or removed (Path empty)
	// StateRecovering members are being rebuilt; they serve no reads.
	StateRecovering = "recovering"
	// StateSpare members wait in Array.Spares to replace a failed member.
	StateSpare = "spare"
)

// Member is one role of an array.
type Member struct {
	Role  int    `json:"role"`
	UUID  UUID   `json:"uuid"`
	Path  string `json:"path"`
	State string `json:"state"`
	// Rebuilt is how far a recovering member's rebuild got, in bytes of
	// the array (cluster mode checkpoints it; a successor resumes there).
	Rebuilt int64 `json:"rebuilt,omitempty"`
	// DirtyOnly says a recovering member is its role's previous member
	// (a re-add): only the regions written while it was away are rebuilt.
	DirtyOnly bool `json:"dirty_only,omitempty"`
	// Unsynced says a failed or missing member failed while it was being
	// rebuilt: it does not hold the array's data, so adding the device
	// again rebuilds it whole rather than only the regions written while
	// it was away.
	Unsynced bool `json:"unsynced,omitempty"`
}

// Fail marks the member failed, and Unsynced when it was being rebuilt.
func (m *Member) Fail() {
	if m.State == StateRecovering {
		m.Unsynced = true
	}
	m.State = StateFailed
}

// Array is the superblock of one array.
type Array struct {
	Name      string `json:"name"`
	UUID      UUID   `json:"uuid"`
	Level     string `json:"level"`
	BlockSize int    `json:"block_size"`
	// Parity and ParityChunk describe raid35 parity placement.
	Parity      string `json:"parity,omitempty"`
	ParityChunk int    `json:"parity_chunk,omitempty"`
	// DataOffset is where every member's data area starts; MemberDataSize
	// is the data area length used on every member (linear: per member, see
	// Member sizes in Sizes).
	DataOffset     int64   `json:"data_offset"`
	MemberDataSize int64   `json:"member_data_size,omitempty"`
	Sizes          []int64 `json:"sizes,omitempty"`
	// Size is the array's usable size in bytes.
	Size    int64    `json:"size"`
	Members []Member `json:"members"`
	Spares  []Member `json:"spares,omitempty"`
	// RegionSize is the write-intent bitmap region in bytes (0: 4 MiB).
	RegionSize int64 `json:"region_size,omitempty"`
	// InitialSync is set when members held data at create; SyncedTo is
	// how far the initial sync got.
	InitialSync bool      `json:"initial_sync,omitempty"`
	SyncedTo    int64     `json:"synced_to,omitempty"`
	Events      uint64    `json:"events"`
	Created     time.Time `json:"created"`
	// Slots is the number of writer slots in cluster mode: how many nodes
	// may write the array at once (0: DefaultSlots). It can grow.
	Slots int `json:"slots,omitempty"`
}

// DefaultSlots is the number of writer slots of an array that records
// none; MaxSlots is the most an array may have.
const (
	DefaultSlots = 4
	MaxSlots     = 64
)

// SlotCount returns the array's number of writer slots.
func (a *Array) SlotCount() int {
	if a.Slots == 0 {
		return DefaultSlots
	}
	return a.Slots
}

// ValidateSlots checks a writer slot count.
func ValidateSlots(n int) error {
	if n < 1 || n > MaxSlots {
		return fmt.Errorf("invalid slot count %d: an array has 1 to %d writer slots (--nodes)", n, MaxSlots)
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// ValidateName checks an array name: 1 to 64 characters from letters,
// digits, '.', '_' and '-', not starting with a punctuation character.
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLen || !nameRE.MatchString(name) {
		return fmt.Errorf("invalid array name %q: use 1-%d letters, digits, '.', '_' or '-', starting with a letter or digit", name, MaxNameLen)
	}
	return nil
}

// Validate checks the structure of a superblock (not the level-specific
// geometry, which package raid checks).
func (a *Array) Validate() error {
	if err := ValidateName(a.Name); err != nil {
		return err
	}
	if a.UUID.IsZero() {
		return errors.New("array uuid is zero")
	}
	if len(a.Members) == 0 {
		return errors.New("array has no members")
	}
	if a.Slots != 0 {
		if err := ValidateSlots(a.Slots); err != nil {
			return err
		}
	}
	if a.DataOffset < HeaderSize || a.Size < 0 || a.BlockSize <= 0 {
		return fmt.Errorf("bad geometry: data offset %d, size %d, block size %d", a.DataOffset, a.Size, a.BlockSize)
	}
	for i, m := range a.Members {
		if m.Role != i {
			return fmt.Errorf("member %d has role %d", i, m.Role)
		}
		switch m.State {
		case StateActive, StateFailed, StateMissing, StateRecovering:
		default:
			return fmt.Errorf("member %d has unknown state %q", i, m.State)
		}
	}
	return nil
}

// Store is the pebble-backed superblock store of one state directory. It is
// safe for concurrent use.
type Store struct {
	db *pebble.DB
}

// ErrNotFound reports an array name that the store does not hold.
var ErrNotFound = errors.New("no such array")

// ErrLocked reports a state directory held by another process for longer
// than Open waits.
var ErrLocked = errors.New("state directory is locked by another ddraid process")

// Dir returns the pebble directory inside a state directory.
func Dir(stateDir string) string { return filepath.Join(stateDir, "meta") }

// Open opens (creating if needed) the store in stateDir, waiting up to wait
// for another process to release it.
func Open(stateDir string, wait time.Duration) (*Store, error) {
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		db, err := pebble.Open(Dir(stateDir), &pebble.Options{
			FormatMajorVersion: pebble.FormatNewest,
			Logger:             pebbleLogger{},
			MemTableSize:       1 << 20,
			CacheSize:          1 << 20,
		})
		if err == nil {
			return &Store{db: db}, nil
		}
		if !isLockErr(err) {
			return nil, fmt.Errorf("open metadata %s: %w: %v", Dir(stateDir), ErrCorrupt, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("open metadata %s: %w", Dir(stateDir), ErrLocked)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isLockErr reports pebble's refusal to open a directory another process
// (or another Open in this process) holds: an EAGAIN from flock, however
// pebble words it.
func isLockErr(err error) bool {
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "resource temporarily unavailable") ||
		(strings.Contains(s, "lock") && (strings.Contains(s, "already locked") || strings.Contains(s, "held")))
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

func key(name string) []byte { return []byte("array/" + name) }

// Put stores a (validated) superblock durably.
func (s *Store) Put(a *Array) error {
	if err := a.Validate(); err != nil {
		return fmt.Errorf("put array %s: %w", a.Name, err)
	}
	js, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("put array %s: %w", a.Name, err)
	}
	v := make([]byte, 4+len(js))
	binary.LittleEndian.PutUint32(v, crc32Checksum(js))
	copy(v[4:], js)
	if err := s.db.Set(key(a.Name), v, pebble.Sync); err != nil {
		return fmt.Errorf("put array %s: %w", a.Name, err)
	}
	return nil
}

// PutRaw stores bytes under an array's key without checks; tests use it to
// plant corrupt records.
func (s *Store) PutRaw(name string, v []byte) error {
	return s.db.Set(key(name), v, pebble.Sync)
}

// Get returns the superblock of the named array.
func (s *Store) Get(name string) (*Array, error) {
	v, closer, err := s.db.Get(key(name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("array %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get array %s: %w", name, err)
	}
	defer closer.Close()
	return decode(name, v)
}

func decode(name string, v []byte) (*Array, error) {
	if len(v) < 4 || crc32Checksum(v[4:]) != binary.LittleEndian.Uint32(v) {
		return nil, fmt.Errorf("array %s: superblock checksum mismatch: %w", name, ErrCorrupt)
	}
	var a Array
	if err := json.Unmarshal(v[4:], &a); err != nil {
		return nil, fmt.Errorf("array %s: superblock: %w: %v", name, ErrCorrupt, err)
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("array %s: superblock: %w: %v", name, ErrCorrupt, err)
	}
	if a.Name != name {
		return nil, fmt.Errorf("array %s: superblock names %q: %w", name, a.Name, ErrCorrupt)
	}
	return &a, nil
}

// List returns every array's name in order.
func (s *Store) List() ([]string, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte("array/"), UpperBound: []byte("array0")})
	if err != nil {
		return nil, fmt.Errorf("list arrays: %w", err)
	}
	var names []string
	for it.First(); it.Valid(); it.Next() {
		names = append(names, strings.TrimPrefix(string(it.Key()), "array/"))
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("list arrays: %w", err)
	}
	return names, nil
}

// Delete removes an array's superblock.
func (s *Store) Delete(name string) error {
	if err := s.db.Delete(key(name), pebble.Sync); err != nil {
		return fmt.Errorf("delete array %s: %w", name, err)
	}
	return nil
}

// pebbleLogger sends pebble's messages to slog.
type pebbleLogger struct{}

func (pebbleLogger) Infof(format string, args ...any) {
	slog.Debug("pebble: " + fmt.Sprintf(format, args...))
}
func (pebbleLogger) Errorf(format string, args ...any) {
	slog.Error("pebble: " + fmt.Sprintf(format, args...))
}
func (pebbleLogger) Fatalf(format string, args ...any) {
	panic("pebble: " + fmt.Sprintf(format, args...))
}

func crc32Checksum(b []byte) uint32 { return crc32.Checksum(b, crcTable) }
