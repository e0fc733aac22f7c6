package membership

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/lockd"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitLimit bounds waits for gossip to converge: a deadlock guard, far
// above what FastLocal needs, never a measure of speed.
const waitLimit = 60 * time.Second

func newKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

var quiet = slog.New(slog.NewTextHandler(&bytes.Buffer{}, &slog.HandlerOptions{Level: slog.LevelError + 1}))

// watcher records every view a Membership delivers.
type watcher struct {
	m     *Membership
	mu    sync.Mutex
	views []View
	done  chan struct{}
}

func watch(m *Membership) *watcher {
	w := &watcher{m: m, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for v := range m.Views() {
			w.mu.Lock()
			w.views = append(w.views, v)
			w.mu.Unlock()
		}
	}()
	return w
}

// waitFor polls the recorded views until pred holds.
func (w *watcher) waitFor(t *testing.T, what string, pred func([]View) bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		w.mu.Lock()
		ok := pred(w.views)
		var last View
		if len(w.views) > 0 {
			last = w.views[len(w.views)-1]
		}
		w.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s never happened; last view %s", w.m.self.Name, what, fmtView(last))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fmtView(v View) string {
	f := func(ms []Member) string {
		var s []string
		for _, m := range ms {
			s = append(s, fmt.Sprintf("%s/%x", m.Name, m.Incarnation))
		}
		return strings.Join(s, ",")
	}
	return fmt.Sprintf("members[%s] joined[%s] left[%s]", f(v.Members), f(v.Joined), f(v.Left))
}

func lastView(views []View) View {
	if len(views) == 0 {
		return View{}
	}
	return views[len(views)-1]
}

func has(ms []Member, name lockd.NodeID, inc uint64) bool {
	return slices.ContainsFunc(ms, func(m Member) bool { return m.Name == name && m.Incarnation == inc })
}

