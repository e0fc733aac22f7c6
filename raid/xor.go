package raid

import (
	"encoding/binary"

	"github.com/templexxx/xorsimd"
)

// useSIMD selects the XOR implementation: xorsimd's assembly when true, the
// portable 64-bit word loop when false. Tests flip it to run the whole
// suite through both paths; it must not change while IO is in flight.
var useSIMD = true

// xorBlocks sets dst to the XOR of srcs. Every source must be at least
// len(dst) bytes; only the first len(dst) bytes of each are used. dst may be
// one of the sources. With a single source it is a copy; with none, dst is
// zeroed. The slice headers in srcs may be shortened to len(dst); the bytes
// of the sources are not changed (unless dst is one of them).
func xorBlocks(dst []byte, srcs [][]byte) {
	switch {
	case len(dst) == 0:
		return
	case len(srcs) == 0:
		clear(dst)
		return
	case len(srcs) == 1:
		copy(dst, srcs[0][:len(dst)])
		return
	}
	if useSIMD {
		xorsimd.Encode(dst, srcs)
		return
	}
	xorWords(dst, srcs)
}

// xorWords is the portable XOR: 64-bit words, then a byte tail.
func xorWords(dst []byte, srcs [][]byte) {
	n := len(dst)
	w := n &^ 7
	for i := 0; i < w; i += 8 {
		v := binary.LittleEndian.Uint64(srcs[0][i:])
		for _, s := range srcs[1:] {
			v ^= binary.LittleEndian.Uint64(s[i:])
		}
		binary.LittleEndian.PutUint64(dst[i:], v)
	}
	for i := w; i < n; i++ {
		v := srcs[0][i]
		for _, s := range srcs[1:] {
			v ^= s[i]
		}
		dst[i] = v
	}
}
