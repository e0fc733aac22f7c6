package blockdev_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// vecShape builds a buffer list: one buffer per length, filled from rng.
func vecShape(rng *rand.Rand, lens ...int) [][]byte {
	bufs := make([][]byte, len(lens))
	for i, n := range lens {
		bufs[i] = make([]byte, n)
		for j := range bufs[i] {
			bufs[i][j] = byte(rng.Uint32())
		}
	}
	return bufs
}

func repeatLen(n, l int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = l
	}
	return out
}

func openTestFile(t *testing.T, direct bool) *blockdev.File {
	t.Helper()
	d, err := blockdev.OpenFile(filepath.Join(t.TempDir(), "m"), blockdev.FileOptions{Create: true, CreateSize: testSize, Direct: direct})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// vecRecorder is a Mem that can gather, and counts how often it was asked
// to.
type vecRecorder struct {
	*blockdev.Mem
	calls int
}

func (r *vecRecorder) WriteVAt(bufs [][]byte, off int64) (int, error) {
	r.calls++
	var all []byte
	for _, b := range bufs {
		all = append(all, b...)
	}
	return r.Mem.WriteAt(all, off)
}

// TestWriteV writes buffer lists of many shapes through every device kind
// and checks the device against a model: the bytes of the concatenation
// at the offset, nothing else changed.
func TestWriteV(t *testing.T) {
	devices := vectorDevices()
	cases := vectorCases()
	for _, dv := range devices {
		for _, tc := range cases {
			t.Run(dv.name+"/"+tc.name, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(1, uint64(len(tc.lens))))
				d := dv.open(t)
				model := make([]byte, testSize)
				for i := range model {
					model[i] = byte(i * 7)
				}
				if _, err := d.WriteAt(model, 0); err != nil {
					t.Fatal(err)
				}
				bufs := vecShape(rng, tc.lens...)
				var want []byte
				for _, b := range bufs {
					want = append(want, b...)
				}
				n, err := blockdev.WriteV(d, bufs, tc.off)
				if err != nil || n != len(want) {
					t.Fatalf("WriteV = %d, %v; want %d, nil", n, err, len(want))
				}
				copy(model[tc.off:], want)
				got := make([]byte, testSize)
				if _, err := d.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, model) {
					i := 0
					for got[i] == model[i] {
						i++
					}
					t.Fatalf("device differs from the model at byte %d", i)
				}
			})
		}
	}
}

func TestWriteVErrors(t *testing.T) {
	closed := func(t *testing.T) blockdev.Device {
		d := openTestFile(t, false)
		d.Close()
		return d
	}
	readOnly := func(t *testing.T) blockdev.Device {
		path := filepath.Join(t.TempDir(), "ro")
		d, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, CreateSize: testSize})
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		d, err = blockdev.OpenFile(path, blockdev.FileOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	section := func(t *testing.T) blockdev.Device {
		s, err := blockdev.NewSection(openTestFile(t, false), 4096, 8192)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name string
		open func(t *testing.T) blockdev.Device
		off  int64
		lens []int
		want error
	}{
		{"file past the end", func(t *testing.T) blockdev.Device { return openTestFile(t, false) }, testSize - 512, []int{512, 1}, blockdev.ErrOutOfRange},
		{"file negative offset", func(t *testing.T) blockdev.Device { return openTestFile(t, false) }, -512, []int{512}, blockdev.ErrOutOfRange},
		{"section past its end", section, 4096, []int{4096, 512}, blockdev.ErrOutOfRange},
		{"closed file", closed, 0, []int{512, 512}, blockdev.ErrClosed},
		{"read-only file", readOnly, 0, []int{512, 512}, blockdev.ErrReadOnly},
		{"mem past the end", func(t *testing.T) blockdev.Device { return blockdev.NewMem(4096, 512) }, 0, []int{4096, 1}, blockdev.ErrOutOfRange},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.open(t)
			n, err := blockdev.WriteV(d, vecShape(rand.New(rand.NewPCG(2, 3)), tc.lens...), tc.off)
			if n != 0 || !errors.Is(err, tc.want) {
				t.Fatalf("WriteV = %d, %v; want 0 and an error wrapping %v", n, err, tc.want)
			}
		})
	}
}

// TestWriteVPassesThrough checks that the wrappers hand a gathered write
// to the device below as one WriteVAt, and that Stats counts it as one
// write of all its bytes.
func TestWriteVPassesThrough(t *testing.T) {
	rec := &vecRecorder{Mem: blockdev.NewMem(testSize+4096, 512)}
	sec, err := blockdev.NewSection(rec, 4096, testSize)
	if err != nil {
		t.Fatal(err)
	}
	st := blockdev.NewStats(sec)
	d := blockdev.NewSwap(blockdev.NewDelay(st, 0, 0))
	bufs := vecShape(rand.New(rand.NewPCG(4, 5)), 512, 1024, 512)
	if _, err := blockdev.WriteV(d, bufs, 512); err != nil {
		t.Fatal(err)
	}
	if rec.calls != 1 {
		t.Fatalf("the device below got %d WriteVAt calls, want 1", rec.calls)
	}
	s := st.Snapshot()
	if s.Writes != 1 || s.WriteBytes != 2048 {
		t.Fatalf("stats: %d writes of %d bytes, want 1 of 2048", s.Writes, s.WriteBytes)
	}
	got := make([]byte, 2048)
	if _, err := rec.ReadAt(got, 4096+512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(append(append([]byte(nil), bufs[0]...), bufs[1]...), bufs[2]...)) {
		t.Fatal("data at the section offset differs from what was written")
	}
}

