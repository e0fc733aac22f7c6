package raid

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/ddraid/ddraid/blockdev"
	"pgregory.net/rapid"
)

// modelTarget checks a Device against a plain byte slice.
type modelTarget struct {
	dev   blockdev.Device
	model []byte
	bs    int64                            // block size for aligned ops
	trim  func(model []byte, off, n int64) // what Trim does to the model
	name  string                           // prefix for failure messages
}

// trimExact zeroes the model range: devices whose Trim zeroes everything.
func trimExact(model []byte, off, n int64) { clear(model[off : off+n]) }

// trimBlocks returns a model trim that zeroes only whole blocks of bs.
func trimBlocks(bs int64) func(model []byte, off, n int64) {
	return func(model []byte, off, n int64) {
		from, to := (off+bs-1)/bs*bs, (off+n)/bs*bs
		if from < to {
			clear(model[from:to])
		}
	}
}

var modelOps = []string{"write", "write-aligned", "read", "read-aligned", "zero", "zero-aligned", "trim", "flush"}

// step draws and applies one operation.
func (m *modelTarget) step(rt *rapid.T) {
	size := int64(len(m.model))
	op := rapid.SampledFrom(modelOps).Draw(rt, "op")
	var off, n int64
	switch op {
	case "write", "read", "zero", "trim":
		off = rapid.Int64Range(0, size).Draw(rt, "off")
		n = rapid.Int64Range(0, min(3*m.bs+1, size-off)).Draw(rt, "len")
	case "write-aligned", "read-aligned", "zero-aligned":
		blocks := size / m.bs
		b0 := rapid.Int64Range(0, blocks-1).Draw(rt, "block")
		nb := rapid.Int64Range(1, min(blocks-b0, 40)).Draw(rt, "blocks")
		off, n = b0*m.bs, nb*m.bs
	}
	switch op {
	case "write", "write-aligned":
		p := make([]byte, n)
		fill(p, rapid.Uint64().Draw(rt, "seed"))
		if w, err := m.dev.WriteAt(p, off); err != nil || w != len(p) {
			rt.Fatalf("%s: write %d@%d: n=%d err=%v", m.name, n, off, w, err)
		}
		copy(m.model[off:], p)
	case "read", "read-aligned":
		m.checkRange(rt, off, n)
	case "zero", "zero-aligned":
		if err := m.dev.Zero(off, n); err != nil {
			rt.Fatalf("%s: zero %d@%d: %v", m.name, n, off, err)
		}
		clear(m.model[off : off+n])
	case "trim":
		if err := m.dev.Trim(off, n); err != nil {
			rt.Fatalf("%s: trim %d@%d: %v", m.name, n, off, err)
		}
		m.trim(m.model, off, n)
	case "flush":
		if err := m.dev.Flush(); err != nil {
			rt.Fatalf("%s: flush: %v", m.name, err)
		}
	}
}

// checkRange reads [off, off+n) and compares it with the model.
func (m *modelTarget) checkRange(t interface{ Fatalf(string, ...any) }, off, n int64) {
	p := make([]byte, n)
	if r, err := m.dev.ReadAt(p, off); err != nil || r != len(p) {
		t.Fatalf("%s: read %d@%d: n=%d err=%v", m.name, n, off, r, err)
	}
	if i := firstDiff(p, m.model[off:off+n]); i >= 0 {
		t.Fatalf("%s: read %d@%d: byte %d (offset %d) is %#x, model has %#x", m.name, n, off, i, off+int64(i), p[i], m.model[off+int64(i)])
	}
}

// checkAll reads the whole device in one request and compares it.
func (m *modelTarget) checkAll(t interface{ Fatalf(string, ...any) }) {
	m.checkRange(t, 0, int64(len(m.model)))
}

// firstDiff returns the first index where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkOutOfRange verifies that requests beyond the device fail with
// ErrOutOfRange and change nothing.
func checkOutOfRange(t interface {
	Fatalf(string, ...any)
	Helper()
}, m *modelTarget) {
	t.Helper()
	size := int64(len(m.model))
	p := make([]byte, 2*m.bs)
	fill(p, 99)
	cases := []struct {
		name string
		err  error
	}{
		{"read past end", func() error { _, err := m.dev.ReadAt(p, size-m.bs); return err }()},
		{"read negative", func() error { _, err := m.dev.ReadAt(p[:1], -1); return err }()},
		{"write past end", func() error { _, err := m.dev.WriteAt(p, size-m.bs); return err }()},
		{"write at end", func() error { _, err := m.dev.WriteAt(p[:1], size); return err }()},
		{"zero past end", m.dev.Zero(size-1, 2)},
		{"trim past end", m.dev.Trim(0, size+1)},
		{"zero negative", m.dev.Zero(-m.bs, m.bs)},
	}
	for _, c := range cases {
		if !errors.Is(c.err, blockdev.ErrOutOfRange) {
			t.Fatalf("%s: %s: got %v, want ErrOutOfRange", m.name, c.name, c.err)
		}
	}
	m.checkAll(t)
}

func geomName(g Geometry) string {
	g = g.WithDefaults()
	s := fmt.Sprintf("%dx%d-%s", g.Members, g.BlockSize, g.Parity)
	if g.Parity == ParityRotating {
		s += fmt.Sprintf("%d", g.ParityChunk)
	}
	return s
}
