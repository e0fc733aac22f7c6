package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
)

// clusterWait bounds every wait for gossip and lockd: a deadlock guard far
// above what fast-local failure detection needs, never a measure of speed.
const clusterWait = 2 * time.Minute

// clusterNode is an agent in cluster mode.
type clusterNode struct {
	*agent
	name   string
	gossip string
}

// clusterPKI makes a CA, a certificate per node (DNS name = node name, IP =
// its address) and a gossip key, all in dir.
func clusterPKI(t *testing.T, dir string, names, ips []string) (pkiDir, keyFile string) {
	t.Helper()
	pkiDir = filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, ddraidBin, "tls", "init-ca", "--dir="+pkiDir)
	for i, n := range names {
		run(t, ddraidBin, "tls", "issue", "--dir="+pkiDir, "--name="+n, "--ip="+ips[i])
	}
	keyFile = filepath.Join(dir, "gossip.key")
	key := run(t, ddraidBin, "cluster", "keygen")
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	return pkiDir, keyFile
}

// startCluster starts one agent per address (node names n0, n1, …), each
// run under prefix(i) (nil: directly) with the member, gossip and transport
// ports ports(ip) gives; every node but the first joins the first. Gossip
// uses fast-local failure detection.
func startCluster(t *testing.T, dir string, ips []string, ports func(ip string) (mem, gossip, rpc string), prefix func(i int) []string) []*clusterNode {
	t.Helper()
	var names []string
	for i := range ips {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	pkiDir, keyFile := clusterPKI(t, dir, names, ips)
	var nodes []*clusterNode
	for i, ip := range ips {
		memPort, gossipPort, rpcPort := ports(ip)
		n := &clusterNode{name: names[i], gossip: net.JoinHostPort(ip, gossipPort)}
		extra := []string{"--nodes=" + strings.Join(names, ","), "--node-name=" + n.name, "--bind=" + n.gossip,
			"--rpc=" + net.JoinHostPort(ip, rpcPort), "--encrypt-key-file=" + keyFile, "--gossip-tuning=fast-local",
			"--tls-cert=" + filepath.Join(pkiDir, n.name+".crt"), "--tls-key=" + filepath.Join(pkiDir, n.name+".key"),
			"--tls-ca=" + filepath.Join(pkiDir, "ca.crt")}
		if i > 0 {
			extra = append(extra, "--join="+nodes[0].gossip)
		}
		g := &agent{disk: filepath.Join(dir, fmt.Sprintf("disk%d", i)), stateDir: filepath.Join(dir, n.name),
			ip: ip, port: memPort, extra: extra}
		if prefix != nil {
			g.prefix = prefix(i)
		}
		run(t, "truncate", "-s", "16M", g.disk)
		g.start(t)
		t.Cleanup(func() {
			g.kill9(t)
			if t.Failed() {
				t.Logf("agent %s:\n%s", n.name, g.output())
			}
		})
		n.agent = g
		nodes = append(nodes, n)
	}
	return nodes
}

// status runs `ddraid cluster status --json` against the node's agent.
func (n *clusterNode) status(t *testing.T) cluster.Status {
	t.Helper()
	var st cluster.Status
	out := run(t, ddraidBin, "cluster", "status", "--json", "--control="+n.control())
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("cluster status of %s: %v\n%s", n.name, err, out)
	}
	return st
}

// locks runs `ddraid locks --json` against the node's agent.
func (n *clusterNode) locks(t *testing.T) lockd.Dump {
	t.Helper()
	var d lockd.Dump
	out := run(t, ddraidBin, "locks", "--json", "--control="+n.control())
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("locks of %s: %v\n%s", n.name, err, out)
	}
	return d
}

// acquire has the node's agent take resource r in EX and hold it.
func (n *clusterNode) acquire(t *testing.T, args ...string) cluster.AcquireReply {
	t.Helper()
	out := run(t, ddraidBin, append([]string{"locks", "acquire", "r", "EX", "--json", "--hold=10m", "--control=" + n.control()}, args...)...)
	var rep cluster.AcquireReply
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("locks acquire on %s: %v\n%s", n.name, err, out)
	}
	return rep
}