// benchWriteV writes 256 KiB at a time as 256 fragments of 1 KiB taken
// from 1 MiB of blocks (what a five-member raid35 member write looks like),
// to a file in dir (TMPDIR when empty): with gathered writes when gather
// is set, else by copying the fragments into one buffer and WriteAt.
func benchWriteV(b *testing.B, gather bool) {
	dir := os.Getenv("BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	path := filepath.Join(dir, fmt.Sprintf("ddraid-benchv-%d", os.Getpid()))
	defer os.Remove(path)
	d, err := blockdev.OpenFile(path, blockdev.FileOptions{Create: true, CreateSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	src := make([]byte, 1<<20)
	bufs := make([][]byte, 256)
	for i := range bufs {
		bufs[i] = src[i*4096 : i*4096+1024]
	}
	flat := make([]byte, 256<<10)
	b.SetBytes(256 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		off := int64(i%256) << 18
		if gather {
			_, err = blockdev.WriteV(d, bufs, off)
		} else {
			for j, p := range bufs {
				copy(flat[j*1024:], p)
			}
			_, err = d.WriteAt(flat, off)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFileWriteV256x1k(b *testing.B)      { benchWriteV(b, true) }
func BenchmarkFileCopyWriteAt256x1k(b *testing.B) { benchWriteV(b, false) }

// vectorDevice is a device kind the vector tests run on.
type vectorDevice struct {
	name string
	open func(t *testing.T) blockdev.Device
}

func vectorDevices() []vectorDevice {
	return []vectorDevice{
		{"file", func(t *testing.T) blockdev.Device { return openTestFile(t, false) }},
		{"file direct", func(t *testing.T) blockdev.Device { return openTestFile(t, true) }},
		{"mem (no WriteVAt)", func(t *testing.T) blockdev.Device { return blockdev.NewMem(testSize, 512) }},
		{"swap stats section file", func(t *testing.T) blockdev.Device {
			s, err := blockdev.NewSection(openTestFile(t, false), 0, testSize)
			if err != nil {
				t.Fatal(err)
			}
			return blockdev.NewSwap(blockdev.NewStats(s))
		}},
		{"delay mem", func(t *testing.T) blockdev.Device { return blockdev.NewDelay(blockdev.NewMem(testSize, 512), 0, 0) }},
	}
}

// vectorCase is a buffer list shape at an offset.
type vectorCase struct {
	name string
	off  int64
	lens []int
}

func vectorCases() []vectorCase {
	return []vectorCase{
		{"no buffers", 4096, nil},
		{"one buffer", 4096, []int{4096}},
		{"empty buffers between", 512, []int{0, 1024, 0, 0, 512, 0}},
		{"fragments of blocks", 8192, repeatLen(64, 1024)},
		{"unaligned lengths", 1000, []int{3, 700, 1, 4096, 77}},
		{"more than IOV_MAX", 0, repeatLen(1500, 512)},
		{"many small", 12345, repeatLen(3000, 7)},
		{"up to the end", testSize - 3*512, repeatLen(3, 512)},
	}
}

// TestReadV reads buffer lists of every shape through every device kind:
// each buffer gets its bytes of the device, in order.
func TestReadV(t *testing.T) {
	for _, dv := range vectorDevices() {
		for _, tc := range vectorCases() {
			t.Run(dv.name+"/"+tc.name, func(t *testing.T) {
				d := dv.open(t)
				model := make([]byte, testSize)
				for i := range model {
					model[i] = byte(i*7 + i>>9)
				}
				if _, err := d.WriteAt(model, 0); err != nil {
					t.Fatal(err)
				}
				bufs := vecShape(rand.New(rand.NewPCG(2, uint64(len(tc.lens)))), tc.lens...)
				n, err := blockdev.ReadV(d, bufs, tc.off)
				total := 0
				for _, b := range bufs {
					total += len(b)
				}
				if err != nil || n != total {
					t.Fatalf("ReadV = %d, %v; want %d, nil", n, err, total)
				}
				at := tc.off
				for k, b := range bufs {
					if !bytes.Equal(b, model[at:at+int64(len(b))]) {
						t.Fatalf("buffer %d (%d bytes at %d) differs from the device", k, len(b), at)
					}
					at += int64(len(b))
				}
			})
		}
	}
}

func TestReadVErrors(t *testing.T) {
	d := openTestFile(t, false)
	if _, err := blockdev.ReadV(d, [][]byte{make([]byte, 512), make([]byte, 1024)}, testSize-1024); err == nil {
		t.Error("ReadV past the end: no error")
	}
	if _, err := blockdev.ReadV(d, [][]byte{make([]byte, 512)}, -512); err == nil {
		t.Error("ReadV at a negative offset: no error")
	}
	d.Close()
	if _, err := blockdev.ReadV(d, [][]byte{make([]byte, 512), make([]byte, 512)}, 0); err == nil {
		t.Error("ReadV on a closed file: no error")
	}
}
