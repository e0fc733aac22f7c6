package raid

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"pgregory.net/rapid"
)

func TestMirrorModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(2, 4).Draw(rt, "members")
		size := rapid.Int64Range(1, 64<<10).Draw(rt, "size")
		mems := newMems(n, size+rapid.Int64Range(0, 1024).Draw(rt, "spare"))
		missing := rapid.IntRange(-1, n-1).Draw(rt, "missing at start")
		cfg := Config{OnFail: func(m int, err error) { rt.Fatalf("unexpected OnFail(%d, %v)", m, err) }}
		arr, err := NewMirror(asDevs(mems, missing), size, cfg)
		if err != nil {
			rt.Fatalf("NewMirror: %v", err)
		}
		if arr.Size() != size || arr.BlockSize() != 512 {
			rt.Fatalf("size %d block size %d", arr.Size(), arr.BlockSize())
		}
		mt := &modelTarget{dev: arr, model: make([]byte, size), bs: min(512, size), trim: trimExact, name: "mirror"}
		for range rapid.IntRange(1, 30).Draw(rt, "ops") {
			mt.step(rt)
		}
		mt.checkAll(rt)
		checkOutOfRange(rt, mt)
		// Every surviving copy holds the data; a view of each alone reads it.
		for i := range n {
			if i == missing {
				continue
			}
			one := make([]blockdev.Device, n)
			one[i] = mems[i]
			d, err := NewMirror(one, size, cfg)
			if err != nil {
				rt.Fatalf("NewMirror with only member %d: %v", i, err)
			}
			dt := &modelTarget{dev: d, model: mt.model, bs: mt.bs, name: fmt.Sprintf("member %d alone", i)}
			for range 3 {
				dt.checkAll(rt) // round robin must not matter
			}
		}
	})
}

func TestMirrorReadBalance(t *testing.T) {
	const n = 3
	counts := make([]*countDev, n)
	devs := make([]blockdev.Device, n)
	for i := range devs {
		counts[i] = &countDev{Device: blockdev.NewMem(1<<20, 512)}
		devs[i] = counts[i]
	}
	arr, err := NewMirror(devs, 1<<20, Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	for _, tc := range []struct {
		name    string
		trusted bool
		off     func(i int) int64 // the offset of the i-th of 3n reads
		want    [n]int64          // reads served, most first
		around  int64             // reads not served by member 0; -1: any
	}{
		{"not trusted: the first member only", false, func(int) int64 { return 8192 }, [n]int64{3 * n, 0, 0}, 0},
		{"trusted, one block again: every member in turn", true, func(int) int64 { return 8192 }, [n]int64{3, 3, 3}, 2 * n},
		{"trusted, a sequential stream: one copy", true, func(i int) int64 { return 64<<10 + int64(i)*4096 }, [n]int64{3 * n, 0, 0}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range counts {
				c.reset()
			}
			before := arr.ReadsAround()
			arr.TrustRedundancy(tc.trusted)
			for i := range 3 * n {
				if _, err := arr.ReadAt(p, tc.off(i)); err != nil {
					t.Fatal(err)
				}
			}
			var got [n]int64
			for i, c := range counts {
				got[i] = c.reads.Load()
			}
			sorted := got
			slices.SortFunc(sorted[:], func(a, b int64) int { return cmp.Compare(b, a) })
			if sorted != tc.want {
				t.Fatalf("members served %v of %d reads, want %v in some order", got, 3*n, tc.want)
			}
			around := tc.around
			if around < 0 {
				around = 3*n - got[0]
			}
			if got := arr.ReadsAround() - before; got != around {
				t.Fatalf("reads around %d, want %d", got, around)
			}
		})
	}
	for _, c := range counts {
		c.reset()
	}
	if _, err := arr.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	for i, c := range counts {
		if c.writes.Load() != 1 {
			t.Fatalf("member %d got %d writes, want 1", i, c.writes.Load())
		}
	}
	if err := arr.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, c := range counts {
		if c.flushes.Load() != 1 {
			t.Fatalf("member %d got %d flushes, want 1", i, c.flushes.Load())
		}
	}
}

