package remote

import (
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	cases := []struct {
		in    string
		want  URI
		canon string
	}{
		{"nbd://127.0.0.1:10811/d0", URI{Network: "tcp", Addr: "127.0.0.1:10811", Export: "d0"}, "nbd://127.0.0.1:10811/d0"},
		{"nbd://host/disk", URI{Network: "tcp", Addr: "host:10809", Export: "disk"}, "nbd://host:10809/disk"},
		{"nbd://host", URI{Network: "tcp", Addr: "host:10809"}, "nbd://host:10809/"},
		{"NBD://host:1/", URI{Network: "tcp", Addr: "host:1"}, "nbd://host:1/"},
		{"nbd://[::1]:10900/a%20b", URI{Network: "tcp", Addr: "[::1]:10900", Export: "a b"}, "nbd://[::1]:10900/a%20b"},
		{"nbd://h:2/dir/name", URI{Network: "tcp", Addr: "h:2", Export: "dir/name"}, "nbd://h:2/dir/name"},
		{"nbd+unix:///d1?socket=/run/nbd/m1.sock", URI{Network: "unix", Addr: "/run/nbd/m1.sock", Export: "d1"}, "nbd+unix:///d1?socket=/run/nbd/m1.sock"},
		{"nbd+unix://?socket=/tmp/x.sock", URI{Network: "unix", Addr: "/tmp/x.sock"}, "nbd+unix:///?socket=/tmp/x.sock"},
		{"nbd+unix:///e?socket=/tmp/a%20dir/../x.sock", URI{Network: "unix", Addr: "/tmp/x.sock", Export: "e"}, "nbd+unix:///e?socket=/tmp/x.sock"},
		{"nbd+unix:///e?socket=/tmp/a%26b.sock", URI{Network: "unix", Addr: "/tmp/a&b.sock", Export: "e"}, "nbd+unix:///e?socket=/tmp/a%26b.sock"},
		{"nbds://h:3/x", URI{TLS: true, Network: "tcp", Addr: "h:3", Export: "x"}, "nbds://h:3/x"},
		{"nbds+unix:///x?socket=/s", URI{TLS: true, Network: "unix", Addr: "/s", Export: "x"}, "nbds+unix:///x?socket=/s"},
	}
	for _, c := range cases {
		got, err := ParseURI(c.in)
		if err != nil {
			t.Errorf("ParseURI(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("ParseURI(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if s := got.String(); s != c.canon {
			t.Errorf("ParseURI(%q).String() = %q, want %q", c.in, s, c.canon)
		}
		again, err := ParseURI(got.String())
		if err != nil || again != got {
			t.Errorf("canonical form %q parses to %+v, %v; want %+v", got.String(), again, err, got)
		}
	}
}

func TestParseURIRefuses(t *testing.T) {
	cases := []struct{ in, want string }{
		{"/dev/sdb", "not an NBD URI"},
		{"http://h/x", "not an NBD URI"},
		{"nbd:/h/x", "not an NBD URI"},
		{"nbd:///x", "no host"},
		{"nbd://h:0/x", "port"},
		{"nbd://h:99999/x", "port"},
		{"nbd://h:/x", "empty port"},
		{"nbd://user@h/x", "user"},
		{"nbd://h/x#frag", "fragment"},
		{"nbd://h/x?socket=/s", "socket"},
		{"nbd://h/x?tls-certificates=/c", "tls-certificates"},
		{"nbd+unix:///x", "socket=PATH"},
		{"nbd+unix:///x?socket=", "socket=PATH"},
		{"nbd+unix:///x?socket=/a&socket=/b", "socket=PATH"},
		{"nbd+unix:///x?socket=rel.sock", "absolute"},
		{"nbd+unix://host/x?socket=/s", "no host"},
		{"nbd+unix:///x?socket=/s&foo=1", "foo"},
		{"nbd://::10", "neither an IP address nor a host name"},
		{"nbd://a%20b/x", "escape"},
		{"nbd://a$b/x", "neither an IP address nor a host name"},
		{"nbd://h!st/x", "neither an IP address nor a host name"},
	}
	for _, c := range cases {
		_, err := ParseURI(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseURI(%q) = %v, want an error mentioning %q", c.in, err, c.want)
		}
	}
}

func TestIsURI(t *testing.T) {
	for s, want := range map[string]bool{
		"nbd://h/x": true, "nbd+unix:///x?socket=/s": true, "nbds://h/x": true, "NBDS+UNIX:///x": true,
		"/tmp/m0": false, "m0": false, "nbd:/x": false, "file:///x": false, "./nbd://x": false, "": false,
	} {
		if got := IsURI(s); got != want {
			t.Errorf("IsURI(%q) = %v, want %v", s, got, want)
		}
	}
}

// FuzzParseURI: a URI either is refused with an error or parses to one
// whose canonical form (a member's identity in the superblock) parses back
// to the same URI and is its own canonical form.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"nbd://127.0.0.1:10811/d0", "nbd://host", "NBD://host:1/", "nbd://[::1]:10900/a%20b",
		"nbd+unix:///d1?socket=/run/nbd/m1.sock", "nbd+unix:///e?socket=/tmp/a%26b.sock",
		"nbds://h:3/x", "nbds+unix:///x?socket=/s", "nbd://h:0/", "nbd://u@h/x", "nbd://h/x#f",
		"nbd://h/%zz", "nbd://h/a?b=c", "nbd+unix:///x?socket=rel", "/dev/sdb",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			return
		}
		canon := u.String()
		again, err := ParseURI(canon)
		if err != nil {
			t.Fatalf("ParseURI(%q) = %+v, whose canonical form %q is refused: %v", s, u, canon, err)
		}
		if again != u {
			t.Fatalf("ParseURI(%q) = %+v; its canonical form %q parses to %+v", s, u, canon, again)
		}
		if c2 := again.String(); c2 != canon {
			t.Fatalf("canonical form %q of %q is not stable: %q", canon, s, c2)
		}
	})
}
