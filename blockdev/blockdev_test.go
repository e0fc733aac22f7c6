package blockdev_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/blockdevtest"
)

const testSize = 1 << 20

func TestMemConformance(t *testing.T) {
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device { return blockdev.NewMem(testSize, 512) })
}

func TestFileConformance(t *testing.T) {
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "buffered", true: "direct"}[direct]
		t.Run(name, func(t *testing.T) {
			blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
				path := filepath.Join(t.TempDir(), "m")
				d, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, CreateSize: testSize, Direct: direct})
				if err != nil {
					t.Fatal(err)
				}
				return d
			})
		})
	}
}

func TestSectionConformance(t *testing.T) {
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
		m := blockdev.NewMem(testSize+8192, 512)
		s, err := blockdev.NewSection(m, 4096, testSize)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestSectionDoesNotTouchOutside(t *testing.T) {
	m := blockdev.NewMem(3*4096, 512)
	s, err := blockdev.NewSection(m, 4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	for i := range p {
		p[i] = 0xee
	}
	if _, err := s.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range m.Bytes() {
		inside := i >= 4096 && i < 8192
		if (b == 0xee) != inside {
			t.Fatalf("byte %d = %#x, inside=%v", i, b, inside)
		}
	}
	if _, err := blockdev.NewSection(m, 8192, 8192); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("section past the end: got %v", err)
	}
}

func TestCheckRange(t *testing.T) {
	cases := []struct {
		off, n, size int64
		ok           bool
	}{
		{0, 0, 0, true}, {0, 10, 10, true}, {10, 0, 10, true}, {5, 6, 10, false},
		{-1, 1, 10, false}, {0, -1, 10, false}, {11, 0, 10, false},
		{1 << 62, 1 << 62, 1 << 62, false}, {9223372036854775807, 1, 10, false},
	}
	for _, c := range cases {
		err := blockdev.CheckRange(c.off, c.n, c.size)
		if (err == nil) != c.ok {
			t.Errorf("CheckRange(%d,%d,%d) = %v, want ok=%v", c.off, c.n, c.size, err, c.ok)
		}
	}
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := blockdev.OpenFile(filepath.Join(dir, "missing"), blockdev.FileOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v", err)
	}
	if _, err := blockdev.OpenFile(dir, blockdev.FileOptions{}); err == nil {
		t.Error("a directory opened as a device")
	}
	path := filepath.Join(dir, "ro")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt(make([]byte, 512), 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Errorf("write to read-only: got %v", err)
	}
	// Create must not truncate an existing file.
	d2, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, CreateSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if d2.Size() != 4096 {
		t.Errorf("existing file resized to %d", d2.Size())
	}
	d2.Close()
	if _, err := d2.ReadAt(make([]byte, 1), 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Errorf("read after close: got %v", err)
	}
}

func TestFileZeroPunchesHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m")
	d, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, CreateSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := make([]byte, 4<<20)
	for i := range p {
		p[i] = 1
	}
	if _, err := d.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	before := allocated(t, path)
	if err := d.Zero(0, 4<<20); err != nil {
		t.Fatal(err)
	}
	if after := allocated(t, path); after >= before {
		t.Errorf("zero did not free space: %d -> %d bytes", before, after)
	}
	q := make([]byte, 4<<20)
	if _, err := d.ReadAt(q, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range q {
		if b != 0 {
			t.Fatalf("byte %d not zero after Zero", i)
		}
	}
}

func TestDelayConformance(t *testing.T) {
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
		return blockdev.NewDelay(blockdev.NewMem(testSize, 512), 0, 0)
	})
}

func TestStatsConformanceAndCounts(t *testing.T) {
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
		return blockdev.NewStats(blockdev.NewMem(testSize, 512))
	})
	s := blockdev.NewStats(blockdev.NewMem(8192, 512))
	s.WriteAt(make([]byte, 4096), 0)
	s.ReadAt(make([]byte, 1024), 0)
	s.ReadAt(make([]byte, 1024), 8000) // out of range: an error, no bytes
	s.Flush()
	s.Zero(0, 512)
	got := s.Snapshot()
	want := blockdev.IOStats{Reads: 2, ReadBytes: 1024, Writes: 1, WriteBytes: 4096, Flushes: 1, Zeroes: 1, Errors: 1}
	if got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
	if s.Ops() != 4 {
		t.Fatalf("ops %d", s.Ops())
	}
}

func TestSwap(t *testing.T) {
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
		return blockdev.NewSwap(blockdev.NewMem(testSize, 512))
	})
	a, b := blockdev.NewMem(4096, 512), blockdev.NewMem(4096, 512)
	s := blockdev.NewSwap(a)
	s.WriteAt([]byte{1}, 0)
	if old := s.Set(b); old != a {
		t.Fatal("Set returned the wrong device")
	}
	s.WriteAt([]byte{2}, 0)
	if a.Bytes()[0] != 1 || b.Bytes()[0] != 2 {
		t.Fatalf("writes went to the wrong device: %d %d", a.Bytes()[0], b.Bytes()[0])
	}
}
