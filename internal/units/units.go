// Package units parses and formats byte sizes the way operators write them:
// 1GiB, 512K, 4096, 1.5T. K, M, G, T (with or without "iB" or "B") are powers
// of 1024, as in mdadm and lvm.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a byte count that flags and config files write in human units.
type Size int64

var suffixes = []struct {
	names []string
	shift uint
}{
	{[]string{"tib", "tb", "t"}, 40},
	{[]string{"gib", "gb", "g"}, 30},
	{[]string{"mib", "mb", "m"}, 20},
	{[]string{"kib", "kb", "k"}, 10},
	{[]string{"b", ""}, 0},
}

// ParseSize parses a size such as "1GiB", "512K", "4096" or "1.5T".
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	for _, suf := range suffixes {
		for _, name := range suf.names {
			num, ok := strings.CutSuffix(t, name)
			if !ok || num == "" {
				continue
			}
			num = strings.TrimSpace(num)
			if n, err := strconv.ParseInt(num, 10, 64); err == nil {
				if n < 0 || n > math.MaxInt64>>suf.shift {
					return 0, fmt.Errorf("size %q out of range", s)
				}
				return n << suf.shift, nil
			}
			f, err := strconv.ParseFloat(num, 64)
			if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
				continue
			}
			v := f * float64(int64(1)<<suf.shift)
			if v >= math.MaxInt64 {
				return 0, fmt.Errorf("size %q out of range", s)
			}
			return int64(v), nil
		}
	}
	return 0, fmt.Errorf("invalid size %q: use a number with an optional unit K, M, G, T (or KiB, MiB, GiB, TiB)", s)
}

// FormatSize formats n bytes in the largest IEC unit that keeps one decimal,
// e.g. "4.0 GiB", "512 B".
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// UnmarshalText implements encoding.TextUnmarshaler (flags, TOML).
func (s *Size) UnmarshalText(b []byte) error {
	n, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// String implements fmt.Stringer.
func (s Size) String() string { return FormatSize(int64(s)) }
