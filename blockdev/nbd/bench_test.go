package nbd

import (
	"encoding/binary"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// benchmarkServerIO measures 4 KiB requests through the Client against the
// server over loopback TCP on a memory device, with 16 × GOMAXPROCS
// goroutines issuing requests (32 in flight on a 2-CPU machine). The
// client runs in the same process, so ns/op and allocs/op cover client and
// server together.
func benchmarkServerIO(b *testing.B, write bool) {
	const (
		size  = 64 << 20
		block = 4096
	)
	e, _ := memExport("bench", size, 4096)
	ts := startServer(b, false, []Export{e})
	c := dial(b, ts.addr, "bench")
	var next atomic.Int64
	b.SetBytes(block)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, block)
		for pb.Next() {
			off := (next.Add(1) * block) % size
			var err error
			if write {
				_, err = c.WriteAt(buf, off)
			} else {
				_, err = c.ReadAt(buf, off)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkServerRead4k(b *testing.B)  { benchmarkServerIO(b, false) }
func BenchmarkServerWrite4k(b *testing.B) { benchmarkServerIO(b, true) }

// BenchmarkServerRead4kSerial is one request at a time: the round-trip
// latency.
func BenchmarkServerRead4kSerial(b *testing.B) {
	e, _ := memExport("bench", 64<<20, 4096)
	ts := startServer(b, false, []Export{e})
	c := dial(b, ts.addr, "bench")
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := c.ReadAt(buf, int64(i%16384)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

// benchmarkRaw drives the server with a minimal pipelined client on one
// connection (depth requests in flight) that parses replies without
// allocating, so allocs/op are the server's own. structured selects
// structured replies (READ in chunks); meta selects base:allocation.
func benchmarkRaw(b *testing.B, typ Command, length int, structured bool) {
	const (
		size  = 64 << 20
		depth = 64
	)
	e, mem := memExport("bench", size, 512)
	fill := pattern(size, 3)
	copy(mem.Bytes(), fill)
	ts := startServer(b, false, []Export{e})
	var r *rawConn
	if structured {
		r = structuredGo(b, ts.addr, "bench", typ == CmdBlockStatus)
	} else {
		r = rawGo(b, ts.addr, "bench")
	}
	r.c.SetDeadline(time.Time{})
	payload := make([]byte, length)
	slots := make(chan struct{}, depth)
	done := make(chan error, 1)
	go func() {
		// Replies: headers and payloads are read into fixed buffers.
		var h [chunkHeaderLen]byte
		sink := make([]byte, 1<<20)
		for got := 0; got < b.N; {
			if _, err := io.ReadFull(r.br, h[:4]); err != nil {
				done <- err
				return
			}
			var n int
			final := true
			if binary.BigEndian.Uint32(h[:]) == magicSimpleReply {
				if _, err := io.ReadFull(r.br, h[4:replyHeaderLen]); err != nil {
					done <- err
					return
				}
				if typ == CmdRead && binary.BigEndian.Uint32(h[4:]) == 0 {
					n = length
				}
			} else {
				if _, err := io.ReadFull(r.br, h[4:chunkHeaderLen]); err != nil {
					done <- err
					return
				}
				n = int(binary.BigEndian.Uint32(h[16:]))
				final = binary.BigEndian.Uint16(h[4:])&replyFlagDone != 0
			}
			for n > 0 {
				k, err := r.br.Read(sink[:min(n, len(sink))])
				if err != nil {
					done <- err
					return
				}
				n -= k
			}
			if final {
				got++
				<-slots
			}
		}
		done <- nil
	}()
	var hdr [requestHeaderLen]byte
	b.SetBytes(int64(length))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		slots <- struct{}{}
		req := Request{Type: typ, Cookie: uint64(i), Offset: uint64(i*length) % size, Length: uint32(length)}
		req.encode(&hdr)
		if _, err := r.c.Write(hdr[:]); err != nil {
			b.Fatal(err)
		}
		if typ == CmdWrite {
			if _, err := r.c.Write(payload); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkRawRead4k(b *testing.B)           { benchmarkRaw(b, CmdRead, 4096, false) }
func BenchmarkRawRead4kStructured(b *testing.B) { benchmarkRaw(b, CmdRead, 4096, true) }
func BenchmarkRawRead1MStructured(b *testing.B) { benchmarkRaw(b, CmdRead, 1<<20, true) }
func BenchmarkRawWrite4k(b *testing.B)          { benchmarkRaw(b, CmdWrite, 4096, true) }
func BenchmarkRawWrite1M(b *testing.B)          { benchmarkRaw(b, CmdWrite, 1<<20, true) }
func BenchmarkRawBlockStatus64k(b *testing.B)   { benchmarkRaw(b, CmdBlockStatus, 64<<10, true) }
func BenchmarkRawWriteZeroes64k(b *testing.B)   { benchmarkRaw(b, CmdWriteZeroes, 64<<10, true) }
