package raid

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
	"pgregory.net/rapid"
)

func TestLinearModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(1, 5).Draw(rt, "members")
		devs := make([]blockdev.Device, n)
		var size int64
		for i := range devs {
			s := rapid.Int64Range(0, 20000).Draw(rt, "member size")
			devs[i] = blockdev.NewMem(s, 512)
			size += s
		}
		if size == 0 {
			devs[0] = blockdev.NewMem(512, 512)
			size = 512
		}
		arr, err := NewLinear(devs, Config{})
		if err != nil {
			rt.Fatalf("NewLinear: %v", err)
		}
		if arr.Size() != size || arr.BlockSize() != 512 {
			rt.Fatalf("size %d block size %d, want %d 512", arr.Size(), arr.BlockSize(), size)
		}
		mt := &modelTarget{dev: arr, model: make([]byte, size), bs: min(512, size), trim: trimExact, name: "linear"}
		for range rapid.IntRange(1, 30).Draw(rt, "ops") {
			mt.step(rt)
		}
		mt.checkAll(rt)
		checkOutOfRange(rt, mt)
		// The members hold the bytes in order.
		var cat []byte
		for _, d := range devs {
			cat = append(cat, d.(*blockdev.Mem).Bytes()...)
		}
		if i := firstDiff(cat, mt.model); i >= 0 {
			rt.Fatalf("concatenated members differ from the model at byte %d", i)
		}
	})
}

func TestLinearSplit(t *testing.T) {
	sizes := []int64{4096, 0, 8192, 4096}
	counts := make([]*countDev, len(sizes))
	devs := make([]blockdev.Device, len(sizes))
	for i, s := range sizes {
		counts[i] = &countDev{Device: blockdev.NewMem(s, 512)}
		devs[i] = counts[i]
	}
	arr, err := NewLinear(devs, Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 12000)
	fill(p, 8)
	if _, err := arr.WriteAt(p, 2000); err != nil {
		t.Fatal(err)
	}
	want := []string{"[{2000 2096}]", "[]", "[{0 8192}]", "[{0 1712}]"}
	for i, c := range counts {
		if got := fmt.Sprint(c.writeLog); got != want[i] {
			t.Fatalf("member %d writes %s, want %s", i, got, want[i])
		}
	}
	q := make([]byte, len(p))
	if _, err := arr.ReadAt(q, 2000); err != nil || firstDiff(p, q) >= 0 {
		t.Fatalf("read back: %v", err)
	}
}

func TestLinearErrors(t *testing.T) {
	if _, err := NewLinear(nil, Config{}); err == nil || !strings.Contains(err.Error(), "at least 1 member") {
		t.Fatalf("no members: %v", err)
	}
	if _, err := NewLinear([]blockdev.Device{blockdev.NewMem(512, 512), nil}, Config{}); err == nil || !strings.Contains(err.Error(), "member 1 is missing") {
		t.Fatalf("nil member: %v", err)
	}
	if _, err := NewLinear([]blockdev.Device{blockdev.NewMem(0, 512)}, Config{}); err == nil {
		t.Fatal("empty array accepted")
	}
	bad := &faultDev{Device: blockdev.NewMem(4096, 4096), failReads: true, failWrites: true}
	bad.tripped.Store(true)
	arr, err := NewLinear([]blockdev.Device{blockdev.NewMem(4096, 512), bad}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if arr.BlockSize() != 4096 {
		t.Fatalf("block size %d, want 4096", arr.BlockSize())
	}
	p := make([]byte, 2048)
	if _, err := arr.ReadAt(p, 3072); !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "linear: read offset 3072 length 2048") || !strings.Contains(err.Error(), "member 1") {
		t.Fatalf("read across a failing member: %v", err)
	}
	if _, err := arr.ReadAt(p, 0); err != nil {
		t.Fatalf("read of the good member: %v", err)
	}
	if err := arr.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush: %v", err)
	}
	if err := arr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := arr.WriteAt(p, 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

// TestLinearSingleMemberIOAllocatesNothing: a request inside one member
// takes the fast path (the NBD server's hot path for linear arrays).
func TestLinearSingleMemberIOAllocatesNothing(t *testing.T) {
	l, err := NewLinear([]blockdev.Device{blockdev.NewMem(1<<20, 512), blockdev.NewMem(1<<20, 512)}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := make([]byte, 4096)
	for _, off := range []int64{0, 1<<20 - 4096, 1 << 20, 2<<20 - 4096} {
		if n := testing.AllocsPerRun(100, func() {
			if _, err := l.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			if _, err := l.ReadAt(p, off); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("offset %d: %.1f allocations per write+read", off, n)
		}
	}
}

// TestLinearSpread: Config.OnSpread is called for each read or write that
// moves more than fanoutSmall bytes, within one member or across two, and
// for no smaller one.
func TestLinearSpread(t *testing.T) {
	for _, tc := range []struct {
		name   string
		write  bool
		off    int64
		length int
		want   int // calls for 10 requests
	}{
		{"large read", false, 0, 1 << 20, 10},
		{"large write", true, 4096, fanoutSmall + 4096, 10},
		{"large write across members", true, 2<<20 - 64<<10, 256 << 10, 10},
		{"at the threshold", true, 0, fanoutSmall, 0},
		{"small read", false, 0, 4096, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls int
			l, err := NewLinear([]blockdev.Device{blockdev.NewMem(2<<20, 512), blockdev.NewMem(2<<20, 512)},
				Config{OnSpread: func() { calls++ }})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			p := make([]byte, tc.length)
			for range 10 {
				if tc.write {
					_, err = l.WriteAt(p, tc.off)
				} else {
					_, err = l.ReadAt(p, tc.off)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if calls != tc.want {
				t.Fatalf("OnSpread called %d times for 10 requests, want %d", calls, tc.want)
			}
		})
	}
}
