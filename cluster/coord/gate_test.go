package coord

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	"pgregory.net/rapid"
)

func TestGateWindowBlocksOverlapOnly(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		g := NewWriteGate(time.Minute)
		ctx := context.Background()
		if err := g.Install(ctx, Window{Owner: "n2", Slot: 1, Lo: 1000, Hi: 2000, Seq: 1}); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name     string
			off, len int64
			blocked  bool
		}{
			{"before", 0, 1000, false},
			{"after", 2000, 500, false},
			{"inside", 1500, 10, true},
			{"across lo", 900, 200, true},
			{"across hi", 1999, 2, true},
			{"around", 0, 5000, true},
		}
		for _, tc := range tests {
			var done atomic.Bool
			go func() {
				tk, err := g.Enter(ctx, tc.off, tc.len)
				if err == nil {
					g.Leave(tk)
				}
				done.Store(true)
			}()
			synctest.Wait()
			if done.Load() == tc.blocked {
				t.Errorf("%s: write %d+%d blocked=%v, want %v", tc.name, tc.off, tc.len, !done.Load(), tc.blocked)
			}
		}
		// Moving the window releases the writes it no longer covers.
		if err := g.Install(ctx, Window{Owner: "n2", Slot: 1, Lo: 8000, Hi: 9000, Seq: 2}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		tk, err := g.Enter(ctx, 1500, 10)
		if err != nil {
			t.Fatalf("write after the window moved: %v", err)
		}
		g.Leave(tk)
		// An older announcement arriving late is ignored.
		if err := g.Install(ctx, Window{Owner: "n2", Slot: 1, Lo: 1000, Hi: 2000, Seq: 1}); err != nil {
			t.Fatal(err)
		}
		if ws := g.Windows(); len(ws) != 1 || ws[0].Lo != 8000 {
			t.Errorf("windows after a stale announcement: %+v", ws)
		}
		// The owner leaving drops its windows.
		g.DropOwner("n2")
		if ws := g.Windows(); len(ws) != 0 {
			t.Errorf("windows after the owner left: %+v", ws)
		}
	})
}

// Installing a window waits for the writes admitted before it to leave.
func TestGateInstallDrainsWritesInFlight(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		g := NewWriteGate(time.Minute)
		ctx := context.Background()
		tk, err := g.Enter(ctx, 0, 4096) // a write in flight
		if err != nil {
			t.Fatal(err)
		}
		var installed atomic.Bool
		go func() {
			if err := g.Install(ctx, Window{Owner: "n1", Lo: 0, Hi: 4096, Seq: 1}); err != nil {
				t.Error(err)
			}
			installed.Store(true)
		}()
		synctest.Wait()
		if installed.Load() {
			t.Fatal("window installed while a write admitted before it was in flight")
		}
		g.Leave(tk)
		synctest.Wait()
		if !installed.Load() {
			t.Fatal("window not installed after the write left")
		}
		// A drain that cannot finish fails at its context's end.
		tk, err = g.Enter(ctx, 10000, 10)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := g.Install(cctx, Window{Owner: "n1", Slot: 2, Lo: 10000, Hi: 20000, Seq: 2}); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("install with a stuck write: %v, want a deadline", err)
		}
		g.Leave(tk)
	})
}

func TestGateHaltAndTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		g := NewWriteGate(time.Second)
		ctx := context.Background()
		g.Halt("quorum", errors.New("no quorum"))
		g.Halt("member", errors.New("member 2 failed, not yet recorded"))
		start := time.Now()
		if _, err := g.Enter(ctx, 0, 1); !errors.Is(err, ErrHalted) {
			t.Errorf("write while halted: %v, want ErrHalted", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("halted write failed after %v, want the gate's timeout", d)
		}
		g.Resume("quorum")
		if _, err := g.Enter(ctx, 0, 1); !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), "member 2") {
			t.Errorf("write with one of two halt reasons lifted: %v, want the other", err)
		}
		g.Resume("member")
		tk, err := g.Enter(ctx, 0, 1)
		if err != nil {
			t.Fatalf("write after resume: %v", err)
		}
		g.Leave(tk)
		if err := g.Install(ctx, Window{Owner: "x", Lo: 0, Hi: 10, Seq: 1}); err != nil {
			t.Fatal(err)
		}
		if _, err := g.Enter(ctx, 5, 1); !errors.Is(err, ErrGateTimeout) {
			t.Errorf("write stuck behind a window: %v, want ErrGateTimeout", err)
		}
	})
}

