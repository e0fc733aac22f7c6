package raid

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
)

// tryLock starts lock(from, to) in a goroutine and returns a channel that
// yields the hold once granted.
func tryLock(l *rangeLock, from, to int64) <-chan *rangeHold {
	ch := make(chan *rangeHold, 1)
	go func() { ch <- l.lock(from, to) }()
	return ch
}

func granted(ch <-chan *rangeHold) *rangeHold {
	select {
	case h := <-ch:
		return h
	default:
		return nil
	}
}

func TestRangeLockBlocksOverlap(t *testing.T) {
	cases := []struct {
		name      string
		held      [2]int64
		want      [2]int64
		mustBlock bool
	}{
		{"inside", [2]int64{0, 10}, [2]int64{5, 6}, true},
		{"covers", [2]int64{4, 6}, [2]int64{0, 10}, true},
		{"left edge", [2]int64{5, 10}, [2]int64{0, 6}, true},
		{"same", [2]int64{3, 4}, [2]int64{3, 4}, true},
		{"adjacent after", [2]int64{0, 10}, [2]int64{10, 20}, false},
		{"adjacent before", [2]int64{10, 20}, [2]int64{0, 10}, false},
		{"empty inside", [2]int64{0, 10}, [2]int64{5, 5}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var l rangeLock
				h := l.lock(c.held[0], c.held[1])
				ch := tryLock(&l, c.want[0], c.want[1])
				synctest.Wait()
				got := granted(ch)
				if (got == nil) != c.mustBlock {
					t.Fatalf("lock %v while %v is held: granted=%v, want blocked=%v", c.want, c.held, got != nil, c.mustBlock)
				}
				l.unlock(h)
				if got == nil {
					synctest.Wait()
					if got = granted(ch); got == nil {
						t.Fatal("not granted after unlock")
					}
				}
				l.unlock(got)
				if held, waiting := l.pending(); held != 0 || waiting != 0 {
					t.Fatalf("after all unlocks: %d held, %d waiting", held, waiting)
				}
			})
		})
	}
}

// TestRangeLockFIFO checks that a narrow request that arrives after a
// waiting wide one queues behind it, so wide requests are not starved.
func TestRangeLockFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var l rangeLock
		a := l.lock(0, 10)
		wide := tryLock(&l, 0, 100)
		synctest.Wait()
		narrow := tryLock(&l, 50, 51) // overlaps only the waiting wide request
		other := tryLock(&l, 200, 300)
		synctest.Wait()
		if granted(wide) != nil || granted(narrow) != nil {
			t.Fatal("wide or narrow granted while blocked")
		}
		o := granted(other)
		if o == nil {
			t.Fatal("disjoint request blocked")
		}
		if held, waiting := l.pending(); held != 2 || waiting != 2 {
			t.Fatalf("%d held, %d waiting; want 2, 2", held, waiting)
		}
		l.unlock(a)
		synctest.Wait()
		w := granted(wide)
		if w == nil || granted(narrow) != nil {
			t.Fatal("after the first unlock the wide request must hold and the narrow one wait")
		}
		l.unlock(w)
		synctest.Wait()
		n := granted(narrow)
		if n == nil {
			t.Fatal("narrow request not granted")
		}
		l.unlock(n)
		l.unlock(o)
	})
}

// TestRangeLockExclusive has goroutines lock random ranges and checks that
// no two holders ever share a block.
func TestRangeLockExclusive(t *testing.T) {
	const blocks, workers, rounds = 64, 8, 300
	var l rangeLock
	var owners [blocks]atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range rounds {
				from := rng.Int64N(blocks)
				to := from + 1 + rng.Int64N(min(8, blocks-from))
				h := l.lock(from, to)
				for b := from; b < to; b++ {
					if owners[b].Add(1) != 1 {
						t.Errorf("block %d has two holders", b)
					}
				}
				for b := from; b < to; b++ {
					owners[b].Add(-1)
				}
				l.unlock(h)
			}
		}()
	}
	wg.Wait()
	if held, waiting := l.pending(); held != 0 || waiting != 0 {
		t.Fatalf("after all unlocks: %d held, %d waiting", held, waiting)
	}
}
