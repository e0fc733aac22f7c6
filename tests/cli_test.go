package tests

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// fails runs ddraid expecting a non-zero exit and a one-line error that
// contains want.
func fails(t *testing.T, want string, args ...string) {
	t.Helper()
	out, err := runErr(ddraidBin, args...)
	if err == nil {
		t.Fatalf("ddraid %s succeeded, want an error\n%s", strings.Join(args, " "), out)
	}
	if !strings.Contains(out, want) {
		t.Fatalf("ddraid %s: output does not contain %q:\n%s", strings.Join(args, " "), want, out)
	}
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Fatalf("ddraid %s panicked:\n%s", strings.Join(args, " "), out)
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	state := "--state-dir=" + filepath.Join(dir, "state")
	m := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, filepath.Join(dir, n))
		}
		return out
	}
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown level", append([]string{"create", "x", "--level=raid7", "--size=8M"}, m("a", "b", "c")...), "unknown raid level \"raid7\""},
		{"raid35 with 4 members", append([]string{"create", "x", "--size=8M"}, m("a", "b", "c", "d")...), "2, 3, 5 or 9 members, got 4"},
		{"duplicate member", append([]string{"create", "x", "--size=8M"}, m("a", "b", "a")...), "given twice"},
		{"member too small", []string{"create", "x", "--size=8M", filepath.Join(dir, "a"), filepath.Join(dir, "b"), small}, "too small"},
		{"block size not a power of two", append([]string{"create", "x", "--size=8M", "--block-size=3000"}, m("a", "b", "c")...), "power of two"},
		{"bad size", append([]string{"create", "x", "--size=lots"}, m("a", "b", "c")...), "invalid size"},
		{"missing member without --size", append([]string{"create", "x"}, m("a", "b", "c")...), "does not exist"},
		{"bad name", append([]string{"create", "no/slash", "--size=8M"}, m("a", "b", "c")...), "invalid array name"},
		{"mirror with one member", append([]string{"create", "x", "--level=mirror", "--size=8M"}, m("a")...), "at least 2 members"},
		{"bad parity", append([]string{"create", "x", "--parity=diagonal", "--size=8M"}, m("a", "b", "c")...), "parity"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fails(t, c.want, append(c.args, state)...)
			// Nothing written: no member file was created.
			for _, n := range []string{"a", "b", "c", "d"} {
				if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
					t.Fatalf("member %s was created by a refused create", n)
				}
			}
		})
	}
}

func TestServeRefusesWrongMembers(t *testing.T) {
	t.Run("member of another array", func(t *testing.T) {
		a := newArray(t, "raid35", 3, "8MiB")
		b := newArray(t, "raid35", 3, "8MiB")
		if err := os.Rename(b.members[2], a.members[2]); err != nil {
			t.Fatal(err)
		}
		fails(t, "belongs to another array", "serve", "data", "--state-dir="+a.stateDir, "--listen=unix:"+filepath.Join(a.dir, "s"))
	})
	t.Run("too many missing", func(t *testing.T) {
		a := newArray(t, "raid35", 5, "8MiB")
		os.Remove(a.members[0])
		os.Remove(a.members[3])
		fails(t, "2 of 5 members lost", "serve", "data", "--state-dir="+a.stateDir, "--listen=unix:"+filepath.Join(a.dir, "s"))
	})
	t.Run("truncated member", func(t *testing.T) {
		a := newArray(t, "raid35", 3, "8MiB")
		if err := os.Truncate(a.members[1], 4<<20); err != nil {
			t.Fatal(err)
		}
		fails(t, "truncated", "serve", "data", "--state-dir="+a.stateDir, "--listen=unix:"+filepath.Join(a.dir, "s"))
	})
	t.Run("not a member", func(t *testing.T) {
		a := newArray(t, "raid35", 3, "8MiB")
		f, _ := os.OpenFile(a.members[0], os.O_WRONLY, 0)
		f.WriteAt(make([]byte, 4096), 0)
		f.Close()
		fails(t, "not a ddraid member", "serve", "data", "--state-dir="+a.stateDir, "--listen=unix:"+filepath.Join(a.dir, "s"))
	})
	t.Run("corrupt header", func(t *testing.T) {
		a := newArray(t, "raid35", 3, "8MiB")
		f, _ := os.OpenFile(a.members[2], os.O_WRONLY, 0)
		f.WriteAt([]byte{0xff}, 100)
		f.Close()
		fails(t, "corrupt", "serve", "data", "--state-dir="+a.stateDir, "--listen=unix:"+filepath.Join(a.dir, "s"))
	})
	t.Run("unknown array", func(t *testing.T) {
		fails(t, "no such array", "serve", "nope", "--state-dir="+t.TempDir(), "--listen=unix:"+filepath.Join(t.TempDir(), "s"))
	})
}

func TestStatus(t *testing.T) {
	a := newArray(t, "raid35", 5, "8MiB", "--parity=dedicated")
	out := ddraid(t, a.stateDir, "status")
	for _, want := range []string{"data: raid35 clean", "parity dedicated", "not served", a.members[4]} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	js := ddraid(t, a.stateDir, "status", "data", "--json")
	if !strings.Contains(js, `"state": "clean"`) || !strings.Contains(js, `"level": "raid35"`) {
		t.Errorf("status --json:\n%s", js)
	}
	s := a.serve(t)
	if out := ddraid(t, a.stateDir, "status", "data"); !strings.Contains(out, "served by pid") || !strings.Contains(out, s.socket) {
		t.Errorf("status while serving:\n%s", out)
	}
	// Reads are balanced once the array is known in sync (the initial
	// sync of a new array may still run at first).
	waitFor(t, "read balancing on", func() bool {
		return strings.Contains(ddraid(t, a.stateDir, "status", "data"), "read balancing on; 0 reads balanced")
	})
	if js := ddraid(t, a.stateDir, "status", "data", "--json"); !strings.Contains(js, `"read_balancing": true`) {
		t.Errorf("status --json while serving:\n%s", js)
	}
	fails(t, "no such array", "status", "nope", "--state-dir="+a.stateDir)
}
