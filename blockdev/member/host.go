package member

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/ddraid/ddraid/bitmap"
	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
)

// Sentinel errors. Test with errors.Is.
var (
	// ErrInUse reports a state directory held by another ddraid process.
	ErrInUse = errors.New("member: state dir is in use by another ddraid process")
	// ErrFenced is nbd.ErrFenced: a writer whose epoch is below its
	// slot's minimum.
	ErrFenced = nbd.ErrFenced
)

// stateFile is the name of the host's small state file in its state dir.
const stateFile = "agent.json"

// Config configures a Host.
type Config struct {
	// StateDir holds the badger mark store (StateDir/bitmap) and the
	// state file (StateDir/agent.json). Required.
	StateDir string
	// Direct opens hosted disks with O_DIRECT.
	Direct bool
	// Logger receives events. Default slog.Default().
	Logger *slog.Logger
}

// Host is a member host: the disks one agent serves, their marks and the
// fencing epochs. It is safe for concurrent use.
type Host struct {
	dir   string
	cfg   Config
	log   *slog.Logger
	store *bitmap.Store

	// fence is held shared by every admitted write while it runs, and
	// exclusively by Fence, so that a fence waits for the writes it
	// overtakes and no write starts under an epoch it made stale.
	fence sync.RWMutex

	mu     sync.Mutex
	st     state
	open   map[bmKey]*bitmap.Bitmap
	disks  map[string]*Disk
	closed bool
}

// state is what agent.json holds.
type state struct {
	// Fences maps "ARRAYUUID/SLOT" (hex UUID) to the slot's minimum epoch.
	Fences map[string]uint64 `json:"fences"`
	// Marks describes every mark set, by its store key.
	Marks map[string]markInfo `json:"marks"`
}

// markInfo describes the mark set of one (array, disk).
type markInfo struct {
	Disk       string `json:"disk"`
	Array      string `json:"array"`
	RegionSize uint64 `json:"region_size"`
	DataOffset uint64 `json:"data_offset"`
}

type bmKey struct {
	key  string
	slot uint32
}

// Open opens (creating it if needed) the host state in cfg.StateDir. A
// state dir held by another process fails with ErrInUse.
func Open(cfg Config) (*Host, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("member: no state dir")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("member: state dir %s: %w", cfg.StateDir, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("member: state dir %s: %w", dir, err)
	}
	store, err := bitmap.OpenStore(bitmap.Dir(dir), bitmap.StoreConfig{Logger: cfg.Logger})
	if errors.Is(err, bitmap.ErrLocked) {
		return nil, fmt.Errorf("%w: %s", ErrInUse, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("member: state dir %s: %w", dir, err)
	}
	h := &Host{dir: dir, cfg: cfg, log: cfg.Logger, store: store,
		open: map[bmKey]*bitmap.Bitmap{}, disks: map[string]*Disk{}}
	if err := h.load(); err != nil {
		store.Close()
		return nil, err
	}
	return h, nil
}

// load reads agent.json; a missing file is an empty state.
func (h *Host) load() error {
	h.st = state{Fences: map[string]uint64{}, Marks: map[string]markInfo{}}
	b, err := os.ReadFile(filepath.Join(h.dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("member: %w", err)
	}
	if err := json.Unmarshal(b, &h.st); err != nil {
		return fmt.Errorf("member: %s is corrupt: %w", filepath.Join(h.dir, stateFile), err)
	}
	if h.st.Fences == nil {
		h.st.Fences = map[string]uint64{}
	}
	if h.st.Marks == nil {
		h.st.Marks = map[string]markInfo{}
	}
	return nil
}

// saveLocked writes agent.json durably (temporary file, fsync, rename,
// fsync of the directory). Called with mu held.
func (h *Host) saveLocked() error {
	b, err := json.MarshalIndent(&h.st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(h.dir, stateFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("member: save state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("member: save state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("member: save state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("member: save state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("member: save state: %w", err)
	}
	d, err := os.Open(h.dir)
	if err != nil {
		return fmt.Errorf("member: save state: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("member: save state: %w", err)
	}
	return nil
}

// fenceKey is the key of a slot's minimum epoch.
func fenceKey(array [16]byte, slot uint32) string {
	return hex.EncodeToString(array[:]) + "/" + strconv.FormatUint(uint64(slot), 10)
}

// MinEpoch returns the minimum valid epoch of (array, slot); 0 when it
// was never fenced.
func (h *Host) MinEpoch(array [16]byte, slot uint32) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st.Fences[fenceKey(array, slot)]
}

// Fence raises the minimum valid epoch of (array, slot) to epoch (a lower
// or equal epoch changes nothing). It waits until every write and clear
// already admitted has finished, persists the minimum, and only then
// returns: from then on the host refuses every write-type command and
// CLEAR from that slot with an older epoch.
func (h *Host) Fence(array [16]byte, slot uint32, epoch uint64) error {
	h.fence.Lock()
	defer h.fence.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	k := fenceKey(array, slot)
	old, had := h.st.Fences[k]
	if epoch <= old {
		return nil
	}
	h.st.Fences[k] = epoch
	if err := h.saveLocked(); err != nil {
		if had {
			h.st.Fences[k] = old
		} else {
			delete(h.st.Fences, k)
		}
		return err
	}
	h.log.Info("member: slot fenced", "array", hex.EncodeToString(array[:]), "slot", slot, "min_epoch", epoch, "was", old)
	return nil
}

// fencedErrLocked returns an error wrapping ErrFenced if w's epoch is
// stale. Called with mu held.
func (h *Host) fencedErrLocked(w nbd.Writer) error {
	if need := h.st.Fences[fenceKey(w.Array, w.Slot)]; w.Epoch < need {
		return fmt.Errorf("%w: slot %d of array %x needs epoch %d or later, the writer has %d", ErrFenced, w.Slot, w.Array, need, w.Epoch)
	}
	return nil
}

// Fences returns a copy of the minimum epochs, by "ARRAYUUID/SLOT".
func (h *Host) Fences() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]uint64, len(h.st.Fences))
	for k, v := range h.st.Fences {
		out[k] = v
	}
	return out
}

// AddDisk opens the disk (file or block device) at path for serving.
func (h *Host) AddDisk(path string) (*Disk, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("member: disk %s: %w", path, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("member: disk %s: host is closed", abs)
	}
	if _, dup := h.disks[abs]; dup {
		return nil, fmt.Errorf("member: disk %s is given twice", abs)
	}
	dev, err := blockdev.OpenFile(abs, blockdev.FileOptions{Direct: h.cfg.Direct})
	if err != nil {
		return nil, fmt.Errorf("member: disk %s: %w", abs, err)
	}
	sum := sha256.Sum256([]byte(abs))
	d := &Disk{h: h, path: abs, id: hex.EncodeToString(sum[:8]), dev: dev}
	h.disks[abs] = d
	return d, nil
}

// Disks returns the hosted disks, sorted by path.
func (h *Host) Disks() []*Disk {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Disk, 0, len(h.disks))
	for _, d := range h.disks {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *Disk) int {
		if a.path < b.path {
			return -1
		}
		if a.path > b.path {
			return 1
		}
		return 0
	})
	return out
}

