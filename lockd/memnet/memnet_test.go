package memnet

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/lockd"
)

func drain(e *Endpoint) []string {
	var out []string
	for {
		select {
		case f := <-e.Receive():
			out = append(out, fmt.Sprintf("%s:%s", f.From, f.Data))
		default:
			return out
		}
	}
}

func TestNetwork(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(n *Network)
		want  []string // what b receives from a and c
	}{
		{"plain", func(n *Network) {}, []string{"a:1", "c:2"}},
		{"partition a from b", func(n *Network) { n.Partition([]lockd.NodeID{"a"}, []lockd.NodeID{"b", "c"}) }, []string{"c:2"}},
		{"heal", func(n *Network) { n.Partition([]lockd.NodeID{"a"}, []lockd.NodeID{"b"}); n.Heal() }, []string{"a:1", "c:2"}},
		{"sender down", func(n *Network) { n.Crash("c") }, []string{"a:1"}},
		{"receiver down", func(n *Network) { n.Crash("b") }, nil},
		{"total loss", func(n *Network) { n.SetLoss(100) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := New(1)
			a, b, c := n.Endpoint("a"), n.Endpoint("b"), n.Endpoint("c")
			tc.setup(n)
			_ = a.Send("b", []byte("1"))
			_ = c.Send("b", []byte("2"))
			for n.Pending() > 0 {
				n.Deliver()
			}
			got := drain(b)
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRestartDropsOldFrames(t *testing.T) {
	n := New(1)
	a := n.Endpoint("a")
	old := n.Endpoint("b")
	_ = a.Send("b", []byte("before"))
	n.Crash("b")
	b := n.Restart("b")
	_ = a.Send("b", []byte("after"))
	for n.Pending() > 0 {
		n.Deliver()
	}
	if got := drain(b); !slices.Equal(got, []string{"a:after"}) {
		t.Errorf("new life got %v", got)
	}
	if got := drain(old); len(got) != 0 {
		t.Errorf("old life got %v", got)
	}
	// The old endpoint can no longer send.
	_ = old.Send("a", []byte("ghost"))
	n.Deliver()
	if got := drain(a); len(got) != 0 {
		t.Errorf("a got %v from a dead endpoint", got)
	}
}

// The same seed and the same sends give the same arrivals, in the same order.
func TestDeterministic(t *testing.T) {
	run := func(seed uint64) []string {
		n := New(seed)
		n.SetDelay(3)
		n.SetLoss(20)
		a, b := n.Endpoint("a"), n.Endpoint("b")
		for i := range 50 {
			_ = a.Send("b", []byte(fmt.Sprint(i)))
		}
		var got []string
		for n.Pending() > 0 {
			n.Deliver()
			got = append(got, drain(b)...)
			got = append(got, "|")
		}
		return got
	}
	x, y, z := run(7), run(7), run(8)
	if !slices.Equal(x, y) {
		t.Errorf("same seed, different runs:\n%v\n%v", x, y)
	}
	if slices.Equal(x, z) {
		t.Errorf("different seeds gave the same run")
	}
}

func TestPump(t *testing.T) {
	defer goleak.VerifyNone(t)
	n := New(1)
	a, b := n.Endpoint("a"), n.Endpoint("b")
	n.Start(time.Millisecond)
	defer n.Stop()
	_ = a.Send("b", []byte("x"))
	select {
	case f := <-b.Receive():
		if f.From != "a" || string(f.Data) != "x" {
			t.Errorf("got %+v", f)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pump delivered nothing")
	}
}
