package blockdev_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

type ext = blockdev.Extent

const (
	hole = blockdev.ExtentHole
	zero = blockdev.ExtentZero
	hz   = hole | zero
)

// expand turns extents into one flags value per byte, for comparison with
// naive models.
func expand(es []ext) []blockdev.ExtentFlags {
	var out []blockdev.ExtentFlags
	for _, e := range es {
		for range e.Length {
			out = append(out, e.Flags)
		}
	}
	return out
}

// checkWellFormed fails unless es covers exactly length bytes with
// positive lengths and no two neighbours share flags.
func checkWellFormed(t *testing.T, es []ext, length int64) {
	t.Helper()
	var sum int64
	for i, e := range es {
		if e.Length <= 0 {
			t.Fatalf("extent %d has length %d: %v", i, e.Length, es)
		}
		if i > 0 && es[i-1].Flags == e.Flags {
			t.Fatalf("extents %d and %d share flags %d: %v", i-1, i, e.Flags, es)
		}
		sum += e.Length
	}
	if sum != length {
		t.Fatalf("extents sum to %d, want %d: %v", sum, length, es)
	}
}

func TestAppendExtent(t *testing.T) {
	var es []ext
	es = blockdev.AppendExtent(es, ext{Length: 5, Flags: hz})
	es = blockdev.AppendExtent(es, ext{Length: 3, Flags: hz})
	es = blockdev.AppendExtent(es, ext{Length: 0, Flags: 0})
	es = blockdev.AppendExtent(es, ext{Length: 2, Flags: 0})
	if want := []ext{{8, hz}, {2, 0}}; !slices.Equal(es, want) {
		t.Fatalf("got %v, want %v", es, want)
	}
}

