package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/lockd"
)

// serveControl serves n's control endpoints on a unix socket and returns a
// client.
func serveControl(t *testing.T, n *Node) (*Control, *ControlClient) {
	t.Helper()
	ctl := NewControl(n)
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h := ctl.Handler()
	for _, p := range ControlPatterns {
		mux.Handle(p, h)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		ctl.Close()
	})
	return ctl, DialControl(path)
}

func TestControl(t *testing.T) {
	nodes := testCluster(t, 1)
	ctl, c := serveControl(t, nodes[0])
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "n0" || !st.Quorum || st.Epoch == 0 || len(st.Members) != 1 || st.Members[0].State != StateAlive {
		t.Fatalf("status %+v", st)
	}

	for _, tc := range []struct {
		name string
		req  AcquireRequest
		want string
	}{
		{"bad mode", AcquireRequest{Lockspace: "s", Resource: "r", Mode: "XX", HoldMS: 1}, "unknown mode"},
		{"no hold", AcquireRequest{Lockspace: "s", Resource: "r", Mode: "EX"}, "positive hold"},
		{"no resource", AcquireRequest{Lockspace: "s", Mode: "EX", HoldMS: 1}, "a resource"},
		{"hold too long", AcquireRequest{Lockspace: "s", Resource: "r", Mode: "EX", HoldMS: int64(MaxAcquireTime/time.Millisecond) + 1}, "positive hold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Acquire(ctx, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Acquire(%+v): %v, want an error with %q", tc.req, err, tc.want)
			}
		})
	}

	rep, err := c.Acquire(ctx, AcquireRequest{Lockspace: "s", Resource: "r", Mode: "EX", HoldMS: time.Hour.Milliseconds()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Node != "n0" || rep.Mode != lockd.EX || rep.Token.Epoch != st.Epoch {
		t.Fatalf("grant %+v, want EX on n0 in epoch %d", rep, st.Epoch)
	}
	if _, err := c.Acquire(ctx, AcquireRequest{Lockspace: "s", Resource: "r", Mode: "PR", NoQueue: true, HoldMS: 1}); !errorsContain(err, "NOQUEUE") {
		t.Fatalf("NOQUEUE PR while EX is held: %v", err)
	}
	if _, err := c.Acquire(ctx, AcquireRequest{Lockspace: "s", Resource: "r", Mode: "PR", WaitMS: 50, HoldMS: 1}); !errorsContain(err, "deadline") {
		t.Fatalf("PR with a short wait while EX is held: %v", err)
	}

	// The dump decodes (modes as names) and shows the grant.
	d, err := c.Locks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Resources) != 1 || len(d.Resources[0].Granted) != 1 || d.Resources[0].Granted[0].Granted != lockd.EX ||
		d.Resources[0].Granted[0].Requested != lockd.Mode(255) || len(d.Locks) != 1 || d.Locks[0].Token != rep.Token {
		t.Fatalf("dump %+v", d)
	}
	all, err := c.AllLocks(ctx)
	if err != nil || all.Error != "" || len(all.Dumps) != 1 || all.Dumps[0].Node != "n0" || len(all.Dumps[0].Resources) != 1 {
		t.Fatalf("AllLocks = %+v, %v", all, err)
	}
	var out bytes.Buffer
	if err := WriteDump(&out, d); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"node n0", "quorum yes", "mastered here:", "granted", "locks of this node:", rep.Token.String()} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("WriteDump lacks %q:\n%s", want, out.String())
		}
	}

	// Metrics show the node, its epoch and the lock.
	metrics := scrape(t, c)
	for _, want := range []string{"ddraid_cluster_quorum 1", fmt.Sprintf("ddraid_cluster_epoch %d", st.Epoch), `ddraid_cluster_members{state="alive"} 1`,
		`ddraid_cluster_members{state="failed"} 0`, "ddraid_lockd_mastered_resources 1", `ddraid_lockd_queued_locks{queue="granted"} 1`,
		`ddraid_lockd_node_locks{state="granted"} 1`, "ddraid_cluster_voters 1", "go_goroutines"} {
		if !strings.Contains(metrics, want+"\n") && !strings.Contains(metrics, want+" ") {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Close gives the held lock back.
	ctl.Close()
	l, err := nodes[0].Locks().Lockspace("s").Lock(ctx, "r", lockd.EX, 0)
	if err != nil {
		t.Fatalf("lock after Control.Close: %v", err)
	}
	if err := l.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// scrape fetches /metrics through the control socket.
func scrape(t *testing.T, c *ControlClient) string {
	t.Helper()
	resp, err := c.cs.HTTP().Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s %v\n%s", resp.Status, err, b)
	}
	return string(b)
}

func errorsContain(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }

func TestControlClientErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := DialControl(filepath.Join(t.TempDir(), "none.sock")).Status(ctx); !errorsContain(err, "agent control socket") {
		t.Fatalf("status from a missing socket: %v", err)
	}
	// An agent without cluster mode answers 404.
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NewServeMux()}
	go srv.Serve(ln)
	defer srv.Close()
	if _, err := DialControl(path).Locks(ctx); !errorsContain(err, "does not run in cluster mode") {
		t.Fatalf("locks from a member-only agent: %v", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
}

func TestWriteStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   Status
		want []string
	}{
		{"healthy", Status{Node: "a", Incarnation: 0xabc, Quorum: true, Epoch: 4, Phase: "normal", Voters: []lockd.NodeID{"a", "b", "c"},
			Members: []MemberStatus{
				{Name: "a", State: StateAlive, Voter: true, Lockd: true, Incarnation: 0xabc, Gossip: "g:1", RPC: "r:1"},
				{Name: "b", State: StateAlive, Voter: true, Lockd: true, Incarnation: 1},
				{Name: "c", State: StateAlive, Voter: true, Lockd: true, Incarnation: 2},
			}},
			[]string{"node a (incarnation abc)", "quorum: yes  epoch: 4  phase: normal  voters alive: 3 of 3 (quorum needs 2)", "a     alive  yes    yes       abc          g:1     r:1"}},
		{"minority", Status{Node: "a", Voters: []lockd.NodeID{"a", "b", "c", "d"}, Phase: "stopped",
			Members: []MemberStatus{
				{Name: "a", State: StateAlive, Voter: true},
				{Name: "b", State: StateFailed, Voter: true, Incarnation: 5},
				{Name: "c", State: StateUnknown, Voter: true},
				{Name: "x", State: StateAlive},
			}},
			[]string{"quorum: no  epoch: 0  phase: stopped  voters alive: 1 of 4 (quorum needs 3)", "b     failed", "c     unknown  yes    no        -", "x     alive    no"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteStatus(&b, tc.st); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}
