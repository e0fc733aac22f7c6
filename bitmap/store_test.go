package bitmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func TestStoreConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  StoreConfig
		ok   bool
	}{
		{"defaults", StoreConfig{}, true},
		{"small memtable", StoreConfig{MemTableSize: 1 << 19}, false},
		{"negative memtables", StoreConfig{NumMemtables: -1}, false},
		{"negative cache", StoreConfig{BlockCacheSize: -1}, false},
	}
	for _, tc := range tests {
		cfg := tc.cfg
		if err := cfg.validate(); tc.ok != (err == nil) {
			t.Errorf("%s: validate = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if d := DefaultStoreConfig(); d.MemTableSize != 4<<20 {
		t.Fatalf("DefaultStoreConfig = %+v", d)
	}
	if got := Dir("/var/lib/ddraid"); got != "/var/lib/ddraid/bitmap" {
		t.Fatalf("Dir = %q", got)
	}
}

func TestStoreOperations(t *testing.T) {
	s, _ := openStore(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Mark("b", 0, regions(9, 1, 5)))
	must(s.Mark("b", 0, regions(5))) // again: harmless
	must(s.Mark("b", 7, regions(2)))
	must(s.Mark("a", 3, regions(1<<40)))
	must(s.Mark("a.x", 1, regions(4)))
	must(s.Mark("c", MaxSlot, regions(0)))
	must(s.setRegionSize("geo-only", rs64k))
	must(s.Mark("b", 0, nil)) // nothing: fine

	dirty := func(array string, slot int) []uint64 {
		t.Helper()
		d, err := s.Dirty(array, slot)
		must(err)
		return d
	}
	if got := dirty("b", 0); !slices.Equal(got, regions(1, 5, 9)) {
		t.Fatalf("Dirty(b, 0) = %v", got)
	}
	if got := dirty("b", 1); len(got) != 0 {
		t.Fatalf("Dirty(b, 1) = %v", got)
	}
	arrays, err := s.Arrays()
	must(err)
	if want := []string{"a", "a.x", "b", "c", "geo-only"}; !slices.Equal(arrays, want) {
		t.Fatalf("Arrays = %v, want %v", arrays, want)
	}
	slots, err := s.Slots("b")
	must(err)
	if !slices.Equal(slots, []int{0, 7}) {
		t.Fatalf("Slots(b) = %v", slots)
	}
	if slots, _ := s.Slots("c"); !slices.Equal(slots, []int{MaxSlot}) {
		t.Fatalf("Slots(c) = %v", slots)
	}
	// "a" must not see "a.x"'s slots.
	if slots, _ := s.Slots("a"); !slices.Equal(slots, []int{3}) {
		t.Fatalf("Slots(a) = %v", slots)
	}

	must(s.Clear("b", 0, regions(5, 77)))
	if got := dirty("b", 0); !slices.Equal(got, regions(1, 9)) {
		t.Fatalf("after Clear: %v", got)
	}
	must(s.ClearAll("b", 0))
	if got := dirty("b", 0); len(got) != 0 {
		t.Fatalf("after ClearAll: %v", got)
	}
	if got := dirty("b", 7); !slices.Equal(got, regions(2)) {
		t.Fatalf("ClearAll touched another slot: %v", got)
	}
	must(s.Drop("a"))
	if got := dirty("a", 3); len(got) != 0 {
		t.Fatalf("after Drop: %v", got)
	}
	if got := dirty("a.x", 1); !slices.Equal(got, regions(4)) {
		t.Fatalf("Drop(a) touched a.x: %v", got)
	}

	for _, bad := range []struct {
		array string
		slot  int
	}{{"", 0}, {"x/y", 0}, {"x", -1}} {
		if err := s.Mark(bad.array, bad.slot, regions(1)); err == nil {
			t.Errorf("Mark(%q, %d) accepted", bad.array, bad.slot)
		}
		if _, err := s.Dirty(bad.array, bad.slot); err == nil {
			t.Errorf("Dirty(%q, %d) accepted", bad.array, bad.slot)
		}
	}

	must(s.Close())
	must(s.Close())
	if _, err := s.Dirty("b", 7); !errors.Is(err, ErrClosed) {
		t.Fatalf("Dirty after Close = %v", err)
	}
	if err := s.Mark("b", 7, regions(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Mark after Close = %v", err)
	}
}

// A batch bigger than one badger transaction is split, and every part is
// synced: a crash copy taken when Mark returns holds all of it.
func TestStoreLargeBatch(t *testing.T) {
	dir := t.TempDir() + "/bitmap"
	s, err := OpenStore(dir, StoreConfig{MemTableSize: 1 << 20, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	syncs := 0
	s.afterSync = func(bool, [][]byte) { syncs++ }
	const n = 8000
	all := make([]uint64, n)
	for i := range all {
		all[i] = uint64(i) * 3
	}
	if err := s.Mark("big", 0, all); err != nil {
		t.Fatal(err)
	}
	if syncs < 2 {
		t.Fatalf("%d marks in %d synced transaction(s); the test needs a split", n, syncs)
	}
	crash := t.TempDir() + "/crash"
	copyDir(t, dir, crash)
	cs, err := OpenStore(crash, StoreConfig{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cs.Dirty("big", 0)
	cs.Close()
	if err != nil || !slices.Equal(got, all) {
		t.Fatalf("crash copy holds %d of %d marks (%v)", len(got), n, err)
	}
	if err := s.ClearAll("big", 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Dirty("big", 0); len(got) != 0 {
		t.Fatalf("%d marks left after ClearAll", len(got))
	}
}

func TestStoreLocked(t *testing.T) {
	s, dir := openStore(t)
	_, err := OpenStore(dir, StoreConfig{Logger: quietLogger()})
	if !errors.Is(err, ErrLocked) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("second OpenStore = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), dir) {
		t.Fatalf("error %q does not name the directory", err)
	}
	if _, err := Quarantine(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("Quarantine of an open store = %v, want ErrLocked", err)
	}
	if err := s.Mark("a", 0, regions(1)); err != nil {
		t.Fatalf("the open store broke: %v", err)
	}
}

// imageTxns is how many synced transactions (of two marks each) the store
// images below hold.
const imageTxns = 80

// crashImage returns a copy of an open store's directory holding the same
// marks as cleanImage.
func crashImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir() + "/bitmap"
	s, err := OpenStore(dir, StoreConfig{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range imageTxns {
		if err := s.Mark("arr", i%3, regions(uint64(2*i), uint64(2*i+1))); err != nil {
			t.Fatal(err)
		}
	}
	crash := t.TempDir() + "/crash"
	copyDir(t, dir, crash)
	return crash
}

func cleanImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir() + "/bitmap"
	s, err := OpenStore(dir, StoreConfig{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range imageTxns {
		if err := s.Mark("arr", i%3, regions(uint64(2*i), uint64(2*i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func onlyFile(t *testing.T, dir, suffix string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+suffix))
	if err != nil || len(m) != 1 {
		t.Fatalf("want one *%s in %s, found %v (%v)", suffix, dir, m, err)
	}
	return m[0]
}

func writeAt(t *testing.T, path string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// plant writes a raw key and value with badger directly, bypassing the
// store's checks.
func plant(t *testing.T, dir string, key, value []byte, del bool) {
	t.Helper()
	db, err := badger.Open(badgerOptions(dir, StoreConfig{MemTableSize: 4 << 20, NumMemtables: 2, Logger: quietLogger()}))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		if del {
			return txn.Delete(key)
		}
		return txn.Set(key, value)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

var garbage = []byte("this is not what badger wrote here; 0123456789abcdef")

// TestCorruptStore damages a store in the ways a disk, a file system or an
// operator can and checks that OpenStore reports ErrCorrupt each time,
// never a silently smaller dirty set.
func TestCorruptStore(t *testing.T) {
	tests := []struct {
		name   string
		crash  bool // start from a crash image (logs) instead of a clean close (tables)
		damage func(t *testing.T, dir string)
	}{
		{"unknown file", false, func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "garbage"), garbage, 0o640)
		}},
		{"unknown file in a new directory", false, func(t *testing.T, dir string) {
			os.RemoveAll(dir)
			os.MkdirAll(dir, 0o750)
			os.WriteFile(filepath.Join(dir, "000001.sst.bak"), garbage, 0o640)
		}},
		{"subdirectory", false, func(t *testing.T, dir string) {
			os.Mkdir(filepath.Join(dir, "000009.sst"), 0o750)
		}},
		{"garbage MANIFEST", false, func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "MANIFEST"), garbage, 0o640)
		}},
		{"truncated MANIFEST", false, func(t *testing.T, dir string) {
			truncate(t, filepath.Join(dir, "MANIFEST"), 10)
		}},
		{"missing MANIFEST", false, func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "MANIFEST"))
		}},
		{"garbage KEYREGISTRY", false, func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "KEYREGISTRY"), garbage, 0o640)
		}},
		{"truncated KEYREGISTRY", false, func(t *testing.T, dir string) {
			truncate(t, filepath.Join(dir, "KEYREGISTRY"), 10)
		}},
		{"truncated table", false, func(t *testing.T, dir string) {
			p := onlyFile(t, dir, ".sst")
			fi, _ := os.Stat(p)
			truncate(t, p, fi.Size()/2)
		}},
		{"garbage table", false, func(t *testing.T, dir string) {
			os.WriteFile(onlyFile(t, dir, ".sst"), garbage, 0o640)
		}},
		{"bit flip in a table", false, func(t *testing.T, dir string) {
			p := onlyFile(t, dir, ".sst")
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			writeAt(t, p, 100, []byte{data[100] ^ 0x04})
		}},
		{"missing table", false, func(t *testing.T, dir string) {
			os.Remove(onlyFile(t, dir, ".sst"))
		}},
		{"truncated value log", false, func(t *testing.T, dir string) {
			truncate(t, onlyFile(t, dir, ".vlog"), 5)
		}},
		{"empty value log", false, func(t *testing.T, dir string) {
			truncate(t, onlyFile(t, dir, ".vlog"), 0)
		}},
		{"value log naming an encryption key", false, func(t *testing.T, dir string) {
			writeAt(t, onlyFile(t, dir, ".vlog"), 0, []byte{0, 0, 0, 0, 0, 0, 0, 7})
		}},
		{"truncated log", true, func(t *testing.T, dir string) {
			truncate(t, onlyFile(t, dir, ".mem"), 3000)
		}},
		{"log truncated inside its header", true, func(t *testing.T, dir string) {
			truncate(t, onlyFile(t, dir, ".mem"), 10)
		}},
		{"garbage in the middle of a log", true, func(t *testing.T, dir string) {
			writeAt(t, onlyFile(t, dir, ".mem"), 1000, garbage)
		}},
		{"bit flip in the middle of a log", true, func(t *testing.T, dir string) {
			p := onlyFile(t, dir, ".mem")
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			writeAt(t, p, 2000, []byte{data[2000] ^ 0x04})
		}},
		{"log replaced by garbage", true, func(t *testing.T, dir string) {
			os.WriteFile(onlyFile(t, dir, ".mem"), bytes.Repeat(garbage, 100), 0o640)
		}},
		{"empty log", true, func(t *testing.T, dir string) {
			truncate(t, onlyFile(t, dir, ".mem"), 0)
		}},
		{"missing log", true, func(t *testing.T, dir string) {
			os.Remove(onlyFile(t, dir, ".mem"))
		}},
		{"unknown key", false, func(t *testing.T, dir string) {
			plant(t, dir, []byte("zzz"), nil, false)
		}},
		{"malformed dirty key", false, func(t *testing.T, dir string) {
			plant(t, dir, []byte("d/arr/x"), nil, false)
		}},
		{"dirty key with a value", false, func(t *testing.T, dir string) {
			plant(t, dir, appendDirtyKey(nil, "arr", 0, 5), []byte("x"), false)
		}},
		{"bad geometry record", false, func(t *testing.T, dir string) {
			plant(t, dir, geometryKey("arr"), []byte{0, 0, 0, 0, 0, 0, 0x10, 0}, false)
		}},
		{"other format version", false, func(t *testing.T, dir string) {
			plant(t, dir, []byte(formatKey), []byte("ddraid-bitmap/9"), false)
		}},
		{"format record deleted", false, func(t *testing.T, dir string) {
			plant(t, dir, []byte(formatKey), nil, true)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var dir string
			if tc.crash {
				dir = crashImage(t)
			} else {
				dir = cleanImage(t)
			}
			tc.damage(t, dir)
			s, err := OpenStore(dir, StoreConfig{Logger: quietLogger()})
			if err == nil {
				d, _ := s.Dirty("arr", 0)
				s.Close()
				t.Fatalf("OpenStore accepted the damaged store (slot 0 holds %d marks)", len(d))
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("OpenStore = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the directory", err)
			}
			t.Logf("%v", err)

			// Quarantine moves it aside; a fresh store opens in its place.
			moved, err := Quarantine(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(moved); err != nil || !strings.Contains(moved, ".corrupt-") {
				t.Fatalf("quarantined to %q: %v", moved, err)
			}
			s, err = OpenStore(dir, StoreConfig{Logger: quietLogger()})
			if err != nil {
				t.Fatalf("OpenStore after Quarantine: %v", err)
			}
			if arrays, err := s.Arrays(); err != nil || len(arrays) != 0 {
				t.Fatalf("fresh store lists %v, %v", arrays, err)
			}
			s.Close()
		})
	}
}

// The damage a crash itself does is not corruption: states a crash leaves
// open, with every synced mark.
func TestCrashStatesOpen(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string)
		lost   int // marks of the last transaction that may go
	}{
		{"crash image as is", func(*testing.T, string) {}, 0},
		{"last transaction torn", func(t *testing.T, dir string) {
			p := onlyFile(t, dir, ".mem")
			data, _ := os.ReadFile(p)
			end := walReplay(data)
			// Zero the last transaction's end marker and a few bytes
			// before it, as a crash in the middle of writing it would.
			clear(data[end-30 : end])
			os.WriteFile(p, data, 0o640)
		}, 1},
		{"stale lock file", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "LOCK"), []byte("12345\n"), 0o640)
		}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := crashImage(t)
			tc.damage(t, dir)
			s, err := OpenStore(dir, StoreConfig{Logger: quietLogger()})
			if err != nil {
				t.Fatalf("OpenStore: %v", err)
			}
			defer s.Close()
			total := 0
			for slot := range 3 {
				d, err := s.Dirty("arr", slot)
				if err != nil {
					t.Fatal(err)
				}
				total += len(d)
			}
			if want := 2 * imageTxns; total < want-2*tc.lost || total > want {
				t.Fatalf("%d marks survive, want %d-%d", total, want-2*tc.lost, want)
			}
		})
	}
}

