package tests

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev/nbd"
)

// `ddraid serve --cpus=auto` (the default) runs on one P per client
// connection and on the runtime's default while none is open; a number, or
// a GOMAXPROCS environment variable, fixes the setting. Read from the Go
// runtime's own gauge on /metrics.
func TestServeCPUsFollowConnections(t *testing.T) {
	cases := []struct {
		name  string
		flags []string
		env   string
		// want(def, conns) is the setting with conns connections open;
		// def is the server's setting before any connection.
		want func(def, conns int) int
	}{
		{"auto", nil, "", func(def, conns int) int {
			if conns == 0 {
				return def
			}
			return min(conns, def)
		}},
		{"fixed", []string{"--cpus=1"}, "", func(def, conns int) int { return 1 }},
		{"environment", nil, "2", func(def, conns int) int { return 2 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", c.env)
			a := newArray(t, "linear", 1, "16M")
			addr := "127.0.0.1:" + freePort(t)
			s := a.serve(t, append([]string{"--http=" + addr}, c.flags...)...)
			def := gomaxprocs(t, addr)
			if c.name == "auto" && def < 2 {
				t.Fatalf("the server runs on %d CPU: this test needs at least 2 to see the setting change", def)
			}
			if got, want := def, c.want(def, 0); got != want {
				t.Fatalf("no connection: GOMAXPROCS %d, want %d", got, want)
			}
			var clients []*nbd.Client
			for n := 1; n <= 2; n++ {
				cl := dialUnix(t, s.socket, a.name)
				clients = append(clients, cl)
				// A reply means the connection serves requests, which
				// it does only after the server counted it.
				if _, err := cl.ReadAt(make([]byte, 4096), 0); err != nil {
					t.Fatalf("read: %v", err)
				}
				if got, want := gomaxprocs(t, addr), c.want(def, n); got != want {
					t.Fatalf("%d connections: GOMAXPROCS %d, want %d", n, got, want)
				}
			}
			for i, cl := range clients {
				cl.Close()
				left := len(clients) - 1 - i
				waitGOMAXPROCS(t, addr, c.want(def, left), s)
			}
		})
	}
}

// A raid35 request large enough that each member's part is copied on a
// goroutine of its own gives the process every CPU, whatever the
// connections, until a second has passed without one; small requests do
// not.
func TestServeCPUsSpread(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	a := newArray(t, "raid35", 5, "64M", "--assume-clean")
	addr := "127.0.0.1:" + freePort(t)
	s := a.serve(t, "--http="+addr)
	def := gomaxprocs(t, addr)
	if def < 2 {
		t.Fatalf("the server runs on %d CPU: this test needs at least 2 to see the setting change", def)
	}
	cl := dialUnix(t, s.socket, a.name)
	small := make([]byte, 4096)
	for i := range 64 {
		if _, err := cl.WriteAt(small, int64(i)*4096); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if got := gomaxprocs(t, addr); got != 1 {
		t.Fatalf("one connection, 4 KiB writes: GOMAXPROCS %d, want 1", got)
	}
	// 1 MiB over 4 data members: 256 KiB each, over the 64 KiB at which
	// member requests always run in parallel.
	large := make([]byte, 1<<20)
	if _, err := cl.WriteAt(large, 0); err != nil {
		t.Fatalf("write: %v", err)
	}
	if got := gomaxprocs(t, addr); got != def {
		t.Fatalf("right after a 1 MiB write: GOMAXPROCS %d, want %d\n%s", got, def, s.output())
	}
	if _, err := cl.ReadAt(large, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	waitGOMAXPROCS(t, addr, 1, s)
	for i := range 64 {
		if _, err := cl.ReadAt(small, int64(i)*4096); err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	if got := gomaxprocs(t, addr); got != 1 {
		t.Fatalf("one connection, 4 KiB reads after the hold: GOMAXPROCS %d, want 1", got)
	}
}

func TestServeCPUsBadValue(t *testing.T) {
	a := newArray(t, "linear", 1, "16M")
	fails(t, `--cpus "many": want auto or a number of CPUs (at least 1)`,
		"serve", a.name, "--state-dir="+a.stateDir, "--listen=unix:"+a.dir+"/x.sock", "--cpus=many")
}

func dialUnix(t *testing.T, sock, export string) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "unix", sock, export)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

var gomaxprocsRE = regexp.MustCompile(`(?m)^go_sched_gomaxprocs_threads (\d+)$`)

// gomaxprocs reads the server's GOMAXPROCS from its /metrics.
func gomaxprocs(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	m := gomaxprocsRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no go_sched_gomaxprocs_threads in /metrics:\n%s", b)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// waitGOMAXPROCS waits for the server to apply want after a connection
// closed (it does so as the connection's last reply is out, after the
// client has seen the close) or after the hold of spread work ends.
func waitGOMAXPROCS(t *testing.T, addr string, want int, s *server) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := gomaxprocs(t, addr)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS %d, want %d\n%s", got, want, s.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
