package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/lockd"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// echo replies with the sender's name, the array and the body.
func echo(_ context.Context, from lockd.NodeID, m Message) ([]byte, error) {
	return fmt.Appendf(nil, "%s:%s:%s", from, m.Array, m.Body), nil
}

// threeNodes returns a MemNet with nodes a, b, c, each serving: echo,
// fail (an error), route (an unknown sub-type), panic (on a short body) and
// hang (past the caller's deadline).
func threeNodes(t *testing.T) (*MemNet, map[lockd.NodeID]*Courier) {
	net := NewMemNet(quiet)
	t.Cleanup(net.Close)
	cs := map[lockd.NodeID]*Courier{}
	for _, id := range []lockd.NodeID{"a", "b", "c"} {
		c := net.Messenger(id)
		c.Handle("echo", echo)
		c.Handle("fail", func(context.Context, lockd.NodeID, Message) ([]byte, error) {
			return nil, errors.New("no space left")
		})
		c.Handle("route", func(context.Context, lockd.NodeID, Message) ([]byte, error) {
			return nil, fmt.Errorf("router: %w %q", ErrUnknownType, "sub")
		})
		c.Handle("panic", func(_ context.Context, _ lockd.NodeID, m Message) ([]byte, error) {
			return []byte{m.Body[3]}, nil // out of range on a short body
		})
		c.Handle("hang", func(ctx context.Context, _ lockd.NodeID, _ Message) ([]byte, error) {
			<-ctx.Done()
			time.Sleep(time.Millisecond) // answer only after the caller gave up
			return nil, ctx.Err()
		})
		cs[id] = c
	}
	return net, cs
}

func TestCall(t *testing.T) {
	for _, tc := range []struct {
		name    string
		msg     Message
		timeout time.Duration
		want    string // reply
		wantErr []string
		is      error
	}{
		{name: "echo", msg: Message{Type: "echo", Array: "u1", Body: []byte("hi")}, want: "a:u1:hi"},
		{name: "handler error", msg: Message{Type: "fail"}, wantErr: []string{"b: fail failed: no space left"}},
		{name: "unknown type", msg: Message{Type: "frobnicate"}, wantErr: []string{"b", "unknown message type frobnicate"}, is: ErrUnknownType},
		{name: "unknown to a handler", msg: Message{Type: "route"}, wantErr: []string{"b: router: unknown message type \"sub\""}, is: ErrUnknownType},
		{name: "handler panics", msg: Message{Type: "panic", Body: []byte{1}}, wantErr: []string{"b: panic failed: handler for panic panicked", "index out of range"}},
		{name: "timeout", msg: Message{Type: "hang"}, timeout: time.Second, wantErr: []string{"hang to b", "no reply"}, is: context.DeadlineExceeded},
		{name: "default timeout", msg: Message{Type: "hang"}, wantErr: []string{"hang to b"}, is: context.DeadlineExceeded},
		{name: "empty type", msg: Message{}, wantErr: []string{"message type"}},
		{name: "long array", msg: Message{Type: "echo", Array: strings.Repeat("x", 256)}, wantErr: []string{"message array"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, cs := threeNodes(t)
				ctx := context.Background()
				if tc.timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.timeout)
					defer cancel()
				}
				start := time.Now()
				got, err := cs["a"].Call(ctx, "b", tc.msg)
				if tc.wantErr == nil {
					if err != nil || string(got) != tc.want {
						t.Fatalf("Call = %q, %v; want %q", got, err, tc.want)
					}
					return
				}
				if err == nil {
					t.Fatalf("Call = %q, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("error %v is not %v", err, tc.is)
				}
				if tc.name == "default timeout" && time.Since(start) != DefaultTimeout {
					t.Errorf("gave up after %v, want DefaultTimeout %v", time.Since(start), DefaultTimeout)
				}
			})
		})
	}
}

func TestHandlerSeesCallersDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := NewMemNet(quiet)
		defer net.Close()
		a, b := net.Messenger("a"), net.Messenger("b")
		b.Handle("deadline", func(ctx context.Context, _ lockd.NodeID, _ Message) ([]byte, error) {
			dl, ok := ctx.Deadline()
			if !ok {
				return nil, errors.New("no deadline")
			}
			return []byte(time.Until(dl).String()), nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		got, err := a.Call(ctx, "b", Message{Type: "deadline"})
		if err != nil || string(got) != "3s" {
			t.Fatalf("handler saw %q, %v; want 3s", got, err)
		}
	})
}

