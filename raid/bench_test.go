package raid

import (
	"fmt"
	"testing"
)

// benchArraySize is the logical size of benchmark arrays.
const benchArraySize = 64 << 20

var benchRequests = []int{4 << 10, 64 << 10, 1 << 20}

// benchRaid35 runs op ("write", "read", "write512") over an m x bs array
// with memory members, member missing (or -1), for each request size.
func benchRaid35(b *testing.B, m, bs int, op string, missing int) {
	g := Geometry{Members: m, BlockSize: bs}.WithDefaults()
	per := int64(benchArraySize / (m - 1))
	arr, err := NewRaid35(g, asDevs(newMems(m, per), missing), per, Config{})
	if err != nil {
		b.Fatal(err)
	}
	reqs := benchRequests
	if op == "write512" {
		reqs = []int{512}
	}
	for _, n := range reqs {
		b.Run(sizeName(n), func(b *testing.B) {
			p := make([]byte, n)
			fill(p, 1)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			off := int64(0)
			if op == "write512" {
				off = 1536
			}
			for b.Loop() {
				var err error
				switch op {
				case "write", "write512":
					_, err = arr.WriteAt(p, off)
				case "read":
					_, err = arr.ReadAt(p, off)
				}
				if err != nil {
					b.Fatal(err)
				}
				off += int64(n) * 7
				if off+int64(n) > arr.Size() {
					off %= int64(bs)
				}
			}
		})
	}
}

func BenchmarkWrite2x4096(b *testing.B)         { benchRaid35(b, 2, 4096, "write", -1) }
func BenchmarkWrite3x4096(b *testing.B)         { benchRaid35(b, 3, 4096, "write", -1) }
func BenchmarkWrite5x4096(b *testing.B)         { benchRaid35(b, 5, 4096, "write", -1) }
func BenchmarkWrite9x4096(b *testing.B)         { benchRaid35(b, 9, 4096, "write", -1) }
func BenchmarkRead2x4096(b *testing.B)          { benchRaid35(b, 2, 4096, "read", -1) }
func BenchmarkRead3x4096(b *testing.B)          { benchRaid35(b, 3, 4096, "read", -1) }
func BenchmarkRead5x4096(b *testing.B)          { benchRaid35(b, 5, 4096, "read", -1) }
func BenchmarkRead9x4096(b *testing.B)          { benchRaid35(b, 9, 4096, "read", -1) }
func BenchmarkReadDegraded5x4096(b *testing.B)  { benchRaid35(b, 5, 4096, "read", 1) }
func BenchmarkWriteDegraded5x4096(b *testing.B) { benchRaid35(b, 5, 4096, "write", 1) }
func BenchmarkWritePartial5x4096(b *testing.B)  { benchRaid35(b, 5, 4096, "write512", -1) }

func BenchmarkMirror3(b *testing.B) {
	arr, err := NewMirror(asDevs(newMems(3, benchArraySize), -1), benchArraySize, Config{})
	if err != nil {
		b.Fatal(err)
	}
	for _, op := range []string{"write", "read"} {
		for _, n := range benchRequests {
			b.Run(op+"/"+sizeName(n), func(b *testing.B) {
				p := make([]byte, n)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				var off int64
				for b.Loop() {
					var err error
					if op == "write" {
						_, err = arr.WriteAt(p, off)
					} else {
						_, err = arr.ReadAt(p, off)
					}
					if err != nil {
						b.Fatal(err)
					}
					off = (off + int64(n)*7) % (benchArraySize - int64(n))
				}
			})
		}
	}
}

// sizeName names a request size: 512B, 4KiB, 1MiB.
func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// BenchmarkReadParallel measures 4 KiB reads of a trusted (balancing)
// raid35 x5 and mirror x3 from every CPU at once: the member queue counters
// that balancing keeps are updated by every read.
func BenchmarkReadParallel(b *testing.B) {
	g := Geometry{Members: 5, BlockSize: 4096}.WithDefaults()
	per := int64(benchArraySize / 4)
	r35, err := NewRaid35(g, asDevs(newMems(5, per), -1), per, Config{})
	if err != nil {
		b.Fatal(err)
	}
	mir, err := NewMirror(asDevs(newMems(3, benchArraySize), -1), benchArraySize, Config{})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		arr  interface {
			ReadBalancer
			ReadAt(p []byte, off int64) (int, error)
			Size() int64
		}
	}{{"raid35x5", r35}, {"mirror3", mir}} {
		b.Run(tc.name, func(b *testing.B) {
			tc.arr.TrustRedundancy(true)
			b.SetBytes(4096)
			b.ReportAllocs()
			blocks := tc.arr.Size() / 4096
			b.RunParallel(func(pb *testing.PB) {
				p := make([]byte, 4096)
				off := int64(0)
				for pb.Next() {
					if _, err := tc.arr.ReadAt(p, off*4096); err != nil {
						b.Error(err)
						return
					}
					off = (off + 7919) % blocks
				}
			})
		})
	}
}
