package cluster

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ddraid/ddraid/internal/certs"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/membership"
)

// waitLimit bounds waits for gossip and lockd to converge: a deadlock
// guard far above what FastLocal needs, never a measure of speed.
const waitLimit = 60 * time.Second

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testCluster starts n nodes on loopback with real serf and the TLS
// transport; node i is "n<i>".
func testCluster(t *testing.T, n int) []*Node {
	t.Helper()
	nodes := testNodes(t, n, nil)
	for _, nd := range nodes {
		waitFormed(t, nd, n)
	}
	return nodes
}

// waitFormed waits until nd sees n nodes in a normal epoch with quorum.
func waitFormed(t *testing.T, nd *Node, n int) {
	t.Helper()
	waitUntil(t, string(nd.Name())+" sees every node with quorum", func() bool {
		st := nd.Status()
		return st.Quorum && len(nd.Messenger().Live()) == n && st.Phase == "normal" && len(nd.Locks().Dump().Members) == n
	})
}

// testNodes makes (does not start) n nodes n0, n1, …; mod may change each
// config (i, cfg) before New; by default node i > 0 joins node 0.
func testNodes(t *testing.T, n int, mod func(i int, cfg *Config)) []*Node {
	t.Helper()
	ca, err := certs.NewCA("cluster test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	var voters []lockd.NodeID
	for i := range n {
		voters = append(voters, lockd.NodeID(fmt.Sprintf("n%d", i)))
	}
	dir := t.TempDir()
	var nodes []*Node
	for i, name := range voters {
		kp, err := ca.IssueNode(string(name))
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Name: name, Voters: voters, Bind: "127.0.0.1:0", RPC: "127.0.0.1:0", Key: key,
			Certificate: kp.TLSCertificate(), CA: ca.Pool(), Tunables: membership.FastLocal(),
			StatePath: filepath.Join(dir, string(name)+".state"), Logger: quiet}
		if mod != nil {
			mod(i, &cfg)
		} else if i > 0 {
			cfg.Join = []string{nodes[0].GossipAddr()}
		}
		nd, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nd.Messenger().Handle("whoami", func(_ context.Context, from lockd.NodeID, m Message) ([]byte, error) {
			return fmt.Appendf(nil, "%s asked %s about %s", from, name, m.Array), nil
		})
		nodes = append(nodes, nd)
		if mod == nil {
			// The next node joins this one: start it now.
			if err := nd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { nd.stop() })
		}
	}
	return nodes
}

func TestNodeConfigRefusals(t *testing.T) {
	ca, err := certs.NewCA("t", 0)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.IssueNode("a")
	if err != nil {
		t.Fatal(err)
	}
	good := Config{Name: "a", Voters: []lockd.NodeID{"a", "b", "c"}, Key: make([]byte, 32), Certificate: kp.TLSCertificate(), CA: ca.Pool()}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "node name"},
		{"no voters", func(c *Config) { c.Voters = nil }, "node list"},
		{"not a voter", func(c *Config) { c.Name = "d" }, "not in the node list"},
		{"no key", func(c *Config) { c.Key = nil }, "encryption key"},
		{"no certificate", func(c *Config) { c.CA = nil }, "mutual TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mod(&cfg)
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error with %q", err, tc.want)
			}
		})
	}
	if _, err := New(good); err != nil {
		t.Fatalf("New(good): %v", err)
	}
}

