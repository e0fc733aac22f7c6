package member

import (
	"fmt"
	"testing"
)

// BenchmarkStartWrite measures the member host's work before a write: the
// fence check and, for a region not yet marked, the durable mark (a badger
// commit and sync, shared by concurrent writers); for a marked region no
// store access at all.
func BenchmarkStartWrite(b *testing.B) {
	for _, fresh := range []bool{false, true} {
		b.Run(fmt.Sprintf("fresh=%v", fresh), func(b *testing.B) {
			h, d, _ := newHostTB(b)
			defer h.Close()
			s, err := d.Admit(writer(0, 1))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				off := int64(testBase)
				if fresh {
					off += int64(i%16) * testRegion
					if i%16 == 0 {
						b.StopTimer()
						if err := s.Clear(0, d.Device().Size()); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
				}
				end, err := s.StartWrite(off, 4096)
				if err != nil {
					b.Fatal(err)
				}
				end()
			}
		})
	}
}
