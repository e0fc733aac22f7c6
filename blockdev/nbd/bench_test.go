package nbd

import (
	"sync/atomic"
	"testing"
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
