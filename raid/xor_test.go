package raid

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// xorBytewise is the reference: dst[i] = XOR of srcs[j][i], byte by byte.
func xorBytewise(dst []byte, srcs [][]byte) {
	for i := range dst {
		var v byte
		for _, s := range srcs {
			v ^= s[i]
		}
		dst[i] = v
	}
}

func TestXORBlocks(t *testing.T) {
	forEachXOR(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		lengths := []int{0, 1, 7, 8, 9, 15, 16, 31, 63, 64, 65, 127, 128, 129, 255, 256, 511, 512, 1000, 1024, 2048, 4095, 4096, 8192, 65536}
		for range 50 {
			lengths = append(lengths, rng.IntN(20000))
		}
		for _, n := range lengths {
			for ns := 0; ns <= 9; ns++ {
				srcs := make([][]byte, ns)
				for i := range srcs {
					// Sources may be longer than dst; only the prefix counts.
					srcs[i] = make([]byte, n+rng.IntN(3))
					fill(srcs[i], rng.Uint64())
				}
				want := make([]byte, n)
				xorBytewise(want, srcs)
				got := make([]byte, n)
				fill(got, 1) // garbage to overwrite
				xorBlocks(got, append([][]byte(nil), srcs...))
				if i := firstDiff(got, want); i >= 0 {
					t.Fatalf("len %d, %d sources: byte %d = %#x, want %#x", n, ns, i, got[i], want[i])
				}
				// dst aliasing the first source.
				if ns > 0 {
					alias := append([]byte(nil), srcs[0][:n]...)
					in := append([][]byte{alias}, srcs[1:]...)
					xorBlocks(alias, in)
					if i := firstDiff(alias, want); i >= 0 {
						t.Fatalf("aliased, len %d, %d sources: byte %d differs", n, ns, i)
					}
				}
			}
		}
	})
}

// TestXORUnaligned uses sources that start at odd addresses.
func TestXORUnaligned(t *testing.T) {
	forEachXOR(t, func(t *testing.T) {
		for off := range 9 {
			buf := make([]byte, 5000)
			fill(buf, uint64(off))
			srcs := [][]byte{buf[off : off+1024], buf[1100+off : 1100+off+1024], buf[3000+off:]}
			want := make([]byte, 1024)
			xorBytewise(want, srcs)
			got := make([]byte, 1040)
			xorBlocks(got[off:off+1024], srcs)
			if i := firstDiff(got[off:off+1024], want); i >= 0 {
				t.Fatalf("offset %d: byte %d differs", off, i)
			}
		}
	})
}

func BenchmarkXOR(b *testing.B) {
	for _, impl := range xorImpls {
		for _, c := range []struct{ srcs, n int }{{2, 4096}, {4, 1024}, {8, 512}, {4, 65536}} {
			b.Run(fmt.Sprintf("%s/%dx%d", impl.name, c.srcs, c.n), func(b *testing.B) {
				old := useSIMD
				useSIMD = impl.simd
				defer func() { useSIMD = old }()
				srcs := make([][]byte, c.srcs)
				for i := range srcs {
					srcs[i] = make([]byte, c.n)
					fill(srcs[i], uint64(i))
				}
				dst := make([]byte, c.n)
				b.SetBytes(int64(c.srcs * c.n))
				b.ReportAllocs()
				for b.Loop() {
					xorBlocks(dst, srcs)
				}
			})
		}
	}
}
