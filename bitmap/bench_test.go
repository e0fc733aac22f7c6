package bitmap

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

func benchBitmap(b *testing.B, size int64) *Bitmap {
	b.Helper()
	store, _ := openStore(b)
	bm, err := New(store, "bench", 0, size, Config{
		RegionSize: DefaultRegionSize, ClearDelay: time.Hour, Flush: func() error { return nil }, Logger: quietLogger(),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = bm.Close() })
	return bm
}

// BenchmarkStartWriteDirty4K: a 4 KiB write to a region that is already
// marked. No store access and no allocation.
func BenchmarkStartWriteDirty4K(b *testing.B) {
	bm := benchBitmap(b, 1<<30)
	end, err := bm.StartWrite(0, 4096)
	if err != nil {
		b.Fatal(err)
	}
	end()
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		end, err := bm.StartWrite(int64(i%1024)*4096, 4096)
		if err != nil {
			b.Fatal(err)
		}
		end()
	}
	if st := bm.Stats(); st.MarkSyncs != 1 {
		b.Fatalf("%d syncs", st.MarkSyncs)
	}
}

// BenchmarkStartWriteDirty4KParallel: the same from GOMAXPROCS goroutines,
// all on one marked region (the bitmap's lock is the contended part).
func BenchmarkStartWriteDirty4KParallel(b *testing.B) {
	bm := benchBitmap(b, 1<<30)
	end, err := bm.StartWrite(0, DefaultRegionSize)
	if err != nil {
		b.Fatal(err)
	}
	end()
	b.ReportAllocs()
	b.SetBytes(4096)
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			end, err := bm.StartWrite(int64(i%1024)*4096, 4096)
			if err != nil {
				b.Error(err)
				return
			}
			end()
			i++
		}
	})
}

// BenchmarkStartWriteFresh: every write hits an unmarked region, one at a
// time, so each pays a full store commit and sync.
func BenchmarkStartWriteFresh(b *testing.B) {
	bm := benchBitmap(b, 1<<50)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		end, err := bm.StartWrite(int64(i)*DefaultRegionSize, 4096)
		if err != nil {
			b.Fatal(err)
		}
		end()
	}
	st := bm.Stats()
	b.ReportMetric(float64(st.Marks)/float64(st.MarkSyncs), "marks/sync")
}

// BenchmarkStartWriteFresh64Writers: 64 writers per CPU on unmarked
// regions; group commit shares each sync among the writers waiting.
func BenchmarkStartWriteFresh64Writers(b *testing.B) {
	bm := benchBitmap(b, 1<<50)
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(64)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			end, err := bm.StartWrite(next.Add(1)*DefaultRegionSize, 4096)
			if err != nil {
				b.Error(err)
				return
			}
			end()
		}
	})
	st := bm.Stats()
	b.ReportMetric(float64(st.Marks)/float64(st.MarkSyncs), "marks/sync")
}

// BenchmarkDeviceWrite4K: a 4 KiB write through the marking Device to
// memory, on marked regions: the wrapper's overhead.
func BenchmarkDeviceWrite4K(b *testing.B) {
	const size = 64 << 20
	bm := benchBitmap(b, size)
	dev := NewDevice(blockdev.NewMem(size, 4096), bm)
	if err := dev.Zero(0, size); err != nil {
		b.Fatal(err)
	}
	p := make([]byte, 4096)
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		if _, err := dev.WriteAt(p, int64(i%(size/4096))*4096); err != nil {
			b.Fatal(err)
		}
	}
}