func TestAlignExtents(t *testing.T) {
	cases := []struct {
		name  string
		src   []ext
		off   int64
		align int64
		want  []ext
	}{
		{"aligned already", []ext{{4096, hz}, {8192, 0}}, 0, 4096, []ext{{4096, hz}, {8192, 0}}},
		{"straddling granule loses hole", []ext{{1000, hz}, {3096, 0}, {4096, hz}}, 0, 4096, []ext{{4096, 0}, {4096, hz}}},
		{"zero kept where both zero", []ext{{1000, hz}, {3096, zero}}, 0, 4096, []ext{{4096, zero}}},
		{"unaligned start kept", []ext{{100, hz}, {4096, 0}}, 4000, 4096, []ext{{96, hz}, {4100, 0}}},
		{"unaligned end kept", []ext{{4096, 0}, {10, hz}}, 0, 4096, []ext{{4096, 0}, {10, hz}}},
		{"tiny inside one granule", []ext{{10, hz}, {10, 0}}, 5, 4096, []ext{{20, 0}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := blockdev.AlignExtents(nil, c.src, c.off, c.align)
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

// TestAlignExtentsModel compares AlignExtents with a byte-by-byte model on
// random inputs.
func TestAlignExtentsModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 2000; iter++ {
		align := int64(1) << rng.IntN(5)
		off := rng.Int64N(40)
		var src []ext
		for n := rng.IntN(6) + 1; n > 0; n-- {
			src = append(src, ext{Length: rng.Int64N(20) + 1, Flags: blockdev.ExtentFlags(rng.IntN(4))})
		}
		per := expand(src)
		end := off + int64(len(per))
		// Model: every granule gets the AND of its bytes' flags.
		want := make([]blockdev.ExtentFlags, len(per))
		for s := off; s < end; {
			e := min(end, (s/align+1)*align)
			f := ^blockdev.ExtentFlags(0)
			for i := s; i < e; i++ {
				f &= per[i-off]
			}
			for i := s; i < e; i++ {
				want[i-off] = f
			}
			s = e
		}
		got := blockdev.AlignExtents(nil, src, off, align)
		checkWellFormed(t, got, int64(len(per)))
		if g := expand(got); !slices.Equal(g, want) {
			t.Fatalf("off %d align %d src %v:\n got %v\nwant %v", off, align, src, g, want)
		}
		// Inner boundaries are aligned.
		pos := off
		for _, e := range got[:len(got)-1] {
			pos += e.Length
			if pos%align != 0 {
				t.Fatalf("boundary %d not aligned to %d: %v", pos, align, got)
			}
		}
	}
}

func TestMemExtents(t *testing.T) {
	m := blockdev.NewMem(64<<10, 512)
	copy(m.Bytes()[8192:], "data")
	copy(m.Bytes()[20000:], "more")
	es, err := m.Extents(nil, 0, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	want := []ext{{8192, zero}, {4096, 0}, {4096, zero}, {4096, 0}, {45056, zero}}
	if !slices.Equal(es, want) {
		t.Fatalf("got %v, want %v", es, want)
	}
	es, err = m.Extents(nil, 8000, 300)
	if err != nil || !slices.Equal(es, []ext{{192, zero}, {108, 0}}) {
		t.Fatalf("unaligned: %v, %v", es, err)
	}
	if _, err := m.Extents(nil, 60<<10, 8192); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("out of range: %v", err)
	}
	if !m.CanFastZero() {
		t.Error("Mem cannot fast zero")
	}
	if err := m.ZeroNoHole(8192, 4096); err != nil || m.Bytes()[8192] != 0 {
		t.Fatalf("ZeroNoHole: %v", err)
	}
}

// sparseFile creates a file of size bytes in dir with data at the given
// 64 KiB-aligned offsets (64 KiB each), opened as a File.
func sparseFile(t *testing.T, dir string, size int64, dataAt ...int64) *blockdev.File {
	t.Helper()
	path := filepath.Join(dir, "f")
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, CreateSize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	for _, at := range dataAt {
		if _, err := f.WriteAt(bytes.Repeat([]byte{7}, 64<<10), at); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// fileDirs are a disk file system and tmpfs, which differ in what
// fallocate supports.
func fileDirs(t *testing.T) map[string]string {
	dirs := map[string]string{"disk": t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "extents-test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs["tmpfs"] = d
	}
	return dirs
}

func TestFileExtents(t *testing.T) {
	for name, dir := range fileDirs(t) {
		t.Run(name, func(t *testing.T) {
			const size = 1 << 20
			f := sparseFile(t, dir, size, 128<<10, 512<<10)
			es, err := f.Extents(nil, 0, size)
			if err != nil {
				t.Fatal(err)
			}
			want := []ext{{128 << 10, hz}, {64 << 10, 0}, {320 << 10, hz}, {64 << 10, 0}, {448 << 10, hz}}
			if !slices.Equal(es, want) {
				t.Fatalf("got %v, want %v", es, want)
			}
			// A window inside, and a zero-length query.
			es, err = f.Extents(nil, 100<<10, 100<<10)
			if err != nil || !slices.Equal(es, []ext{{28 << 10, hz}, {64 << 10, 0}, {8 << 10, hz}}) {
				t.Fatalf("window: %v, %v", es, err)
			}
			if es, err := f.Extents(nil, 0, 0); err != nil || len(es) != 0 {
				t.Fatalf("empty query: %v, %v", es, err)
			}
			if _, err := f.Extents(nil, size-512, 1024); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Fatalf("out of range: %v", err)
			}
			// Zero punches a hole; it shows.
			if err := f.Zero(128<<10, 64<<10); err != nil {
				t.Fatal(err)
			}
			es, _ = f.Extents(nil, 0, size)
			if want := []ext{{512 << 10, hz}, {64 << 10, 0}, {448 << 10, hz}}; !slices.Equal(es, want) {
				t.Fatalf("after Zero: %v, want %v", es, want)
			}
			if !f.CanFastZero() {
				t.Error("a writable regular file cannot fast zero")
			}

			// Section and Delay pass extents through, shifted.
			sec, err := blockdev.NewSection(f, 256<<10, 512<<10)
			if err != nil {
				t.Fatal(err)
			}
			es, _ = sec.Extents(nil, 0, 512<<10)
			if want := []ext{{256 << 10, hz}, {64 << 10, 0}, {192 << 10, hz}}; !slices.Equal(es, want) {
				t.Fatalf("section: %v, want %v", es, want)
			}
			if _, err := sec.Extents(nil, 500<<10, 100<<10); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Fatalf("section out of range: %v", err)
			}
			dl := blockdev.NewDelay(sec, time.Millisecond, time.Millisecond)
			if es2, _ := dl.Extents(nil, 0, 512<<10); !slices.Equal(es2, es) {
				t.Fatalf("delay: %v, want %v", es2, es)
			}
			if !sec.CanFastZero() || !dl.CanFastZero() {
				t.Error("wrappers hide fast zero")
			}
		})
	}
}

// allocatedBytes returns the bytes a file has allocated on disk.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileZeroNoHole(t *testing.T) {
	for name, dir := range fileDirs(t) {
		t.Run(name, func(t *testing.T) {
			f := sparseFile(t, dir, 1<<20, 0)
			before := allocatedBytes(t, f.Path())
			// Zero data and a hole without leaving holes: both read as
			// zeroes, and the file has more space allocated, not less.
			dl := blockdev.NewDelay(f, 0, 0)
			if err := dl.ZeroNoHole(32<<10, 256<<10); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 1<<20)
			if _, err := f.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:32<<10], bytes.Repeat([]byte{7}, 32<<10)) || !bytes.Equal(got[32<<10:], make([]byte, 1<<20-32<<10)) {
				t.Fatal("contents after ZeroNoHole are wrong")
			}
			if after := allocatedBytes(t, f.Path()); after < before+192<<10 {
				t.Fatalf("allocated %d bytes before, %d after: the range was not kept allocated", before, after)
			}
		})
	}
}

func TestFileReadOnlyCannotZero(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.CanFastZero() {
		t.Error("read-only file claims fast zero")
	}
	if err := f.ZeroNoHole(0, 4096); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Errorf("ZeroNoHole on a read-only file: %v", err)
	}
	es, err := f.Extents(nil, 0, 8192)
	if err != nil || !slices.Equal(es, []ext{{8192, 0}}) {
		t.Errorf("extents of a written file: %v, %v", es, err)
	}
}

// plainDev hides every optional interface of the device it wraps.
type plainDev struct{ blockdev.Device }

func TestOptionalFallbacks(t *testing.T) {
	d := plainDev{blockdev.NewMem(8192, 512)}
	es, err := blockdev.ExtentsOf(d, nil, 512, 4096)
	if err != nil || !slices.Equal(es, []ext{{4096, 0}}) {
		t.Fatalf("ExtentsOf a plain device: %v, %v", es, err)
	}
	if _, err := blockdev.ExtentsOf(d, nil, 8000, 4096); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("ExtentsOf out of range: %v", err)
	}
	if blockdev.CanFastZero(d) {
		t.Error("plain device claims fast zero")
	}
	if err := blockdev.ZeroNoHole(d, 0, 512); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Errorf("ZeroNoHole on a plain device: %v", err)
	}
	dl := blockdev.NewDelay(d, 0, 0)
	if err := dl.ZeroNoHole(0, 512); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Errorf("Delay.ZeroNoHole over a plain device: %v", err)
	}
}