// acquireAsync starts `ddraid locks acquire r EX` on the node's agent
// (waiting up to clusterWait) and returns a channel with its outcome.
func (n *clusterNode) acquireAsync(t *testing.T) <-chan acquireResult {
	t.Helper()
	cmd := exec.Command(ddraidBin, "locks", "acquire", "r", "EX", "--json", "--hold=10m", "--wait="+clusterWait.String(), "--control="+n.control())
	ch := make(chan acquireResult, 1)
	go func() {
		out, err := cmd.CombinedOutput()
		var rep cluster.AcquireReply
		if err == nil {
			err = json.Unmarshal(out, &rep)
		}
		ch <- acquireResult{rep, err, string(out)}
	}()
	return ch
}

type acquireResult struct {
	rep cluster.AcquireReply
	err error
	out string
}

func (r acquireResult) get(t *testing.T, who string) cluster.AcquireReply {
	t.Helper()
	if r.err != nil {
		t.Fatalf("locks acquire on %s: %v\n%s", who, r.err, r.out)
	}
	return r.rep
}

// waitFor polls cond (every 100 ms) until it holds or clusterWait passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(clusterWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, clusterWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// member returns the named member of a status.
func member(st cluster.Status, name string) cluster.MemberStatus {
	for _, m := range st.Members {
		if string(m.Name) == name {
			return m
		}
	}
	return cluster.MemberStatus{}
}

// formed reports whether st shows quorum in a normal epoch with exactly the
// named nodes alive and in the epoch.
func formed(st cluster.Status, alive ...string) bool {
	if !st.Quorum || st.Phase != "normal" {
		return false
	}
	for _, m := range st.Members {
		in := slices.Contains(alive, string(m.Name))
		if in != (m.State == cluster.StateAlive) || in != m.Lockd {
			return false
		}
	}
	return true
}

func names(nodes []*clusterNode) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.name)
	}
	return out
}

// waitFormed waits until every node in nodes sees exactly them alive, with
// quorum.
func waitFormed(t *testing.T, nodes []*clusterNode) {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, n.name+" sees "+strings.Join(names(nodes), ",")+" with quorum", func() bool {
			return formed(n.status(t), names(nodes)...)
		})
	}
}

// queued reports whether `ddraid locks --all` through node from shows a
// master of r with holder granted EX and waiter waiting for EX; it also
// returns the text of `ddraid locks --all`.
func queued(t *testing.T, from *clusterNode, holder, waiter string) (string, bool) {
	var cd cluster.ClusterDump
	out := run(t, ddraidBin, "locks", "--all", "--json", "--control="+from.control())
	if err := json.Unmarshal([]byte(out), &cd); err != nil {
		t.Fatalf("locks --all: %v\n%s", err, out)
	}
	for _, d := range cd.Dumps {
		for _, r := range d.Resources {
			if r.Name != "r" || len(r.Granted) != 1 || len(r.Waiting) != 1 {
				continue
			}
			if string(r.Granted[0].Node) == holder && r.Granted[0].Granted == lockd.EX &&
				string(r.Waiting[0].Node) == waiter && r.Waiting[0].Requested == lockd.EX {
				return run(t, ddraidBin, "locks", "--all", "--control="+from.control()), true
			}
		}
	}
	return "", false
}