func TestQuarantineMissing(t *testing.T) {
	if _, err := Quarantine(t.TempDir() + "/nothing"); err == nil {
		t.Fatal("Quarantine of a missing directory succeeded")
	}
}

func TestOpenStoreNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o640)
	if _, err := OpenStore(f, StoreConfig{}); err == nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("OpenStore on a file = %v, want a plain error", err)
	}
}

// walLog builds a badger write-ahead log by hand: header, transactions,
// zero tail.
type walLog struct{ buf []byte }

func newWALLog() *walLog { return &walLog{buf: make([]byte, walHeaderSize)} }

func (w *walLog) record(meta byte, key, value []byte) {
	start := len(w.buf)
	w.buf = append(w.buf, meta, 0)
	w.buf = binary.AppendUvarint(w.buf, uint64(len(key)))
	w.buf = binary.AppendUvarint(w.buf, uint64(len(value)))
	w.buf = binary.AppendUvarint(w.buf, 0)
	w.buf = append(w.buf, key...)
	w.buf = append(w.buf, value...)
	w.buf = binary.BigEndian.AppendUint32(w.buf, crc32.Checksum(w.buf[start:], castagnoli))
}

// txn appends a transaction of n sets with commit timestamp ts and returns
// its byte range.
func (w *walLog) txn(ts uint64, n int, fin bool) (start, end int) {
	start = len(w.buf)
	for i := range n {
		key := binary.BigEndian.AppendUint64(fmt.Appendf(nil, "key-%d-%d", ts, i), ^ts)
		w.record(walBitTxn, key, nil)
	}
	if fin {
		w.record(walBitFinTxn, binary.BigEndian.AppendUint64([]byte("!badger!txn"), ^ts), fmt.Appendf(nil, "%d", ts))
	}
	return start, len(w.buf)
}

