package raid

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// xorImpls are the XOR paths every parity-dependent test runs through.
var xorImpls = []struct {
	name string
	simd bool
}{
	{"simd", true},
	{"generic", false},
}

// forEachXOR runs fn as a subtest once per XOR implementation. Tests that
// use it must not run in parallel with each other.
func forEachXOR(t *testing.T, fn func(t *testing.T)) {
	t.Helper()
	for _, impl := range xorImpls {
		t.Run(impl.name, func(t *testing.T) {
			old := useSIMD
			useSIMD = impl.simd
			defer func() { useSIMD = old }()
			fn(t)
		})
	}
}
