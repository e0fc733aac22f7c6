// Package blockdevtest checks that a blockdev.Device keeps the Device
// contract, against a plain byte-slice model. Every backend, array and
// wrapper runs it.
package blockdevtest

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// Conformance runs the contract checks on a fresh, zero-filled device made
// by open. The device must be at least 64 KiB and writable.
func Conformance(t *testing.T, open func(t *testing.T) blockdev.Device) {
	t.Run("RandomIO", func(t *testing.T) { randomIO(t, open(t)) })
	t.Run("OutOfRange", func(t *testing.T) { outOfRange(t, open(t)) })
	t.Run("Concurrent", func(t *testing.T) { concurrent(t, open(t)) })
}

func randomIO(t *testing.T, d blockdev.Device) {
	defer d.Close()
	size := d.Size()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, uint64(size)))
	maxLen := min(size, 3*int64(d.BlockSize())+4096)
	for i := range 300 {
		off := rng.Int64N(size)
		n := rng.Int64N(min(maxLen, size-off) + 1)
		switch op := rng.IntN(10); {
		case op < 5:
			p := make([]byte, n)
			fillRand(rng, p)
			if _, err := d.WriteAt(p, off); err != nil {
				t.Fatalf("op %d: write %d+%d: %v", i, off, n, err)
			}
			copy(model[off:], p)
		case op < 6:
			if err := d.Zero(off, n); err != nil {
				t.Fatalf("op %d: zero %d+%d: %v", i, off, n, err)
			}
			clear(model[off : off+n])
		case op < 7:
			if err := d.Flush(); err != nil {
				t.Fatalf("op %d: flush: %v", i, err)
			}
		default:
			p := make([]byte, n)
			if _, err := d.ReadAt(p, off); err != nil {
				t.Fatalf("op %d: read %d+%d: %v", i, off, n, err)
			}
			if !bytes.Equal(p, model[off:off+n]) {
				t.Fatalf("op %d: read %d+%d differs from model", i, off, n)
			}
		}
	}
	all := make([]byte, size)
	if _, err := d.ReadAt(all, 0); err != nil {
		t.Fatalf("read all: %v", err)
	}
	if i := firstDiff(all, model); i >= 0 {
		t.Fatalf("device differs from model at byte %d", i)
	}
}

func outOfRange(t *testing.T, d blockdev.Device) {
	defer d.Close()
	size := d.Size()
	buf := make([]byte, 1024)
	cases := []struct {
		name string
		off  int64
	}{{"past end", size - 512}, {"at end", size}, {"negative", -512}}
	for _, c := range cases {
		if _, err := d.ReadAt(buf, c.off); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("read %s: got %v, want ErrOutOfRange", c.name, err)
		}
		if _, err := d.WriteAt(buf, c.off); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("write %s: got %v, want ErrOutOfRange", c.name, err)
		}
		if err := d.Zero(c.off, 1024); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("zero %s: got %v, want ErrOutOfRange", c.name, err)
		}
	}
	// Nothing may have been written by the refused requests.
	tail := make([]byte, 512)
	if _, err := d.ReadAt(tail, size-512); err != nil {
		t.Fatalf("read tail: %v", err)
	}
	if !bytes.Equal(tail, make([]byte, 512)) {
		t.Fatal("a refused write changed the device")
	}
}

// concurrent writes disjoint blocks from many goroutines, then reads them.
func concurrent(t *testing.T, d blockdev.Device) {
	defer d.Close()
	bs := int64(max(d.BlockSize(), 512))
	n := min(d.Size()/bs, 64)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			p := bytes.Repeat([]byte{byte(i + 1)}, int(bs))
			if _, err := d.WriteAt(p, i*bs); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent write: %v", err)
	}
	for i := range n {
		p := make([]byte, bs)
		if _, err := d.ReadAt(p, i*bs); err != nil {
			t.Fatalf("read block %d: %v", i, err)
		}
		if !bytes.Equal(p, bytes.Repeat([]byte{byte(i + 1)}, int(bs))) {
			t.Fatalf("block %d holds the wrong data", i)
		}
	}
}

func fillRand(rng *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