// TestClusterLoopback: five agents on 127.0.0.11–15 form a cluster; every
// `ddraid cluster status` shows five nodes and quorum. An EX lock held on
// one node blocks another (ddraid locks shows the holder and the waiter at
// the master). kill -9 of the holder's agent: after recovery the waiter
// gets the lock with a fencing token of a larger epoch. The killed agent
// restarts and rejoins in a newer epoch; SIGTERM makes an agent leave
// cleanly.
func TestClusterLoopback(t *testing.T) {
	needTools(t, "truncate")
	dir := t.TempDir()
	var ips []string
	for i := range 5 {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", 11+i))
	}
	nodes := startCluster(t, dir, ips, func(ip string) (string, string, string) {
		return freePortOn(t, ip), freePortOn(t, ip), freePortOn(t, ip)
	}, nil)
	waitFormed(t, nodes)
	txt := run(t, ddraidBin, "cluster", "status", "--control="+nodes[3].control())
	for _, want := range []string{"node n3", "quorum: yes", "voters alive: 5 of 5 (quorum needs 3)", "n0  ", "n4  "} {
		if !strings.Contains(txt, want) {
			t.Errorf("cluster status lacks %q:\n%s", want, txt)
		}
	}

	held := nodes[1].acquire(t)
	if held.Node != "n1" || held.Mode != lockd.EX || held.Token.Epoch == 0 {
		t.Fatalf("grant on n1: %+v", held)
	}
	if out, err := runErr(ddraidBin, "locks", "acquire", "r", "EX", "--noqueue", "--control="+nodes[2].control()); err == nil ||
		!strings.Contains(out, "NOQUEUE") {
		t.Fatalf("NOQUEUE request on n2 while n1 holds EX: %v\n%s", err, out)
	}
	waiting := nodes[2].acquireAsync(t)
	var dump string
	waitFor(t, "a master shows n1 granted and n2 waiting", func() bool {
		var ok bool
		dump, ok = queued(t, nodes[0], "n1", "n2")
		return ok
	})
	for _, want := range []string{"granted", "waiting", "node n0", "node n1", "node n2", "node n3", "node n4", "EX"} {
		if !strings.Contains(dump, want) {
			t.Errorf("ddraid locks --all lacks %q:\n%s", want, dump)
		}
	}
	select {
	case r := <-waiting:
		t.Fatalf("n2 got the lock while n1 holds it: %+v %v %s", r.rep, r.err, r.out)
	default:
	}

	nodes[1].kill9(t)
	var got cluster.AcquireReply
	select {
	case r := <-waiting:
		got = r.get(t, "n2")
	case <-time.After(clusterWait + 30*time.Second):
		t.Fatal("n2's request never completed")
	}
	if got.Node != "n2" || got.Token.Epoch <= held.Token.Epoch {
		t.Fatalf("grant on n2 after n1 died: %+v, want an epoch above n1's %v", got, held.Token)
	}
	t.Logf("n1 held r with token %v; after its kill -9 n2 got it with token %v", held.Token, got.Token)
	survivors := []*clusterNode{nodes[0], nodes[2], nodes[3], nodes[4]}
	waitFormed(t, survivors)
	if st := nodes[0].status(t); member(st, "n1").State != cluster.StateFailed || st.Epoch < got.Token.Epoch {
		t.Fatalf("n0's status after n1 died: %+v", st)
	}

	// n1 comes back (a new incarnation, its lockd state kept in its state
	// dir): it rejoins in a new epoch, and holds nothing of its old life.
	oldInc := member(nodes[0].status(t), "n1").Incarnation
	if _, err := os.Stat(filepath.Join(nodes[1].stateDir, "agent", "lockd.state")); err != nil {
		t.Fatalf("n1 kept no lockd state: %v", err)
	}
	nodes[1].start(t)
	waitFormed(t, nodes)
	st := nodes[1].status(t)
	if st.Incarnation == oldInc || st.Epoch <= got.Token.Epoch {
		t.Fatalf("restarted n1: incarnation %x (was %x), epoch %d (want above %d)", st.Incarnation, oldInc, st.Epoch, got.Token.Epoch)
	}
	if d := nodes[1].locks(t); len(d.Locks) != 0 {
		t.Fatalf("restarted n1 holds locks: %+v", d.Locks)
	}

	// SIGTERM: n4 leaves cleanly (exit 0); the other four keep quorum.
	nodes[4].cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-nodes[4].done:
		nodes[4].done = nil
		if err != nil {
			t.Fatalf("agent n4 after SIGTERM: %v\n%s", err, nodes[4].output())
		}
	case <-time.After(clusterWait):
		t.Fatalf("agent n4 still running %v after SIGTERM", clusterWait)
	}
	waitFormed(t, nodes[:4])
}

