package nbdtest

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A served export answers a client; Stop and Kill end the server (each
// after the other only waits), and Kill drops the client's connection.
func TestServer(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*Server)
	}{
		{"stop", (*Server).Stop},
		{"kill", (*Server).Kill},
		{"kill then stop", func(s *Server) { s.Kill(); s.Stop() }},
		{"stop then kill", func(s *Server) { s.Stop(); s.Kill() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := blockdev.NewMem(1<<20, 512)
			s, uri := Unix(t, nbd.Export{Name: "m", Device: mem})
			if !strings.HasPrefix(uri, "nbd+unix:///m?socket=") {
				t.Fatalf("uri %q", uri)
			}
			sock := strings.TrimPrefix(uri, "nbd+unix:///m?socket=")
			c, err := nbd.Dial(context.Background(), "unix", sock, "m")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := bytes.Repeat([]byte{7}, 4096)
			if _, err := c.WriteAt(want, 8192); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			if _, err := c.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, want))
			}
			if n := s.Accepted(); n != 1 {
				t.Errorf("Accepted() = %d, want 1", n)
			}
			tc.end(s)
			if _, err := c.ReadAt(got, 0); err == nil {
				t.Error("a read after the server ended succeeded")
			}
			if _, err := nbd.Dial(context.Background(), "unix", sock, "m"); err == nil {
				t.Error("a dial after the server ended succeeded")
			}
		})
	}
}

func TestAgent(t *testing.T) {
	dir := t.TempDir()
	a := StartAgent(t, dir, 2, 4<<20)
	ms := a.Members()
	if len(ms) != 2 || len(a.Disks) != 2 {
		t.Fatalf("members %v, disks %d", ms, len(a.Disks))
	}
	for i, m := range ms {
		if want := a.Addr + ":" + a.Disks[i].Path(); m != want {
			t.Errorf("member %d is %q, want %q", i, m, want)
		}
		if !strings.HasPrefix(m, "127.0.0.1:") {
			t.Errorf("member %q is not on loopback", m)
		}
	}
	c, err := nbd.Dial(context.Background(), "tcp", a.Addr, a.Disks[0].Path())
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != a.Disks[0].Device().Size() {
		t.Errorf("export size %d, disk %d", c.Size(), a.Disks[0].Device().Size())
	}
	c.Close()
}