func (w *walLog) file(zeroTail int) []byte {
	return append(bytes.Clone(w.buf), make([]byte, zeroTail)...)
}

func TestCheckWAL(t *testing.T) {
	build := func(fn func(w *walLog) []byte) []byte {
		w := newWALLog()
		return fn(w)
	}
	tests := []struct {
		name string
		data []byte
		ok   bool
	}{
		{"empty file", nil, false},
		{"header only", make([]byte, walHeaderSize), true},
		{"header plus zeros", make([]byte, 4096), true},
		{"short header", make([]byte, 7), false},
		{"complete transactions", build(func(w *walLog) []byte {
			w.txn(1, 3, true)
			w.txn(2, 1, true)
			return w.file(4096)
		}), true},
		{"truncated by badger to its end", build(func(w *walLog) []byte {
			w.txn(1, 3, true)
			return w.file(0)
		}), true},
		{"last transaction without its end", build(func(w *walLog) []byte {
			w.txn(1, 3, true)
			w.txn(2, 4, false)
			return w.file(4096)
		}), true},
		{"last record half written", build(func(w *walLog) []byte {
			w.txn(1, 3, true)
			_, end := w.txn(2, 2, true)
			d := w.file(4096)
			clear(d[end-5 : end])
			return d
		}), true},
		{"page of the last transaction missing", build(func(w *walLog) []byte {
			w.txn(1, 3, true)
			s, e := w.txn(2, 40, true)
			d := w.file(4096)
			clear(d[s+100 : s+300])
			_ = e
			return d
		}), true},
		{"damage before a complete transaction", build(func(w *walLog) []byte {
			s, _ := w.txn(1, 3, true)
			w.txn(2, 2, true)
			d := w.file(4096)
			d[s+5] ^= 0xff
			return d
		}), false},
		{"damage two transactions back", build(func(w *walLog) []byte {
			w.txn(1, 3, true)
			s, _ := w.txn(2, 2, true)
			w.txn(3, 2, true)
			w.txn(4, 2, true)
			d := w.file(4096)
			d[s+3] ^= 0x01
			return d
		}), false},
		{"cut inside a transaction", build(func(w *walLog) []byte {
			w.txn(1, 3, true)
			_, e := w.txn(2, 3, true)
			return w.file(0)[:e-9]
		}), false},
		{"encryption key in the header", build(func(w *walLog) []byte {
			w.txn(1, 1, true)
			d := w.file(100)
			d[7] = 1
			return d
		}), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkWAL(tc.data)
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("checkWAL = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// FuzzCheckWAL: the log checker never panics on any input.
func FuzzCheckWAL(f *testing.F) {
	w := newWALLog()
	w.txn(1, 2, true)
	w.txn(2, 1, false)
	f.Add(w.file(64))
	f.Add([]byte{})
	f.Add(make([]byte, 30))
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := checkWAL(data); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error without ErrCorrupt: %v", err)
		}
	})
}