// TestNodeRealCluster: three nodes with real serf and mutual TLS lock,
// message each other over the shared transport, and survive one node's
// crash: the others keep quorum, the crashed node's lock is granted to a
// survivor with a larger fencing token.
func TestNodeRealCluster(t *testing.T) {
	nodes := testCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()

	// Messenger over TLS: a call and a broadcast.
	got, err := nodes[0].Messenger().Call(ctx, "n1", Message{Type: "whoami", Array: "u"})
	if err != nil || string(got) != "n0 asked n1 about u" {
		t.Fatalf("Call = %q, %v", got, err)
	}
	if _, err := nodes[0].Messenger().Call(ctx, "n2", Message{Type: "nope"}); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("unknown type over TLS: %v", err)
	}
	all, err := nodes[2].Messenger().Broadcast(ctx, Message{Type: "whoami"})
	if err != nil || len(all) != 2 || string(all["n0"]) != "n2 asked n0 about " || string(all["n1"]) != "n2 asked n1 about " {
		t.Fatalf("Broadcast = %q, %v", all, err)
	}

	// The messenger's counters saw it: n0 made one good and one refused
	// call; n1 served one.
	metrics := gather(t, nodes[0])
	for _, want := range []string{`ddraid_cluster_messenger_calls_total{result="ok"} 1`, `ddraid_cluster_messenger_calls_total{result="error"} 1`,
		`ddraid_cluster_messenger_requests_total{result="ok"} 1`, `ddraid_cluster_members{state="alive"} 3`, `ddraid_cluster_epoch_members 3`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("n0's metrics lack %q:\n%s", want, metrics)
		}
	}
	if m := gather(t, nodes[2]); !strings.Contains(m, `ddraid_cluster_messenger_requests_total{result="unknown_type"} 1`) {
		t.Errorf("n2's metrics do not count the unknown type:\n%s", m)
	}

	// The whole cluster's lock dumps, one per node.
	dumps, err := nodes[1].ClusterDump(ctx)
	if err != nil || len(dumps) != 3 || dumps[0].Node != "n0" || dumps[1].Node != "n1" || dumps[2].Node != "n2" {
		t.Fatalf("ClusterDump = %+v, %v", dumps, err)
	}

	// n2 holds EX; n0 cannot get it at once.
	held, err := nodes[2].Locks().Lockspace("test").Lock(ctx, "r", lockd.EX, 0)
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := held.Token()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[0].Locks().Lockspace("test").Lock(ctx, "r", lockd.EX, lockd.NoQueue); !errors.Is(err, lockd.ErrAgain) {
		t.Fatalf("second EX: %v, want ErrAgain", err)
	}

	// n2 crashes (no leave): n0 gets the lock after recovery.
	nodes[2].stop()
	l, err := nodes[0].Locks().Lockspace("test").Lock(ctx, "r", lockd.EX, 0)
	if err != nil {
		t.Fatalf("EX after the holder crashed: %v", err)
	}
	tok0, err := l.Token()
	if err != nil {
		t.Fatal(err)
	}
	if !tok2.Less(tok0) || tok0.Epoch <= tok2.Epoch {
		t.Fatalf("token after takeover %v, want a later epoch than %v", tok0, tok2)
	}
	waitUntil(t, "n0 sees n2 failed", func() bool {
		st := nodes[0].Status()
		i := slices.IndexFunc(st.Members, func(m MemberStatus) bool { return m.Name == "n2" })
		return i >= 0 && st.Members[i].State == StateFailed && !st.Members[i].Lockd && st.Quorum
	})
	if live := nodes[0].Messenger().Live(); !slices.Equal(live, []lockd.NodeID{"n0", "n1"}) {
		t.Fatalf("live after crash: %v", live)
	}
	if _, err := nodes[0].Messenger().Broadcast(ctx, Message{Type: "whoami"}); err != nil {
		t.Fatalf("Broadcast after crash: %v", err)
	}
}

// gather renders the node's metrics in the text format.
func gather(t *testing.T, n *Node) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(n.Collector())
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("metrics: %d\n%s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

func TestHardStateFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lockd.state")
	hs, err := loadHardState(p)
	if err != nil || hs != (nodeState{}) {
		t.Fatalf("missing file: %+v, %v", hs, err)
	}
	want := nodeState{HardState: lockd.HardState{Promised: lockd.Ballot{N: 3, Node: "a", Inc: 9}, Accepted: 2, AcceptedBy: lockd.Ballot{N: 2, Node: "b", Inc: 1}}, Incarnation: 77}
	if err := saveHardState(p, want); err != nil {
		t.Fatal(err)
	}
	if hs, err = loadHardState(p); err != nil || hs != want {
		t.Fatalf("load = %+v, %v; want %+v", hs, err, want)
	}
	if err := saveHardState(filepath.Join(p, "x"), want); err == nil {
		t.Fatal("saving under a file succeeded")
	}
}

// TestNodeRestartIsLeaveAndJoin: a node restarted at once on the same
// addresses (too fast for gossip to notice a failure) comes back with a
// new incarnation; the others count it as left and joined, so its earlier
// boot's lock is purged and a new epoch forms with it.
func TestNodeRestartIsLeaveAndJoin(t *testing.T) {
	nodes := testCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	old := nodes[2]
	l, err := old.Locks().Lockspace("test").Lock(ctx, "r", lockd.EX, 0)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := l.Token()
	if err != nil {
		t.Fatal(err)
	}
	oldInc := old.Status().Incarnation
	cfg := old.cfg
	cfg.Bind, cfg.RPC, cfg.Join = old.GossipAddr(), old.tr.Addr().String(), []string{nodes[0].GossipAddr()}
	old.stop()
	restarted, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := restarted.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restarted.stop)
	waitUntil(t, "n0 sees n2's new incarnation in a new epoch", func() bool {
		st := nodes[0].Status()
		i := slices.IndexFunc(st.Members, func(m MemberStatus) bool { return m.Name == "n2" })
		return i >= 0 && st.Members[i].Incarnation != oldInc && st.Members[i].State == StateAlive && st.Members[i].Lockd &&
			st.Quorum && st.Phase == "normal" && st.Epoch > tok.Epoch
	})
	got, err := nodes[0].Locks().Lockspace("test").Lock(ctx, "r", lockd.EX, 0)
	if err != nil {
		t.Fatalf("EX after the holder restarted: %v", err)
	}
	tok0, err := got.Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok0.Epoch <= tok.Epoch {
		t.Fatalf("token after restart %v, want a later epoch than %v", tok0, tok)
	}
	if _, err := restarted.Messenger().Call(ctx, "n0", Message{Type: "whoami"}); err != nil {
		t.Fatalf("the restarted node's messenger: %v", err)
	}
}

