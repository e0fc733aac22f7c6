package nbd

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"

	"pgregory.net/rapid"
)

// The export's minimum block size, and a size that ends in a partial block.
const (
	alignBS   = 4096
	alignSize = 10*alignBS + 1536
)

// dialBlockSizes connects a Client that asked for the block sizes, so the
// test server enforces its minimum on it.
func dialBlockSizes(t testing.TB, addr, export string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClientWith(ctx, nc, ClientOptions{Export: export, BlockSizes: true})
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if c.align != alignBS {
		t.Fatalf("client keeps to %d-byte blocks, want %d", c.align, alignBS)
	}
	return c
}

// alignOp is one request and what it does to the model.
type alignOp struct {
	op       string // read, write, zero, trim
	off, len int64
}

// fataler is what apply needs of *testing.T and *rapid.T.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

// apply runs o on c and on the model, and for reads compares what came
// back.
func (o alignOp) apply(t fataler, c *Client, model []byte, seed byte) {
	t.Helper()
	var err error
	switch o.op {
	case "read":
		got := make([]byte, o.len)
		_, err = c.ReadAt(got, o.off)
		if err == nil && !bytes.Equal(got, model[o.off:o.off+o.len]) {
			t.Fatalf("read %d bytes at %d: wrong data", o.len, o.off)
		}
	case "write":
		p := pattern(int(o.len), seed)
		_, err = c.WriteAt(p, o.off)
		copy(model[o.off:], p)
	case "zero":
		err = c.Zero(o.off, o.len)
		clear(model[o.off : o.off+o.len])
	case "trim":
		err = c.Trim(o.off, o.len)
		// Only the whole blocks inside are trimmed; the memory device
		// zeroes what it trims.
		lo := (o.off + alignBS - 1) / alignBS * alignBS
		hi := (o.off + o.len) / alignBS * alignBS
		if o.off+o.len == alignSize {
			hi = alignSize
		}
		if lo < hi {
			clear(model[lo:hi])
		}
	}
	if err != nil {
		t.Fatalf("%s %d bytes at %d: %v", o.op, o.len, o.off, err)
	}
}

// TestAlignedClient: a client that asked for the block sizes serves
// requests of any offset and length from a server that refuses misaligned
// ones, and they do exactly what they would on the device.
func TestAlignedClient(t *testing.T) {
	cases := []alignOp{
		{"write", 100, 200},                      // inside one block
		{"write", alignBS - 10, 20},              // across a block boundary
		{"write", 3*alignBS + 7, 3*alignBS + 11}, // head, whole blocks, tail
		{"write", 2 * alignBS, alignBS},          // whole block
		{"write", 10*alignBS + 5, 1531},          // misaligned, to the export's end
		{"write", 10 * alignBS, 1536},            // the short last block
		{"read", 1, 1},
		{"read", alignBS - 10, 20},
		{"read", 7, alignSize - 7},
		{"read", 0, alignSize},
		{"zero", 50, 10},
		{"zero", alignBS + 1, 2*alignBS + 2},
		{"zero", 9*alignBS + 3, alignSize - 9*alignBS - 3},
		{"trim", 10, 100},                    // no whole block: nothing
		{"trim", alignBS - 1, 2*alignBS + 2}, // trims the two blocks inside
		{"trim", 10*alignBS - 1, 1537},       // to the end: the short block
		{"write", 0, 0},
	}
	exp, mem := memExport("a", alignSize, alignBS)
	ts := startServer(t, false, []Export{exp})
	c := dialBlockSizes(t, ts.addr, "a")
	model := make([]byte, alignSize)
	// Fill the device so that zeroes and trims show.
	alignOp{"write", 0, alignSize}.apply(t, c, model, 1)
	for i, o := range cases {
		o.apply(t, c, model, byte(i+2))
		if !bytes.Equal(snapshot(mem), model) {
			t.Fatalf("after %s %d bytes at %d: the device differs from the model", o.op, o.len, o.off)
		}
	}

	// Without the client's help the server refuses such requests: the
	// test above did exercise the read-modify-write.
	c.align = 1
	var e Errno
	if _, err := c.WriteAt(make([]byte, 10), 5); !errors.As(err, &e) || e != EINVAL {
		t.Fatalf("unaided misaligned write: %v, want EINVAL", err)
	}
}

// TestAlignedClientProperty: any sequence of requests does to the device
// what it does to a byte slice.
func TestAlignedClientProperty(t *testing.T) {
	exp, mem := memExport("a", alignSize, alignBS)
	ts := startServer(t, false, []Export{exp})
	c := dialBlockSizes(t, ts.addr, "a")
	rapid.Check(t, func(rt *rapid.T) {
		model := snapshot(mem)
		ops := rapid.SliceOfN(rapid.Custom(func(rt *rapid.T) alignOp {
			off := rapid.Int64Range(0, alignSize).Draw(rt, "off")
			n := rapid.Int64Range(0, min(alignSize-off, 3*alignBS)).Draw(rt, "len")
			return alignOp{rapid.SampledFrom([]string{"read", "write", "zero", "trim"}).Draw(rt, "op"), off, n}
		}), 1, 20).Draw(rt, "ops")
		for i, o := range ops {
			o.apply(rt, c, model, byte(i))
		}
		if !bytes.Equal(snapshot(mem), model) {
			rt.Fatalf("the device differs from the model")
		}
	})
}

// TestAlignedClientConcurrent: misaligned writes from many goroutines to
// disjoint bytes of the same blocks all land; none is undone by
// another's read-modify-write.
func TestAlignedClientConcurrent(t *testing.T) {
	const (
		writers = 8
		slot    = 100 // bytes; slot k belongs to writer k%writers
		rounds  = 20
	)
	exp, mem := memExport("a", alignSize, alignBS)
	ts := startServer(t, false, []Export{exp})
	c := dialBlockSizes(t, ts.addr, "a")
	want := make([]byte, alignSize)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				for k := w; (k+1)*slot <= alignSize; k += writers {
					p := bytes.Repeat([]byte{byte(w*rounds + r + 1)}, slot)
					if _, err := c.WriteAt(p, int64(k*slot)); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for k := 0; (k+1)*slot <= alignSize; k++ {
		w := k % writers
		copy(want[k*slot:], bytes.Repeat([]byte{byte(w*rounds + rounds)}, slot))
	}
	if got := snapshot(mem); !bytes.Equal(got, want) {
		for k := 0; (k+1)*slot <= alignSize; k++ {
			if !bytes.Equal(got[k*slot:(k+1)*slot], want[k*slot:(k+1)*slot]) {
				t.Fatalf("slot %d (writer %d) lost its last write", k, k%writers)
			}
		}
	}
}
