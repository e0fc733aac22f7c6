package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// The tests in this file run under testing/synctest on an in-memory
// network: time is fake, so backoff and timeouts are checked to the
// nanosecond and nothing sleeps for real.

// bubble runs f in a synctest bubble. The NBD server's watchdog goroutine
// may outlive Shutdown by one tick; fake time lets it run out before the
// bubble ends.
func bubble(t *testing.T, f func(t *testing.T)) {
	synctest.Test(t, func(t *testing.T) {
		defer time.Sleep(time.Second)
		f(t)
	})
}

func openPipe(t *testing.T, n *pipeNet, cfg Config) *Device {
	t.Helper()
	cfg.Dial = n.Dial
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	d, err := Open(context.Background(), "nbd://member:10809/disk", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// result is the outcome of one request run in the background.
type result struct {
	i   int
	err error
	at  time.Time
}

// TestReconnectWithinFailAfter kills the server with writes in flight and
// brings it back 3 s later: the writes complete without an error once the
// backoff reaches the new server, and the data is intact.
func TestReconnectWithinFailAfter(t *testing.T) {
	bubble(t, func(t *testing.T) {
		mem := blockdev.NewMem(4<<20, 512)
		gate := newGateDev(mem)
		n := &pipeNet{}
		inc := serve(t, n.listen(), gate)
		d := openPipe(t, n, Config{FailAfter: 10 * time.Second, ReconnectMin: 100 * ms, ReconnectMax: time.Second})

		const writes, chunk = 16, 64 << 10
		gate.arm()
		results := make(chan result, writes+1)
		for i := range writes {
			go func() {
				_, err := d.WriteAt(pattern(i, chunk), int64(i*chunk))
				results <- result{i, err, time.Now()}
			}()
		}
		<-gate.entered // the server may read the others only after this one
		killed := time.Now()
		inc.Kill()
		gate.release()
		// A read issued while the server is down waits too.
		go func() {
			_, err := d.ReadAt(make([]byte, 4096), 3<<20)
			results <- result{-1, err, time.Now()}
		}()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if len(results) != 0 {
			t.Fatalf("%d requests returned while the server was down", len(results))
		}
		back := time.Now()
		inc = serve(t, n.listen(), mem)
		for range writes + 1 {
			r := <-results
			if r.err != nil {
				t.Fatalf("request %d failed across the outage: %v", r.i, r.err)
			}
			// Attempts at 0, .1, .3, .7, 1.5, 2.5, 3.5 s after the loss.
			if r.at.Sub(killed) != 3500*ms {
				t.Errorf("request %d completed %v after the kill, want 3.5s (server back after %v)", r.i, r.at.Sub(killed), back.Sub(killed))
			}
		}
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
		all := contents(mem)
		for i := range writes {
			if !bytes.Equal(all[i*chunk:(i+1)*chunk], pattern(i, chunk)) {
				t.Fatalf("chunk %d lost across the reconnect", i)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		inc.Stop()
	})
}

// TestUnreachableAfterFailAfter keeps the server away: the waiting
// requests fail with ErrUnreachable exactly FailAfter after the loss, later
// ones at once, and a server that comes back afterwards is not used.
func TestUnreachableAfterFailAfter(t *testing.T) {
	bubble(t, func(t *testing.T) {
		mem := blockdev.NewMem(1<<20, 512)
		gate := newGateDev(mem)
		n := &pipeNet{}
		inc := serve(t, n.listen(), gate)
		d := openPipe(t, n, Config{FailAfter: 2 * time.Second, ReconnectMin: 100 * ms, ReconnectMax: 400 * ms})
		if _, err := d.WriteAt(pattern(1, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
		gate.arm()
		results := make(chan result, 8)
		for i := range 8 {
			go func() {
				_, err := d.WriteAt(pattern(i, 4096), int64(i)*4096)
				results <- result{i, err, time.Now()}
			}()
		}
		<-gate.entered // the server may read the others only after this one
		killed := time.Now()
		inc.Kill()
		gate.release()
		for range 8 {
			r := <-results
			if !errors.Is(r.err, ErrUnreachable) {
				t.Fatalf("request %d: %v, want ErrUnreachable", r.i, r.err)
			}
			if got := r.at.Sub(killed); got != 2*time.Second {
				t.Errorf("request %d failed %v after the loss, want 2s", r.i, got)
			}
		}
		attempts := n.dialCount()
		inc = serve(t, n.listen(), mem)
		start := time.Now()
		if _, err := d.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrUnreachable) {
			t.Fatalf("read after the failure: %v, want ErrUnreachable", err)
		}
		if err := d.Flush(); !errors.Is(err, ErrUnreachable) {
			t.Fatalf("flush after the failure: %v, want ErrUnreachable", err)
		}
		if err := d.Zero(0, 512); !errors.Is(err, ErrUnreachable) || time.Since(start) != 0 {
			t.Fatalf("zero after the failure: %v after %v, want ErrUnreachable at once", err, time.Since(start))
		}
		if n.dialCount() != attempts {
			t.Fatalf("the Device dialled again after failing")
		}
		// Open + attempts at 0, .1, .3, .7, 1.1, 1.5, 1.9 and 2 s.
		if attempts != 1+8 {
			t.Errorf("%d dials, want 9", attempts)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		inc.Stop()
	})
}

// TestReplayAfterServerLostItsCache: the server acknowledged writes and a
// zero, then died and lost its volatile cache. After the reconnect the
// Device replays them, so a Flush on the new connection makes the disk
// match every acknowledged write.
func TestReplayAfterServerLostItsCache(t *testing.T) {
	bubble(t, func(t *testing.T) {
		disk := blockdev.NewMem(1<<20, 512)
		c1 := &cacheDev{disk: disk}
		n := &pipeNet{}
		inc := serve(t, n.listen(), c1)
		d := openPipe(t, n, Config{})
		model := make([]byte, disk.Size())
		write := func(seed int, off, length int64) {
			t.Helper()
			p := pattern(seed, int(length))
			if _, err := d.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		}
		write(1, 0, 64<<10)
		write(2, 200<<10, 16<<10)
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
		// Unflushed: an overlapping rewrite, two writes over the same
		// range (order matters), a zero over flushed data.
		write(3, 32<<10, 64<<10)
		write(4, 500<<10, 8<<10)
		write(5, 500<<10, 4<<10)
		if err := d.Zero(204<<10, 8<<10); err != nil {
			t.Fatal(err)
		}
		clear(model[204<<10 : 212<<10])
		inc.Kill()
		c1.crash()
		if bytes.Equal(contents(disk), model) {
			t.Fatal("the crash lost nothing; the test proves nothing")
		}
		c2 := &cacheDev{disk: disk}
		inc = serve(t, n.listen(), c2)
		if err := d.Flush(); err != nil {
			t.Fatalf("flush after the restart: %v", err)
		}
		if i := firstDiff(contents(disk), model); i >= 0 {
			t.Fatalf("durable contents differ from the acknowledged writes at byte %d", i)
		}
		d.mu.Lock()
		left := len(d.log.entries)
		d.mu.Unlock()
		if left != 0 {
			t.Fatalf("%d entries left in the replay log after the flush", left)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		inc.Stop()
	})
}

// TestReplacedExport: an export that comes back with another size, or that
// Verify refuses, fails the Device with ErrReplaced; nothing is replayed
// onto it.
func TestReplacedExport(t *testing.T) {
	magic := []byte("MEMBER-1")
	verify := func(dev blockdev.Device) error {
		b := make([]byte, len(magic))
		if _, err := dev.ReadAt(b, 0); err != nil {
			return err
		}
		if !bytes.Equal(b, magic) {
			return fmt.Errorf("header %q is not %q", b, magic)
		}
		return nil
	}
	cases := []struct {
		name   string
		newDev func() *blockdev.Mem
		want   string
	}{
		{"other size", func() *blockdev.Mem { return blockdev.NewMem(2<<20, 512) }, "has 2097152 bytes, it had 1048576"},
		{"other disk", func() *blockdev.Mem { return blockdev.NewMem(1<<20, 512) }, "is not"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bubble(t, func(t *testing.T) {
				mem := blockdev.NewMem(1<<20, 512)
				mem.WriteAt(magic, 0)
				n := &pipeNet{}
				inc := serve(t, n.listen(), mem)
				d := openPipe(t, n, Config{Verify: verify})
				if _, err := d.WriteAt(pattern(1, 4096), 8192); err != nil {
					t.Fatal(err)
				}
				inc.Kill()
				other := c.newDev()
				if c.name == "other size" {
					other.WriteAt(magic, 0)
				}
				inc = serve(t, n.listen(), other)
				_, err := d.ReadAt(make([]byte, 512), 0)
				if !errors.Is(err, ErrReplaced) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("read after the swap: %v, want ErrReplaced (%s)", err, c.want)
				}
				if !bytes.Equal(contents(other)[8192:8192+4096], make([]byte, 4096)) {
					t.Fatal("a write was replayed onto the wrong disk")
				}
				if _, err := d.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrReplaced) {
					t.Fatalf("write after the swap: %v", err)
				}
				d.Close()
				inc.Stop()
			})
		})
	}
	t.Run("same disk", func(t *testing.T) {
		bubble(t, func(t *testing.T) {
			mem := blockdev.NewMem(1<<20, 512)
			mem.WriteAt(magic, 0)
			n := &pipeNet{}
			inc := serve(t, n.listen(), mem)
			d := openPipe(t, n, Config{Verify: verify})
			inc.Kill()
			inc = serve(t, n.listen(), mem)
			if _, err := d.ReadAt(make([]byte, 512), 0); err != nil {
				t.Fatalf("read after the restart: %v", err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			inc.Stop()
		})
	})
}

// TestIOTimeout: a server that stops answering (but keeps its connection)
// is treated as lost after IOTimeout; the request is sent again on a new
// connection and succeeds.
func TestIOTimeout(t *testing.T) {
	bubble(t, func(t *testing.T) {
		mem := blockdev.NewMem(1<<20, 512)
		gate := newGateDev(mem)
		n := &pipeNet{}
		inc := serve(t, n.listen(), gate)
		d := openPipe(t, n, Config{IOTimeout: 4 * time.Second})
		gate.arm()
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			_, err := d.WriteAt(pattern(7, 4096), 4096)
			done <- err
		}()
		<-gate.entered
		gate.mu.Lock()
		hung := gate.gate
		gate.gate = nil // later requests pass; the first stays hung
		gate.mu.Unlock()
		if err := <-done; err != nil {
			t.Fatalf("write retried after the IO timeout: %v", err)
		}
		// The watchdog looks every IOTimeout/4.
		if got := time.Since(start); got < 4*time.Second || got > 5*time.Second {
			t.Errorf("write completed after %v, want 4s to 5s", got)
		}
		if !bytes.Equal(contents(mem)[4096:8192], pattern(7, 4096)) {
			t.Fatal("write lost")
		}
		close(hung)
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		inc.Stop()
	})
}

// TestReplayBudget: a writer that never flushes still gets its writes made
// durable every ReplayBudget bytes, and the log stays bounded.
func TestReplayBudget(t *testing.T) {
	bubble(t, func(t *testing.T) {
		disk := blockdev.NewMem(8<<20, 512)
		c := &cacheDev{disk: disk}
		n := &pipeNet{}
		inc := serve(t, n.listen(), c)
		const budget, chunk = 1 << 20, 64 << 10
		d := openPipe(t, n, Config{ReplayBudget: budget})
		for i := range 64 {
			if _, err := d.WriteAt(pattern(i, chunk), int64(i*chunk)); err != nil {
				t.Fatal(err)
			}
			d.mu.Lock()
			logged := d.log.bytes
			d.mu.Unlock()
			if logged > budget {
				t.Fatalf("after write %d the replay log holds %d bytes, budget %d", i, logged, budget)
			}
		}
		if f := c.flushCount(); f < 3 || f > 4 {
			t.Fatalf("%d flushes for 4 MiB of writes with a 1 MiB budget, want 3 or 4", f)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		all := contents(disk)
		for i := range 64 {
			if !bytes.Equal(all[i*chunk:(i+1)*chunk], pattern(i, chunk)) {
				t.Fatalf("chunk %d not durable after Close", i)
			}
		}
		inc.Stop()
	})
}

// TestCloseWhileReconnecting: Close does not wait for FailAfter; waiting
// requests fail with blockdev.ErrClosed, and Close reports the
// acknowledged writes that never became durable.
func TestCloseWhileReconnecting(t *testing.T) {
	bubble(t, func(t *testing.T) {
		mem := blockdev.NewMem(1<<20, 512)
		n := &pipeNet{}
		inc := serve(t, n.listen(), mem)
		d := openPipe(t, n, Config{FailAfter: time.Minute})
		if _, err := d.WriteAt(pattern(1, 4096), 0); err != nil {
			t.Fatal(err)
		}
		inc.Kill()
		done := make(chan error, 1)
		go func() {
			_, err := d.ReadAt(make([]byte, 4096), 0)
			done <- err
		}()
		time.Sleep(5 * time.Second)
		start := time.Now()
		err := d.Close()
		if err == nil || !strings.Contains(err.Error(), "not known to be durable") {
			t.Fatalf("Close = %v, want a report of the unflushed write", err)
		}
		if time.Since(start) != 0 {
			t.Fatalf("Close took %v", time.Since(start))
		}
		if err := <-done; !errors.Is(err, blockdev.ErrClosed) {
			t.Fatalf("waiting read: %v, want ErrClosed", err)
		}
		inc.Stop()
	})
}

// TestCleanServerRestart: a server that shuts down properly (answering
// what is in flight, ESHUTDOWN or a closed connection for the rest) and
// starts again is as invisible as one that crashed.
func TestCleanServerRestart(t *testing.T) {
	bubble(t, func(t *testing.T) {
		mem := blockdev.NewMem(1<<20, 512)
		n := &pipeNet{}
		inc := serve(t, n.listen(), mem)
		d := openPipe(t, n, Config{})
		for round := range 3 {
			if _, err := d.WriteAt(pattern(round, 8192), int64(round)*8192); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			inc.Stop()
			inc = serve(t, n.listen(), mem)
		}
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
		all := contents(mem)
		for round := range 3 {
			if !bytes.Equal(all[round*8192:(round+1)*8192], pattern(round, 8192)) {
				t.Fatalf("round %d lost", round)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		inc.Stop()
	})
}

// TestRandomOutages runs random reads, writes, zeroes and flushes from
// several goroutines while the server crashes (losing its cache) and comes
// back after random outages shorter than FailAfter. No request may fail,
// every read must match the model, and after a final flush the disk must
// hold exactly the model.
func TestRandomOutages(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			bubble(t, func(t *testing.T) { randomOutages(t, seed) })
		})
	}
}

func randomOutages(t *testing.T, seed uint64) {
	const workers, region, ops = 6, 128 << 10, 150
	disk := blockdev.NewMem(workers*region, 512)
	n := &pipeNet{}
	var (
		mu      sync.Mutex
		cache   = &cacheDev{disk: disk}
		inc     = serve(t, n.listen(), cache)
		outages int
		restart sync.WaitGroup
	)
	crash := func(rng *rand.Rand) {
		restart.Wait() // the previous outage is over
		mu.Lock()
		defer mu.Unlock()
		inc.Kill()
		cache.crash()
		outages++
		down := time.Duration(rng.Int64N(int64(3 * time.Second)))
		restart.Go(func() {
			time.Sleep(down)
			mu.Lock()
			defer mu.Unlock()
			cache = &cacheDev{disk: disk}
			inc = serve(t, n.listen(), cache)
		})
	}
	d := openPipe(t, n, Config{FailAfter: 5 * time.Second, ReplayBudget: 1 << 20})
	model := make([]byte, disk.Size())
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			base := int64(w * region)
			for i := range ops {
				off := base + rng.Int64N(region-1)
				length := rng.Int64N(min(32<<10, base+region-off)) + 1
				var err error
				switch op := rng.IntN(10); {
				case op < 5:
					p := pattern(int(seed)*1e6+w*1e4+i, int(length))
					if _, err = d.WriteAt(p, off); err == nil {
						copy(model[off:], p)
					}
				case op < 6:
					if err = d.Zero(off, length); err == nil {
						clear(model[off : off+length])
					}
				case op < 7:
					err = d.Flush()
				default:
					p := make([]byte, length)
					if _, err = d.ReadAt(p, off); err == nil && !bytes.Equal(p, model[off:off+length]) {
						err = fmt.Errorf("read %d+%d differs from the model", off, length)
					}
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d op %d: %w", w, i, err)
					return
				}
				if w == 0 && i%25 == 12 {
					crash(rng)
				}
			}
		})
	}
	wg.Wait()
	restart.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(contents(disk), model); i >= 0 {
		t.Fatalf("after %d outages the disk differs from the model at byte %d", outages, i)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	inc.Stop()
	mu.Unlock()
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