func TestBroadcast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, cs := threeNodes(t)
		got, err := cs["a"].Broadcast(context.Background(), Message{Type: "echo", Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		want := map[lockd.NodeID]string{"b": "a::x", "c": "a::x"}
		if len(got) != len(want) || string(got["b"]) != want["b"] || string(got["c"]) != want["c"] {
			t.Fatalf("Broadcast = %q, want %q", got, want)
		}

		// b refuses (no handler), c fails: both are named.
		cs["c"].Handle("only-b", echo)
		got, err = cs["a"].Broadcast(context.Background(), Message{Type: "only-b"})
		if err == nil || !strings.Contains(err.Error(), "1 of 2 nodes failed (b)") || !errors.Is(err, ErrUnknownType) {
			t.Fatalf("Broadcast error %v, want b named as failed with ErrUnknownType", err)
		}
		if string(got["c"]) != "a::" {
			t.Fatalf("replies %q, want c's", got)
		}

		// A node that hangs is named when the deadline passes.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err = cs["b"].Broadcast(ctx, Message{Type: "hang"})
		if err == nil || !strings.Contains(err.Error(), "2 of 2 nodes failed (a, c)") || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Broadcast error %v, want a and c named as timed out", err)
		}

		// A partitioned node is not live, so not asked.
		net.Partition([]lockd.NodeID{"a", "b"}, []lockd.NodeID{"c"})
		if l := cs["a"].Live(); !slices.Equal(l, []lockd.NodeID{"a", "b"}) {
			t.Fatalf("a sees %v live, want [a b]", l)
		}
		if l := cs["c"].Live(); !slices.Equal(l, []lockd.NodeID{"c"}) {
			t.Fatalf("c sees %v live, want [c]", l)
		}
		got, err = cs["a"].Broadcast(context.Background(), Message{Type: "echo"})
		if err != nil || len(got) != 1 || got["b"] == nil {
			t.Fatalf("Broadcast in the majority = %q, %v; want b's reply only", got, err)
		}
		// A call across the cut gets no reply.
		ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
		defer cancel2()
		if _, err := cs["a"].Call(ctx2, "c", Message{Type: "echo"}); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "to c") {
			t.Fatalf("Call across a partition: %v, want a timeout naming c", err)
		}
		net.Heal()
		net.Down("b")
		if l := cs["a"].Live(); !slices.Equal(l, []lockd.NodeID{"a", "c"}) {
			t.Fatalf("a sees %v live after b went down, want [a c]", l)
		}
	})
}

func TestStopFailsCallsAndRefusesRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net, cs := threeNodes(t)
		errc := make(chan error, 1)
		go func() {
			_, err := cs["a"].Call(context.Background(), "b", Message{Type: "hang"})
			errc <- err
		}()
		synctest.Wait()
		cs["a"].Stop()
		if err := <-errc; !errors.Is(err, ErrStopped) {
			t.Fatalf("call in progress at Stop: %v, want ErrStopped", err)
		}
		if _, err := cs["a"].Call(context.Background(), "b", Message{Type: "echo"}); !errors.Is(err, ErrStopped) {
			t.Fatalf("call after Stop: %v, want ErrStopped", err)
		}
		// b answers requests to the stopped node a with a refusal.
		if _, err := cs["b"].Call(context.Background(), "a", Message{Type: "echo"}); !errors.Is(err, ErrRefused) {
			t.Fatalf("call to a stopped node: %v, want ErrRefused", err)
		}
		_ = net
	})
}

func TestTooManyHandlersRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := NewMemNet(quiet)
		defer net.Close()
		a, b := net.Messenger("a"), net.Messenger("b")
		release := make(chan struct{})
		b.Handle("block", func(ctx context.Context, _ lockd.NodeID, _ Message) ([]byte, error) {
			<-release
			return nil, nil
		})
		errs := make(chan error, MaxHandlers)
		for range MaxHandlers {
			go func() {
				_, err := a.Call(context.Background(), "b", Message{Type: "block"})
				errs <- err
			}()
		}
		synctest.Wait()
		if _, err := a.Call(context.Background(), "b", Message{Type: "block"}); !errors.Is(err, ErrRefused) {
			t.Fatalf("call beyond MaxHandlers: %v, want ErrRefused", err)
		}
		close(release)
		for range MaxHandlers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestDeliverIgnoresStrayReplies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := NewMemNet(quiet)
		defer net.Close()
		a := net.Messenger("a")
		b := net.Messenger("b")
		b.Handle("slow", func(ctx context.Context, _ lockd.NodeID, _ Message) ([]byte, error) {
			time.Sleep(time.Second)
			return []byte("real"), nil
		})
		done := make(chan []byte)
		go func() {
			r, err := a.Call(context.Background(), "b", Message{Type: "slow"})
			if err != nil {
				t.Error(err)
			}
			done <- r
		}()
		synctest.Wait()
		// A reply with the right id from the wrong node, garbage, and a
		// reply to an unknown id are all dropped.
		forged := (&Frame{Reply: true, ID: 1, Body: []byte("forged")}).Marshal(nil)
		a.Deliver("c", forged)
		a.Deliver("b", []byte{0xff})
		a.Deliver("b", (&Frame{Reply: true, ID: 99, Body: []byte("stray")}).Marshal(nil))
		if r := <-done; !bytes.Equal(r, []byte("real")) {
			t.Fatalf("call got %q, want b's real reply", r)
		}
	})
}