// markKey is the store key of the marks of array on disk d.
func (d *Disk) markKey(array [16]byte) string {
	return hex.EncodeToString(array[:]) + "." + d.id
}

// marks returns the open Bitmap of (array, d, slot) for w, opening it
// (and recording its geometry) the first time.
func (h *Host) marks(d *Disk, w nbd.Writer) (*bitmap.Bitmap, error) {
	key := d.markKey(w.Array)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("member: host is closed")
	}
	info, known := h.st.Marks[key]
	want := markInfo{Disk: d.path, Array: hex.EncodeToString(w.Array[:]), RegionSize: w.RegionSize, DataOffset: w.DataOffset}
	if known && info != want {
		slots, err := h.store.Slots(key)
		if err != nil {
			return nil, fmt.Errorf("member: disk %s: %w", d.path, err)
		}
		if len(slots) > 0 {
			return nil, fmt.Errorf("member: disk %s holds marks of slots %v made with region size %d and data offset %d; the writer uses %d and %d",
				d.path, slots, info.RegionSize, info.DataOffset, w.RegionSize, w.DataOffset)
		}
		for bk, bm := range h.open {
			if bk.key == key {
				bm.Close()
				delete(h.open, bk)
			}
		}
	}
	if !known || info != want {
		h.st.Marks[key] = want
		if err := h.saveLocked(); err != nil {
			return nil, err
		}
	}
	bk := bmKey{key, w.Slot}
	if bm := h.open[bk]; bm != nil {
		return bm, nil
	}
	size := d.dev.Size() - int64(w.DataOffset)
	if size <= 0 {
		return nil, fmt.Errorf("member: disk %s of %d bytes ends before the data offset %d", d.path, d.dev.Size(), w.DataOffset)
	}
	bm, err := bitmap.New(h.store, key, int(w.Slot), size, bitmap.Config{
		RegionSize: int64(w.RegionSize), ManualClear: true, Flush: d.dev.Flush, Logger: h.log,
	})
	if err != nil {
		return nil, fmt.Errorf("member: disk %s: marks of slot %d: %w", d.path, w.Slot, err)
	}
	h.open[bk] = bm
	return bm, nil
}

// Close closes the marks (they stay in the store), the store and the
// disks.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	open, disks := h.open, h.disks
	h.open, h.disks = nil, nil
	h.mu.Unlock()
	var errs []error
	for _, bm := range open {
		errs = append(errs, bm.Close())
	}
	errs = append(errs, h.store.Close())
	for _, d := range disks {
		errs = append(errs, d.dev.Close())
	}
	return errors.Join(errs...)
}