// hubNet is five network namespaces on one bridge (in a namespace of its
// own): ns i has address 10.232.X.(i+1)/24 on its veth; link i can be
// taken down at the bridge to partition node i.
type hubNet struct {
	hub   string
	nodes []string // namespaces
	links []string // bridge-side veth names, in the hub namespace
	ips   []string
}

func newHubNet(t *testing.T, n int) *hubNet {
	t.Helper()
	pid := os.Getpid() % 100000
	h := &hubNet{hub: fmt.Sprintf("dch%d", pid)}
	x := os.Getpid() % 250
	add := func(ns string) {
		runErr("ip", "netns", "del", ns) // a leftover of an earlier run
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := runErr("ip", "netns", "del", ns); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	add(h.hub)
	run(t, "ip", "-n", h.hub, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", h.hub, "link", "set", "br0", "up")
	for i := range n {
		ns := fmt.Sprintf("dcn%d-%d", pid, i)
		add(ns)
		link, peer := fmt.Sprintf("hb%d", i), fmt.Sprintf("dce%d-%d", pid, i)
		run(t, "ip", "-n", h.hub, "link", "add", link, "type", "veth", "peer", "name", peer)
		run(t, "ip", "-n", h.hub, "link", "set", peer, "netns", ns)
		run(t, "ip", "-n", h.hub, "link", "set", link, "master", "br0")
		run(t, "ip", "-n", h.hub, "link", "set", link, "up")
		ip := fmt.Sprintf("10.232.%d.%d", x, i+1)
		run(t, "ip", "-n", ns, "addr", "add", ip+"/24", "dev", peer)
		run(t, "ip", "-n", ns, "link", "set", peer, "up")
		h.nodes, h.links, h.ips = append(h.nodes, ns), append(h.links, link), append(h.ips, ip)
	}
	return h
}

func (h *hubNet) setLink(t *testing.T, i int, state string) {
	t.Helper()
	run(t, "ip", "-n", h.hub, "link", "set", h.links[i], state)
}

// TestClusterPartition: five agents in five network namespaces on one
// bridge. n4 holds an EX lock; its link goes down. n0's request for the
// lock is granted only once n4 has lost quorum (its own status says so),
// with a fencing token of a larger epoch, and n4's lock is gone. After the
// link comes back n4 rejoins and sees the new epoch.
func TestClusterPartition(t *testing.T) {
	needTools(t, "ip", "truncate")
	dir := t.TempDir()
	h := newHubNet(t, 5)
	nodes := startCluster(t, dir, h.ips, func(string) (string, string, string) { return "10810", "7946", "7947" }, func(i int) []string {
		return []string{"ip", "netns", "exec", h.nodes[i]}
	})
	waitFormed(t, nodes)

	p := nodes[4]
	held := p.acquire(t)
	if held.Node != "n4" || held.Token.Epoch == 0 {
		t.Fatalf("grant on n4: %+v", held)
	}
	h.setLink(t, 4, "down")
	waiting := nodes[0].acquireAsync(t)
	var got cluster.AcquireReply
	select {
	case r := <-waiting:
		got = r.get(t, "n0")
	case <-time.After(clusterWait + 30*time.Second):
		t.Fatal("n0's request never completed")
	}
	// n4 is still cut off: it cannot have regained quorum since.
	if st := p.status(t); st.Quorum {
		t.Fatalf("n0 was granted the lock while the partitioned n4 still claims quorum: %+v", st)
	}
	if txt := run(t, ddraidBin, "cluster", "status", "--control="+p.control()); !strings.Contains(txt, "quorum: no") {
		t.Errorf("cluster status on the partitioned n4 does not say it lacks quorum:\n%s", txt)
	}
	if got.Token.Epoch <= held.Token.Epoch {
		t.Fatalf("grant on n0: token %v, want an epoch above n4's %v", got.Token, held.Token)
	}
	t.Logf("n4 held r with token %v; after the partition n0 got it with token %v", held.Token, got.Token)
	majority := nodes[:4]
	waitFormed(t, majority)

	h.setLink(t, 4, "up")
	waitFormed(t, nodes)
	st := p.status(t)
	if st.Epoch < got.Token.Epoch {
		t.Fatalf("n4 after heal is in epoch %d, want at least %d", st.Epoch, got.Token.Epoch)
	}
	for _, l := range p.locks(t).Locks {
		if l.Resource == "r" && l.Granted == lockd.EX {
			t.Fatalf("n4 still holds r in EX after it was granted to n0: %+v", l)
		}
	}
}

// TestClusterRefusals: cluster mode refuses to start without mutual TLS, a
// gossip key or a sane node list, and the cluster commands say what is
// wrong with the agent they talk to.
func TestClusterRefusals(t *testing.T) {
	needTools(t, "truncate")
	dir := t.TempDir()
	pkiDir, keyFile := clusterPKI(t, dir, []string{"a"}, []string{"127.0.0.11"})
	badKey := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(badKey, []byte("not base64!"), 0o600); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk")
	run(t, "truncate", "-s", "16M", disk)
	base := []string{"agent", "--state-dir=" + filepath.Join(dir, "s"), "--host-disk=" + disk,
		"--listen-member=127.0.0.11:" + freePortOn(t, "127.0.0.11"), "--bind=127.0.0.11:" + freePortOn(t, "127.0.0.11"),
		"--rpc=127.0.0.11:" + freePortOn(t, "127.0.0.11")}
	tlsFlags := []string{"--tls-cert=" + filepath.Join(pkiDir, "a.crt"), "--tls-key=" + filepath.Join(pkiDir, "a.key"),
		"--tls-ca=" + filepath.Join(pkiDir, "ca.crt")}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--nodes=a,b,c", "--node-name=a", "--encrypt-key-file=" + keyFile}, "needs --tls-cert"},
		{append([]string{"--nodes=a,b,c", "--node-name=a"}, tlsFlags...), "--encrypt-key-file"},
		{append([]string{"--nodes=a,b,c", "--node-name=a", "--encrypt-key-file=" + badKey}, tlsFlags...), "not base64"},
		{append([]string{"--nodes=a,b,c", "--node-name=a", "--encrypt-key-file=" + filepath.Join(dir, "nokey")}, tlsFlags...), "nokey"},
		{append([]string{"--nodes=b,c", "--node-name=a", "--encrypt-key-file=" + keyFile}, tlsFlags...), "not in the node list"},
		{append([]string{"--nodes=a,b,c", "--node-name=b", "--encrypt-key-file=" + keyFile}, tlsFlags...), "not for node"},
		{[]string{"--join=127.0.0.1:7946"}, "need --nodes"},
		{append([]string{"--nodes=a", "--node-name=a", "--encrypt-key-file=" + keyFile, "--gossip-probe-timeout=2s"}, tlsFlags...), "exceeds ProbeInterval"},
		{append([]string{"--nodes=a", "--node-name=a", "--encrypt-key-file=" + keyFile, "--gossip-suspicion-mult=0"}, tlsFlags...), "SuspicionMult 0"},
	} {
		out, err := runErr(ddraidBin, append(base, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("ddraid agent %v: %v, want an error with %q\n%s", c.args, err, c.want, out)
		}
	}

	plain := startAgents(t, dir, 1, "16M")[0]
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"locks", "--control=" + plain.control()}, "does not run in cluster mode"},
		{[]string{"cluster", "status", "--control=" + plain.control()}, "does not run in cluster mode"},
		{[]string{"cluster", "status", "--control=" + filepath.Join(dir, "none.sock")}, "control socket"},
		{[]string{"locks", "acquire", "r", "XX", "--control=" + plain.control()}, "unknown mode"},
	} {
		out, err := runErr(ddraidBin, c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("ddraid %v: %v, want an error with %q\n%s", c.args, err, c.want, out)
		}
	}
}