func names(ms []Member) []lockd.NodeID {
	var out []lockd.NodeID
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

type node struct {
	m *Membership
	w *watcher
}

func startNode(t *testing.T, name lockd.NodeID, bind string, key []byte, join []string) (*node, error) {
	t.Helper()
	host, _, _ := net.SplitHostPort(bind)
	m, err := Start(Config{
		Name:     name,
		Bind:     bind,
		RPCAddr:  net.JoinHostPort(host, "7000"),
		Join:     join,
		Key:      key,
		Tunables: FastLocal(),
		Logger:   quiet,
	})
	if err != nil {
		return nil, err
	}
	n := &node{m: m, w: watch(m)}
	t.Cleanup(func() { n.stop() })
	return n, nil
}

func (n *node) stop() {
	n.m.Shutdown()
	<-n.w.done
}

// TestFiveMembers runs five agents on 127.0.0.11 to .15: they join, one
// fails without leaving, it restarts with a new incarnation, another
// restarts at once, and an agent with the wrong key cannot join.
func TestFiveMembers(t *testing.T) {
	key := newKey(t)
	var nodes []*node
	all := []lockd.NodeID{"n1", "n2", "n3", "n4", "n5"}
	for i, name := range all {
		var join []string
		if i > 0 {
			join = []string{nodes[0].m.GossipAddr()}
		}
		n, err := startNode(t, name, fmt.Sprintf("127.0.0.%d:0", 11+i), key, join)
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.w.waitFor(t, "all five members", func(vs []View) bool {
			return slices.Equal(names(lastView(vs).Members), all)
		})
	}
	for _, mb := range nodes[0].m.Live() {
		if mb.RPCAddr == "" || mb.Incarnation == 0 || mb.GossipAddr == "" {
			t.Fatalf("incomplete member %+v", mb)
		}
	}

	// n5 stops without a leave message: the others see it fail.
	n5 := nodes[4]
	old5 := n5.m.Self()
	n5.stop()
	for _, n := range nodes[:4] {
		n.w.waitFor(t, "n5 failing", func(vs []View) bool {
			return !has(lastView(vs).Members, "n5", old5.Incarnation) &&
				slices.ContainsFunc(vs, func(v View) bool { return has(v.Left, "n5", old5.Incarnation) })
		})
	}

	// n5 comes back at the same address with a new incarnation.
	new5, err := startNode(t, "n5", old5.GossipAddr, key, []string{nodes[0].m.GossipAddr()})
	if err != nil {
		t.Fatalf("restart n5: %v", err)
	}
	if new5.m.Self().Incarnation == old5.Incarnation {
		t.Fatal("restart drew the same incarnation")
	}
	for _, n := range nodes[:4] {
		n.w.waitFor(t, "n5 rejoining", func(vs []View) bool {
			return has(lastView(vs).Members, "n5", new5.m.Self().Incarnation)
		})
	}

	// n4 restarts at once, likely before anyone noticed it was gone.
	// Whatever serf reports (failure and join, or an update), the views
	// must show the old incarnation leaving and the new one joining, and
	// never both in one member list.
	old4 := nodes[3].m.Self()
	nodes[3].stop()
	new4, err := startNode(t, "n4", old4.GossipAddr, key, []string{nodes[0].m.GossipAddr()})
	if err != nil {
		t.Fatalf("restart n4: %v", err)
	}
	inc4 := new4.m.Self().Incarnation
	for _, n := range []*node{nodes[0], nodes[1], nodes[2], new5} {
		n.w.waitFor(t, "n4's new incarnation", func(vs []View) bool {
			return has(lastView(vs).Members, "n4", inc4)
		})
		n.w.mu.Lock()
		vs := slices.Clone(n.w.views)
		n.w.mu.Unlock()
		left, joined := -1, -1
		for i, v := range vs {
			if has(v.Left, "n4", old4.Incarnation) && left < 0 {
				left = i
			}
			if has(v.Joined, "n4", inc4) && joined < 0 {
				joined = i
			}
			count := 0
			for _, mb := range v.Members {
				if mb.Name == "n4" {
					count++
				}
			}
			if count > 1 {
				t.Fatalf("%s: view lists n4 twice: %s", n.m.Self().Name, fmtView(v))
			}
		}
		if n != new5 && (left < 0 || joined < 0 || left > joined) {
			t.Fatalf("%s: n4 restart not reported as leave+join (left at view %d, joined at %d)", n.m.Self().Name, left, joined)
		}
	}

	// A member with another key cannot join.
	_, err = startNode(t, "n6", "127.0.0.16:0", newKey(t), []string{nodes[0].m.GossipAddr()})
	if err == nil {
		t.Fatal("member with the wrong key joined")
	}
	for _, mb := range nodes[0].m.Live() {
		if mb.Name == "n6" {
			t.Fatal("n6 is listed as a member")
		}
	}
}

func TestLeaveIsReported(t *testing.T) {
	key := newKey(t)
	a, err := startNode(t, "a", "127.0.0.21:0", key, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := startNode(t, "b", "127.0.0.22:0", key, []string{a.m.GossipAddr()})
	if err != nil {
		t.Fatal(err)
	}
	a.w.waitFor(t, "b joining", func(vs []View) bool { return len(lastView(vs).Members) == 2 })
	incB := b.m.Self().Incarnation
	if err := b.m.Leave(); err != nil {
		t.Fatal(err)
	}
	a.w.waitFor(t, "b leaving", func(vs []View) bool {
		v := lastView(vs)
		return has(v.Left, "b", incB) && slices.Equal(names(v.Members), []lockd.NodeID{"a"})
	})
}

func TestStartRefuses(t *testing.T) {
	good := func() Config {
		return Config{Name: "a", Bind: "127.0.0.1:0", RPCAddr: "127.0.0.1:7000", Key: make([]byte, 16), Logger: quiet}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no key", func(c *Config) { c.Key = nil }, ErrNoKey.Error()},
		{"short key", func(c *Config) { c.Key = make([]byte, 10) }, "key of 10 bytes"},
		{"no name", func(c *Config) { c.Name = "" }, "node name"},
		{"long name", func(c *Config) { c.Name = lockd.NodeID(strings.Repeat("a", 129)) }, "node name"},
		{"no rpc address", func(c *Config) { c.RPCAddr = "" }, "RPCAddr"},
		{"bad rpc address", func(c *Config) { c.RPCAddr = "nohost" }, "RPC address"},
		{"bad bind", func(c *Config) { c.Bind = "127.0.0.1:x" }, "bind address"},
		{"bad advertise", func(c *Config) { c.Advertise = "nope" }, "advertise address"},
		{"bad tunables", func(c *Config) { c.Tunables = Tunables{ProbeInterval: time.Second} }, "positive"},
		{"probe timeout", func(c *Config) {
			c.Tunables = FastLocal()
			c.Tunables.ProbeTimeout = time.Second
		}, "exceeds"},
		{"suspicion", func(c *Config) {
			c.Tunables = FastLocal()
			c.Tunables.SuspicionMult = 0
		}, "SuspicionMult"},
		{"serf name rules", func(c *Config) { c.Name = "a b" }, "start serf"},
		{"nobody to join", func(c *Config) { c.Join = []string{"127.0.0.1:1"} }, "join"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good()
			tt.mod(&cfg)
			m, err := Start(cfg)
			if err == nil {
				m.Shutdown()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := Start(Config{Name: "a", RPCAddr: "127.0.0.1:1"}); !errors.Is(err, ErrNoKey) {
		t.Fatalf("no key: %v", err)
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		in   string
		size int
	}{
		{"AAAAAAAAAAAAAAAAAAAAAA==", 16},
		{"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 32},
		{"AAAA", 0},
		{"not base64!", 0},
		{"", 0},
	}
	for _, tt := range tests {
		k, err := ParseKey(tt.in)
		if tt.size == 0 {
			if err == nil {
				t.Errorf("ParseKey(%q) succeeded", tt.in)
			}
			continue
		}
		if err != nil || len(k) != tt.size {
			t.Errorf("ParseKey(%q) = %d bytes, %v", tt.in, len(k), err)
		}
	}
}

func TestDiff(t *testing.T) {
	a1 := Member{Name: "a", RPCAddr: "h:1", Incarnation: 1}
	a2 := Member{Name: "a", RPCAddr: "h:1", Incarnation: 2}
	a1moved := Member{Name: "a", RPCAddr: "h:9", Incarnation: 1}
	b1 := Member{Name: "b", RPCAddr: "h:2", Incarnation: 1}
	set := func(ms ...Member) map[lockd.NodeID]Member {
		out := map[lockd.NodeID]Member{}
		for _, m := range ms {
			out[m.Name] = m
		}
		return out
	}
	tests := []struct {
		name         string
		told, live   map[lockd.NodeID]Member
		none         bool
		joined, left []Member
	}{
		{"first view", nil, set(b1, a1), false, []Member{a1, b1}, nil},
		{"first view of nobody", nil, set(), false, nil, nil},
		{"no change", set(a1, b1), set(b1, a1), true, nil, nil},
		{"join", set(a1), set(a1, b1), false, []Member{b1}, nil},
		{"failure", set(a1, b1), set(a1), false, nil, []Member{b1}},
		{"new incarnation", set(a1, b1), set(a2, b1), false, []Member{a2}, []Member{a1}},
		{"moved transport", set(a1), set(a1moved), false, []Member{a1moved}, []Member{a1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := diff(tt.told, tt.live)
			if tt.none {
				if v != nil {
					t.Fatalf("view %s, want none", fmtView(*v))
				}
				return
			}
			if v == nil {
				t.Fatal("no view")
			}
			if !slices.Equal(v.Joined, tt.joined) || !slices.Equal(v.Left, tt.left) {
				t.Fatalf("got %s", fmtView(*v))
			}
			if !slices.Equal(v.Members, sorted(tt.live)) {
				t.Fatalf("members %v", v.Members)
			}
		})
	}
}

func TestApply(t *testing.T) {
	m := &Membership{log: quiet}
	sm := func(inc string) serf.Member {
		return serf.Member{Name: "a", Addr: net.IPv4(127, 0, 0, 1), Port: 7946, Tags: map[string]string{TagRPC: "127.0.0.1:7000", TagIncarnation: inc}}
	}
	live := map[lockd.NodeID]Member{}
	m.apply(live, serf.EventMemberJoin, sm("1"))
	if live["a"].Incarnation != 1 || live["a"].GossipAddr != "127.0.0.1:7946" {
		t.Fatalf("after join: %+v", live)
	}
	m.apply(live, serf.EventMemberUpdate, sm("2"))
	if live["a"].Incarnation != 2 {
		t.Fatalf("after update: %+v", live)
	}
	// A late failure of incarnation 1 does not remove incarnation 2.
	m.apply(live, serf.EventMemberFailed, sm("1"))
	if live["a"].Incarnation != 2 {
		t.Fatalf("stale failure removed the new incarnation: %+v", live)
	}
	m.apply(live, serf.EventMemberFailed, sm("2"))
	if len(live) != 0 {
		t.Fatalf("after failure: %+v", live)
	}
	// Members without our tags are not live.
	m.apply(live, serf.EventMemberJoin, sm("zz"))
	bad := sm("1")
	delete(bad.Tags, TagRPC)
	m.apply(live, serf.EventMemberJoin, bad)
	if len(live) != 0 {
		t.Fatalf("member without valid tags is live: %+v", live)
	}
}

func TestLogWriterLevels(t *testing.T) {
	var buf bytes.Buffer
	w := logWriter{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	tests := []struct{ line, want string }{
		{"[DEBUG] memberlist: probe", "level=DEBUG msg=\"memberlist: probe\""},
		{"[INFO] serf: EventMemberJoin: a", "level=INFO msg=\"serf: EventMemberJoin: a\""},
		{"[WARN] memberlist: refuting", "level=WARN msg=\"memberlist: refuting\""},
		{"[ERR] memberlist: decrypt\n", "level=ERROR msg=\"memberlist: decrypt\""},
		{"no level", "level=INFO msg=\"no level\""},
	}
	for _, tt := range tests {
		buf.Reset()
		if n, err := w.Write([]byte(tt.line)); err != nil || n != len(tt.line) {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if !strings.Contains(buf.String(), tt.want) {
			t.Errorf("%q logged as %q, want %q", tt.line, buf.String(), tt.want)
		}
	}
}

// TestSlowConsumer: while nobody reads a's views, members join and one
// fails; serf is not held up (a's Live list follows), and the views a
// consumer finally reads add up to the same story, merged.
func TestSlowConsumer(t *testing.T) {
	key := newKey(t)
	a, err := Start(Config{Name: "a", Bind: "127.0.0.31:0", RPCAddr: "127.0.0.31:7000", Key: key, Tunables: FastLocal(), Logger: quiet, ViewBuffer: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	var others []*node
	for i, name := range []lockd.NodeID{"b", "c", "d"} {
		n, err := startNode(t, name, fmt.Sprintf("127.0.0.%d:0", 32+i), key, []string{a.GossipAddr()})
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, n)
	}
	incD := others[2].m.Self().Incarnation
	others[2].stop()
	deadline := time.Now().Add(waitLimit)
	for !slices.Equal(names(a.Live()), []lockd.NodeID{"a", "b", "c"}) {
		if time.Now().After(deadline) {
			t.Fatalf("a's live list stuck at %v", names(a.Live()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Now read: at most ViewBuffer old views, then merged ones.
	told := map[lockd.NodeID]uint64{}
	for {
		var v View
		select {
		case v = <-a.Views():
		case <-time.After(waitLimit):
			t.Fatalf("views never reached a, b, c; told %v", told)
		}
		for _, m := range v.Left {
			if told[m.Name] != m.Incarnation {
				t.Fatalf("left %s/%x that was never reported joined", m.Name, m.Incarnation)
			}
			delete(told, m.Name)
		}
		for _, m := range v.Joined {
			told[m.Name] = m.Incarnation
		}
		if len(told) != len(v.Members) {
			t.Fatalf("joined minus left %v does not match members %s", told, fmtView(v))
		}
		if slices.Equal(names(v.Members), []lockd.NodeID{"a", "b", "c"}) {
			break
		}
	}
	if _, ok := told["d"]; ok {
		t.Fatalf("d (incarnation %x) still reported", incD)
	}
}