// TestNodeJoinRetries: a node whose join address does not answer yet
// starts anyway and keeps trying; once the other node starts there, the
// two form a cluster.
func TestNodeJoinRetries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	first := l.Addr().String()
	l.Close()
	nodes := testNodes(t, 2, func(i int, cfg *Config) {
		if i == 0 {
			cfg.Bind = first
		} else {
			cfg.Join = []string{first}
		}
	})
	// n1 first: nothing answers at n0's address yet.
	for _, nd := range []*Node{nodes[1], nodes[0]} {
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.stop() })
	}
	for _, nd := range nodes {
		waitFormed(t, nd, 2)
	}
}

// TestNodeCloseLeaves: a node closed gracefully leaves; the others drop
// it from the epoch and keep quorum, and Close stops all its goroutines
// (goleak checks at the end of the package).
func TestNodeCloseLeaves(t *testing.T) {
	nodes := testCluster(t, 3)
	if err := nodes[2].Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := nodes[2].Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, nd := range nodes[:2] {
		waitUntil(t, string(nd.Name())+" drops n2 and keeps quorum", func() bool {
			st := nd.Status()
			i := slices.IndexFunc(st.Members, func(m MemberStatus) bool { return m.Name == "n2" })
			return i >= 0 && st.Members[i].State == StateFailed && !st.Members[i].Lockd && st.Quorum && st.Phase == "normal" &&
				slices.Equal(nd.Messenger().Live(), []lockd.NodeID{"n0", "n1"})
		})
	}
}

// TestNodeOversizeMessages: a request too large for the transport fails at
// once, and a reply too large comes back as an error, not a timeout.
func TestNodeOversizeMessages(t *testing.T) {
	nodes := testCluster(t, 2)
	nodes[1].Messenger().Handle("big", func(context.Context, lockd.NodeID, Message) ([]byte, error) {
		return make([]byte, 2<<20), nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := nodes[0].Messenger().Call(ctx, "n1", Message{Type: "whoami", Body: make([]byte, 2<<20)}); !errorsContain(err, "send") {
		t.Fatalf("oversize request: %v", err)
	}
	if _, err := nodes[0].Messenger().Call(ctx, "n1", Message{Type: "big"}); !errorsContain(err, "reply not sent") {
		t.Fatalf("oversize reply: %v", err)
	}
}

func TestNextIncarnation(t *testing.T) {
	for _, tc := range []struct {
		name string
		now  int64
		last uint64
		want uint64
	}{
		{"first boot", 1000, 0, 1000},
		{"clock ahead of the last boot", 2000, 1000, 2000},
		{"clock equal to the last boot", 1000, 1000, 1001},
		{"clock set back", 500, 1000, 1001},
		{"clock before 1970", -5, 1000, 1001},
		{"no clock, first boot", 0, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nextIncarnation(tc.now, tc.last); got != tc.want {
				t.Fatalf("nextIncarnation(%d, %d) = %d, want %d", tc.now, tc.last, got, tc.want)
			}
		})
	}
}

// TestHardStateFileWithoutIncarnation: a state file written before the
// incarnation was kept (lockd's hard state alone) still reads, with
// incarnation 0.
func TestHardStateFileWithoutIncarnation(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lockd.state")
	old := lockd.HardState{Promised: lockd.Ballot{N: 4, Node: "a", Inc: 3}, Accepted: 4, AcceptedBy: lockd.Ballot{N: 4, Node: "a", Inc: 3}}
	b, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	hs, err := loadHardState(p)
	if err != nil || hs != (nodeState{HardState: old}) {
		t.Fatalf("load = %+v, %v; want %+v with incarnation 0", hs, err, old)
	}
}

// TestIncarnationAboveLastBoot: a node whose last boot's incarnation is
// ahead of the clock (the clock was set back since) starts one above it,
// stores that before anything else, and keeps lockd's hard state.
func TestIncarnationAboveLastBoot(t *testing.T) {
	last := uint64(time.Now().Add(time.Hour).UnixNano())
	hard := lockd.HardState{Promised: lockd.Ballot{N: 2, Node: "n0", Inc: last}}
	var path string
	nodes := testNodes(t, 1, func(_ int, cfg *Config) {
		path = cfg.StatePath
		if err := saveHardState(path, nodeState{HardState: hard, Incarnation: last}); err != nil {
			t.Fatal(err)
		}
	})
	n := nodes[0]
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.stop() })
	if got := n.Status().Incarnation; got != last+1 {
		t.Fatalf("incarnation %d, want %d (one above the last boot's)", got, last+1)
	}
	st, err := loadHardState(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Incarnation != last+1 {
		t.Fatalf("stored incarnation %d, want %d", st.Incarnation, last+1)
	}
	if st.Promised.N < hard.Promised.N {
		t.Fatalf("stored hard state %+v lost the promised ballot %+v", st.HardState, hard.Promised)
	}
}
