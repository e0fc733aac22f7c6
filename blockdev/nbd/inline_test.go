package nbd

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// TestInlineStallHandsOver checks that a request stalled on the reader
// goroutine (the export had been fast, so requests ran inline) does not
// stop the connection: the watchdog hands reading to a new goroutine and
// the requests behind it are served.
func TestInlineStallHandsOver(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	copy(mem.Bytes()[4096:], "stuck")
	g := &selectiveGate{Device: mem, blockOff: 4096, entered: make(chan struct{}, 1), release: make(chan struct{})}
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}})
	c := dial(t, ts.addr, "disk")
	buf := make([]byte, 512)
	for i := 0; i < 200; i++ { // fast requests: the export runs inline
		if _, err := c.ReadAt(buf, 8192); err != nil {
			t.Fatal(err)
		}
	}
	x := ts.lookup("disk")
	if x.slowNs.Load() >= int64(DefaultInlineLatency) {
		t.Fatalf("memory export measured slow: %d ns", x.slowNs.Load())
	}
	stuck := make(chan error, 1)
	go func() {
		b := make([]byte, 5)
		_, err := c.ReadAt(b, 4096)
		if err == nil && string(b) != "stuck" {
			err = errFake
		}
		stuck <- err
	}()
	<-g.entered
	// The stalled request holds the first reader; these need another.
	for i := 0; i < 20; i++ {
		if _, err := c.ReadAt(buf, int64(i)*512+16384); err != nil {
			t.Fatal(err)
		}
		if err := c.Zero(65536, 512); err != nil {
			t.Fatal(err)
		}
	}
	close(g.release)
	if err := <-stuck; err != nil {
		t.Fatal(err)
	}
	if !ts.log.contains("a new reader takes over") {
		t.Error("hand-over not logged")
	}
	// The connection goes on, and ends cleanly.
	if _, err := c.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
}

var errFake = bytes.ErrTooLarge

// TestCorkedBatchesUnderTightLimits pipelines many requests with tiny
// in-flight and memory limits, so that the reader must send held-back
// replies before it can take a request or a buffer.
func TestCorkedBatchesUnderTightLimits(t *testing.T) {
	for _, tc := range []struct {
		name     string
		inflight int
		memory   int64
	}{
		{"inflight1", 1, 0},
		{"inflight3", 3, 0},
		{"memory2", 16, 128 << 10}, // two 64 KiB buffers
		{"workers", 16, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, mem := memExport("disk", 1<<20, 512)
			copy(mem.Bytes(), pattern(1<<20, 5))
			opts := []serverOpt{withMaxInFlight(tc.inflight), withMaxPayload(64 << 10),
				func(c *Config) { c.MaxPayloadMemory = tc.memory }}
			if tc.name == "workers" {
				opts = append(opts, func(c *Config) { c.InlineLatency = -1 })
			}
			ts := startServer(t, false, []Export{e}, opts...)
			r := rawGo(t, ts.addr, "disk")
			var batch []byte
			const n = 300
			for i := 0; i < n; i++ {
				var h [requestHeaderLen]byte
				req := Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i%16) * 64 << 10, Length: 64 << 10}
				if i%3 == 1 {
					req = Request{Type: CmdWrite, Cookie: uint64(i), Offset: uint64(i%16) * 64 << 10, Length: 512}
				}
				req.encode(&h)
				batch = append(batch, h[:]...)
				if req.Type == CmdWrite {
					batch = append(batch, mem.Bytes()[req.Offset:req.Offset+512]...) // same bytes again
				}
			}
			go r.c.Write(batch)
			want := snapshot(mem)
			seen := map[uint64]bool{}
			for i := 0; i < n; i++ {
				h := r.read(replyHeaderLen)
				if binary.BigEndian.Uint32(h) != magicSimpleReply || binary.BigEndian.Uint32(h[4:]) != 0 {
					t.Fatalf("reply %x", h)
				}
				cookie := binary.BigEndian.Uint64(h[8:])
				if seen[cookie] || cookie >= n {
					t.Fatalf("cookie %d", cookie)
				}
				seen[cookie] = true
				if cookie%3 != 1 {
					off := (cookie % 16) * 64 << 10
					if got := r.read(64 << 10); !bytes.Equal(got, want[off:off+64<<10]) {
						t.Fatalf("READ %d data differs", cookie)
					}
				}
			}
			r.request(Request{Type: CmdDisc}, nil)
			r.expectEOF()
		})
	}
}

// TestSlowExportUsesWorkers checks that an export measured slow runs its
// requests in parallel.
func TestSlowExportUsesWorkers(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	slow := blockdev.NewDelay(mem, 5*time.Millisecond, 5*time.Millisecond)
	ts := startServer(t, false, []Export{{Name: "disk", Device: slow}})
	c := dial(t, ts.addr, "disk")
	buf := make([]byte, 512)
	if _, err := c.ReadAt(buf, 0); err != nil { // teaches the server it is slow
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 32)
	for i := 0; i < 32; i++ {
		go func() {
			b := make([]byte, 512)
			_, err := c.ReadAt(b, int64(i)*512)
			done <- err
		}()
	}
	for i := 0; i < 32; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// 32 reads of 5 ms one after the other would take 160 ms.
	if d := time.Since(start); d > 120*time.Millisecond {
		t.Errorf("32 parallel 5 ms reads took %v", d)
	}
}