// TestMirrorReadsPreferIdleCopy checks that a trusted mirror sends reads
// to the copy with the fewest in flight: with one copy slow (2 ms a read)
// and readers in parallel, the fast copy serves most reads, where taking
// turns would give each copy half.
func TestMirrorReadsPreferIdleCopy(t *testing.T) {
	const size, readers, each = 1 << 20, 8, 50
	slow := &countDev{Device: blockdev.NewDelay(blockdev.NewMem(size, 512), 2*time.Millisecond, 0)}
	fast := &countDev{Device: blockdev.NewMem(size, 512)}
	arr, err := NewMirror([]blockdev.Device{slow, fast}, size, Config{})
	if err != nil {
		t.Fatal(err)
	}
	arr.TrustRedundancy(true)
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for r := range readers {
		wg.Go(func() {
			p := make([]byte, 4096)
			for i := range each {
				// Offsets 8 KiB apart: no read continues another.
				if _, err := arr.ReadAt(p, int64((r*each+i)%(size/8192))*8192); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := slow.reads.Load() + fast.reads.Load()
	if total != readers*each {
		t.Fatalf("members served %d reads, want %d", total, readers*each)
	}
	if s := slow.reads.Load(); s*4 > total {
		t.Fatalf("the slow copy served %d of %d reads, want at most a quarter", s, total)
	}
}

// TestMirrorStableReads checks that an untrusted mirror whose copies of a
// block differ (a write was in flight at an unclean stop) reads back the
// same copy every time, the first live member's, which is the one a resync
// copies to the others; and that a trusted one would not, which is why
// reads are spread only once the copies are vouched for.
func TestMirrorStableReads(t *testing.T) {
	const size, bs = 64 << 10, 4096
	mems := newMems(3, size)
	arr, err := NewMirror(asDevs(mems, -1), size, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range mems {
		copy(m.Bytes()[bs:2*bs], bytes.Repeat([]byte{byte('a' + i)}, bs))
	}
	read := func() byte {
		t.Helper()
		p := make([]byte, bs)
		if _, err := arr.ReadAt(p, bs); err != nil {
			t.Fatal(err)
		}
		return p[0]
	}
	for range 6 {
		if got := read(); got != 'a' {
			t.Fatalf("untrusted read returned member %d's copy, want member 0's", got-'a')
		}
	}
	arr.Fail(0, errors.New("test: pulled"))
	for range 6 {
		if got := read(); got != 'b' {
			t.Fatalf("untrusted read with member 0 failed returned member %d's copy, want member 1's", got-'a')
		}
	}
	arr.TrustRedundancy(true)
	seen := map[byte]bool{}
	for range 6 {
		seen[read()] = true
	}
	if len(seen) != 2 {
		t.Fatalf("trusted reads returned %d different copies, want the 2 live ones", len(seen))
	}
}

func TestMirrorFaults(t *testing.T) {
	for _, kind := range []string{"reads", "writes"} {
		t.Run(kind, func(t *testing.T) {
			const n, size = 3, 256 << 10
			faults := make([]*faultDev, n)
			devs := make([]blockdev.Device, n)
			for i := range devs {
				faults[i] = &faultDev{Device: blockdev.NewMem(size, 512), failReads: kind == "reads", failWrites: kind == "writes"}
				devs[i] = faults[i]
			}
			var log failLog
			arr, err := NewMirror(devs, size, Config{OnFail: log.onFail})
			if err != nil {
				t.Fatal(err)
			}
			arr.TrustRedundancy(true) // reads reach every member, member 1 included
			mt := &modelTarget{dev: arr, model: make([]byte, size), bs: 512, trim: trimExact, name: "mirror faults"}
			io := func(i int) {
				off := int64(i*7919) % (size - 8192)
				p := make([]byte, 8192-i%700)
				fill(p, uint64(i))
				if _, err := arr.WriteAt(p, off); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				copy(mt.model[off:], p)
				mt.checkRange(t, off, int64(len(p)))
			}
			for i := range 10 {
				io(i)
			}
			faults[1].arm(2)
			for i := 10; i < 30; i++ {
				io(i)
			}
			mt.checkAll(t)
			calls := log.get()
			if len(calls) != 1 || calls[0].member != 1 || !errors.Is(calls[0].err, syscall.EIO) {
				t.Fatalf("OnFail calls %v, want one for member 1", calls)
			}
			if st := arr.MemberStates(); fmt.Sprint(st) != "[active failed active]" {
				t.Fatalf("states %v", st)
			}
			// Lose the rest: IO fails cleanly.
			faults[0].tripped.Store(true)
			faults[2].tripped.Store(true)
			p := make([]byte, 4096)
			_, rerr := arr.ReadAt(p, 0)
			if !isIOError(rerr) || !strings.HasPrefix(rerr.Error(), "mirror: ") {
				t.Fatalf("read error %v should wrap ErrArrayFailed and EIO", rerr)
			}
			if _, werr := arr.WriteAt(p, 0); !errors.Is(werr, ErrArrayFailed) {
				t.Fatalf("write error %v should wrap ErrArrayFailed", werr)
			}
			if len(log.get()) != 3 {
				t.Fatalf("OnFail calls %v, want 3", log.get())
			}
		})
	}
}

func TestNewMirrorErrors(t *testing.T) {
	mem := func(n int64) blockdev.Device { return blockdev.NewMem(n, 512) }
	cases := []struct {
		name string
		devs []blockdev.Device
		size int64
		want string
	}{
		{"one member", []blockdev.Device{mem(4096)}, 4096, "mirror needs 2 to 64 members, got 1"},
		{"all missing", []blockdev.Device{nil, nil}, 4096, "all 2 members missing"},
		{"small member", []blockdev.Device{mem(4096), mem(1024)}, 4096, "member 1 is 1024 bytes"},
		{"zero size", []blockdev.Device{mem(4096), mem(4096)}, 0, "must be positive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewMirror(c.devs, c.size, Config{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	big := blockdev.NewMem(8192, 4096)
	m, err := NewMirror([]blockdev.Device{blockdev.NewMem(8192, 512), nil, big}, 8192, Config{})
	if err != nil || m.BlockSize() != 4096 {
		t.Fatalf("block size %v, %v; want 4096", m, err)
	}
	if st := m.MemberStates(); fmt.Sprint(st) != "[active missing active]" {
		t.Fatalf("states %v", st)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("flush after close: %v", err)
	}
}

// TestBeforeFailPrecedesDegradedWrites: Config.BeforeFail returns before
// any write completes without the failing member. Writers keep writing
// while member 1 starts failing; BeforeFail dawdles, so that a write that
// saw the member lost before the hook returned would finish first. Every
// write that succeeded but did not land on member 1 must have returned
// after the hook.
func TestBeforeFailPrecedesDegradedWrites(t *testing.T) {
	const (
		bs      = 4096
		writers = 8
		each    = 64
	)
	size := int64(writers * each * bs)
	m0, m1 := blockdev.NewMem(size, bs), blockdev.NewMem(size, bs)
	f1 := &faultDev{Device: m1, failWrites: true}
	f1.arm(writers * each / 4)
	var seq, hookDone atomic.Int64
	m, err := NewMirror([]blockdev.Device{m0, f1}, size, Config{BeforeFail: func(member int, err error) {
		time.Sleep(20 * time.Millisecond)
		hookDone.Store(seq.Add(1))
	}})
	if err != nil {
		t.Fatal(err)
	}
	returned := make([]int64, writers*each) // seq at return, 0 if the write failed
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				b := w*each + i
				if _, err := m.WriteAt(bytes.Repeat([]byte{byte(b) | 1}, bs), int64(b)*bs); err == nil {
					returned[b] = seq.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if hookDone.Load() == 0 {
		t.Fatal("member 1 failed without BeforeFail")
	}
	got := make([]byte, bs)
	degraded := 0
	for b, at := range returned {
		if at == 0 {
			t.Fatalf("write %d failed; a mirror with one member left takes writes", b)
		}
		if _, err := m1.ReadAt(got, int64(b)*bs); err != nil {
			t.Fatal(err)
		}
		if got[0] == byte(b)|1 {
			continue // it landed on member 1
		}
		degraded++
		if at < hookDone.Load() {
			t.Errorf("write %d went on without member 1 and returned before BeforeFail did", b)
		}
	}
	if degraded == 0 {
		t.Fatal("no write went on without member 1: the test did not exercise the failure")
	}
}
