package units

import "testing"

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true}, {"1K", 1024, true}, {"1KiB", 1024, true}, {"1kb", 1024, true},
		{"512M", 512 << 20, true}, {"1GiB", 1 << 30, true}, {"1G", 1 << 30, true}, {"2T", 2 << 40, true},
		{"1TiB", 1 << 40, true}, {"1.5G", 3 << 29, true}, {" 8 MiB ", 8 << 20, true}, {"0", 0, true},
		{"", 0, false}, {"G", 0, false}, {"-1G", 0, false}, {"1X", 0, false}, {"abc", 0, false},
		{"99999999999T", 0, false}, {"NaNG", 0, false}, {"1e400G", 0, false},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestFormatSize(t *testing.T) {
	cases := map[int64]string{0: "0 B", 512: "512 B", 1024: "1.0 KiB", 4 << 30: "4.0 GiB", 3 << 29: "1.5 GiB"}
	for n, want := range cases {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1G", "1.5TiB", "", "-3", "1e9K"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := ParseSize(s); err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}