// The gate's fast path allocates nothing.
func TestGateFastPathAllocs(t *testing.T) {
	g := NewWriteGate(0)
	ctx := context.Background()
	if err := g.Install(ctx, Window{Owner: "n", Lo: 1 << 20, Hi: 2 << 20, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		tk, err := g.Enter(ctx, 0, 4096)
		if err != nil {
			t.Fatal(err)
		}
		g.Leave(tk)
	})
	if allocs != 0 {
		t.Errorf("fast path: %v allocations per write, want 0", allocs)
	}
}

// Random windows and writes: Enter admits a write at once exactly when no
// window overlaps it (checked against a plain list).
func TestGateRapid(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		g := NewWriteGate(time.Minute)
		ctx := context.Background()
		model := map[[2]uint32]Window{}
		var seq uint64
		for range rapid.IntRange(1, 40).Draw(t, "ops") {
			if rapid.Bool().Draw(t, "install") {
				seq++
				w := Window{Owner: "n", Slot: uint32(rapid.IntRange(0, 3).Draw(t, "slot")), Seq: seq}
				w.Lo = rapid.Int64Range(0, 100).Draw(t, "lo")
				w.Hi = w.Lo + rapid.Int64Range(0, 30).Draw(t, "len")
				if err := g.Install(ctx, w); err != nil {
					t.Fatal(err)
				}
				if w.Empty() {
					delete(model, [2]uint32{0, w.Slot})
				} else {
					model[[2]uint32{0, w.Slot}] = w
				}
				continue
			}
			off := rapid.Int64Range(0, 130).Draw(t, "off")
			n := rapid.Int64Range(1, 20).Draw(t, "n")
			want := false
			for _, w := range model {
				want = want || (off < w.Hi && w.Lo < off+n)
			}
			if got := g.state.Load().blocks(off, off+n); got != want {
				t.Fatalf("write %d+%d blocked=%v, want %v (windows %+v)", off, n, got, want, model)
			}
		}
	})
}

func BenchmarkGateEnterLeave(b *testing.B) {
	g := NewWriteGate(0)
	ctx := context.Background()
	if err := g.Install(ctx, Window{Owner: "n", Lo: 1 << 30, Hi: 2 << 30, Seq: 1}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tk, err := g.Enter(ctx, 0, 4096)
			if err != nil {
				b.Fatal(err)
			}
			g.Leave(tk)
		}
	})
}

// A write in flight may halt the gate (a member failure on its IO path)
// while a window's Install waits for it to leave: HaltAcks does not wait
// behind the drain, the write leaves (its acknowledgement held), the
// Install returns, and Resume acknowledges the write.
func TestGateHaltAcksDuringDrain(t *testing.T) {
	defer goleak.VerifyNone(t)
	synctest.Test(t, func(t *testing.T) {
		g := NewWriteGate(time.Minute)
		ctx := context.Background()
		tk, err := g.Enter(ctx, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		installed := make(chan error, 1)
		go func() { installed <- g.Install(ctx, Window{Owner: "n2", Slot: 1, Lo: 1000, Hi: 2000, Seq: 1}) }()
		synctest.Wait() // the Install is draining: it waits for our write
		halted := make(chan struct{})
		go func() {
			g.HaltAcks("member/1", errors.New("member 1 failed"))
			close(halted)
		}()
		synctest.Wait()
		select {
		case <-halted:
		default:
			t.Fatal("HaltAcks waits behind the drain of a write that is the one halting")
		}
		left := make(chan error, 1)
		go func() { left <- g.Leave(tk) }()
		if err := <-installed; err != nil {
			t.Fatalf("Install after the write left: %v", err)
		}
		synctest.Wait()
		select {
		case err := <-left:
			t.Fatalf("the write left with %v while its acknowledgement should be held", err)
		default:
		}
		g.Resume("member/1")
		if err := <-left; err != nil {
			t.Fatalf("the held write after Resume: %v", err)
		}
	})
}
