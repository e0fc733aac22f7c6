package membership

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/internal/certs"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/transport"
)

// fakePeers records what ApplyTo does.
type fakePeers struct {
	peers map[lockd.NodeID]string
	log   []string
	fail  lockd.NodeID
}

func (f *fakePeers) SetPeer(n lockd.NodeID, addr string) error {
	if n == f.fail {
		return errors.New("refused")
	}
	if f.peers[n] != addr {
		f.log = append(f.log, fmt.Sprintf("set %s %s", n, addr))
	}
	f.peers[n] = addr
	return nil
}

func (f *fakePeers) RemovePeer(n lockd.NodeID) {
	f.log = append(f.log, "remove "+string(n))
	delete(f.peers, n)
}

func TestApplyTo(t *testing.T) {
	self := Member{Name: "a", RPCAddr: "h:1", Incarnation: 1}
	b1 := Member{Name: "b", RPCAddr: "h:2", Incarnation: 1}
	b2 := Member{Name: "b", RPCAddr: "h:22", Incarnation: 2}
	c1 := Member{Name: "c", RPCAddr: "h:3", Incarnation: 1}
	tests := []struct {
		name  string
		start map[lockd.NodeID]string
		view  View
		log   []string
	}{
		{"first view", map[lockd.NodeID]string{}, View{Members: []Member{self, b1, c1}, Joined: []Member{self, b1, c1}},
			[]string{"set b h:2", "set c h:3"}},
		{"failure", map[lockd.NodeID]string{"b": "h:2", "c": "h:3"}, View{Members: []Member{self, b1}, Left: []Member{c1}},
			[]string{"remove c"}},
		{"restart elsewhere", map[lockd.NodeID]string{"b": "h:2"}, View{Members: []Member{self, b2}, Joined: []Member{b2}, Left: []Member{b1}},
			[]string{"set b h:22"}},
		{"nothing new", map[lockd.NodeID]string{"b": "h:2"}, View{Members: []Member{self, b1}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakePeers{peers: tt.start}
			if err := tt.view.ApplyTo(f, "a"); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(f.log, tt.log) {
				t.Fatalf("did %q, want %q", f.log, tt.log)
			}
			if _, ok := f.peers["a"]; ok {
				t.Fatal("self set as a peer")
			}
		})
	}
	f := &fakePeers{peers: map[lockd.NodeID]string{}, fail: "b"}
	err := View{Members: []Member{self, b1, c1}}.ApplyTo(f, "a")
	if err == nil || !strings.Contains(err.Error(), "peer b") || f.peers["c"] != "h:3" {
		t.Fatalf("err %v, peers %v", err, f.peers)
	}
	if got := (View{Members: []Member{self, b1}}).Names(); !slices.Equal(got, []lockd.NodeID{"a", "b"}) {
		t.Fatalf("Names() = %v", got)
	}
}

// agent is a membership and a transport wired the way a lockd node wires
// them: views set the transport's peers.
type agent struct {
	m    *Membership
	tr   *transport.Transport
	done chan struct{}
	// views carries each applied view to the test.
	views chan View
}

func startAgent(t *testing.T, ca *certs.CA, name lockd.NodeID, ip string, key []byte, join []string) *agent {
	t.Helper()
	kp, err := ca.IssueNode(string(name))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.New(transport.Config{Name: name, Listen: ip + ":0", Certificate: kp.TLSCertificate(), CA: ca.Pool(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Start(Config{Name: name, Bind: ip + ":0", RPCAddr: tr.Addr().String(), Join: join, Key: key, Tunables: FastLocal(), Logger: quiet})
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	a := &agent{m: m, tr: tr, done: make(chan struct{}), views: make(chan View, 1024)}
	go func() {
		defer close(a.done)
		for v := range m.Views() {
			if err := v.ApplyTo(tr, name); err != nil {
				t.Error(err)
			}
			a.views <- v
		}
	}()
	t.Cleanup(a.stop)
	return a
}

func (a *agent) stop() {
	a.m.Shutdown()
	<-a.done
	a.tr.Close()
}

// waitMembers waits until the agent applied a view with exactly these
// members.
func (a *agent) waitMembers(t *testing.T, want ...lockd.NodeID) {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case v := <-a.views:
			if slices.Equal(v.Names(), want) {
				return
			}
		case <-timeout:
			t.Fatalf("%s never applied members %v", a.m.Self().Name, want)
		}
	}
}

// TestViewsDriveTransport runs three agents with real serf and the real
// TLS transport: every agent reaches every live member through the peers
// its views set, and a failed member stops being a peer.
func TestViewsDriveTransport(t *testing.T) {
	ca, err := certs.NewCA("wiring CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	a := startAgent(t, ca, "a", "127.0.0.41", key, nil)
	b := startAgent(t, ca, "b", "127.0.0.42", key, []string{a.m.GossipAddr()})
	c := startAgent(t, ca, "c", "127.0.0.43", key, []string{a.m.GossipAddr()})
	agents := []*agent{a, b, c}
	for _, x := range agents {
		x.waitMembers(t, "a", "b", "c")
	}
	for _, x := range agents {
		for _, y := range agents {
			if err := x.tr.Send(y.tr.Name(), []byte("hi from "+string(x.tr.Name()))); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, y := range agents {
		var from []string
		for range agents {
			select {
			case f := <-y.tr.Receive():
				if string(f.Data) != "hi from "+string(f.From) {
					t.Fatalf("%s got %q from %s", y.tr.Name(), f.Data, f.From)
				}
				from = append(from, string(f.From))
			case <-time.After(waitLimit):
				t.Fatalf("%s received only from %v", y.tr.Name(), from)
			}
		}
		slices.Sort(from)
		if !slices.Equal(from, []string{"a", "b", "c"}) {
			t.Fatalf("%s received from %v", y.tr.Name(), from)
		}
	}

	c.stop()
	for _, x := range []*agent{a, b} {
		x.waitMembers(t, "a", "b")
		if err := x.tr.Send("c", []byte("x")); !errors.Is(err, transport.ErrUnknownPeer) {
			t.Fatalf("%s: send to failed member: %v", x.tr.Name(), err)
		}
	}
}
