package bitmap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/blockdevtest"
)

func TestDeviceConformance(t *testing.T) {
	store, _ := openStore(t)
	n := 0
	blockdevtest.Conformance(t, func(t *testing.T) blockdev.Device {
		n++
		b, err := New(store, fmt.Sprintf("conf%d", n), 0, 1<<20, Config{
			RegionSize: rs64k, ClearDelay: time.Hour, Flush: func() error { return nil }, Logger: quietLogger(),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return NewDevice(blockdev.NewMem(1<<20, 512), b)
	})
}

// markChecker sits below a Device and checks, at the moment each
// data-changing request arrives, that the store (read back from badger,
// not the bitmap's memory) holds the mark of every region it touches and
// that the batch that wrote the mark has been synced.
type markChecker struct {
	blockdev.Device
	h *harness

	mu         sync.Mutex
	checked    int
	violations []string
}

func (c *markChecker) check(op string, off, length int64) {
	first, n := c.h.b.RegionsOf(off, length)
	disk, err := c.h.store.Dirty(testArray, testSlot)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checked++
	if err != nil {
		c.violations = append(c.violations, err.Error())
		return
	}
	for r := first; r < first+n; r++ {
		if !slices.Contains(disk, r) {
			c.violations = append(c.violations, fmt.Sprintf("%s %d+%d reached the device without the mark of region %d in the store", op, off, length, r))
		} else if !c.h.isSynced(r) {
			c.violations = append(c.violations, fmt.Sprintf("%s %d+%d reached the device before the mark of region %d was synced", op, off, length, r))
		}
	}
}

func (c *markChecker) WriteAt(p []byte, off int64) (int, error) {
	c.check("write", off, int64(len(p)))
	return c.Device.WriteAt(p, off)
}

func (c *markChecker) Zero(off, length int64) error {
	c.check("zero", off, length)
	return c.Device.Zero(off, length)
}

func (c *markChecker) Trim(off, length int64) error {
	c.check("trim", off, length)
	return c.Device.Trim(off, length)
}

func (c *markChecker) ZeroNoHole(off, length int64) error {
	c.check("zero-no-hole", off, length)
	return blockdev.ZeroNoHole(c.Device, off, length)
}

// TestMarkBeforeWrite: concurrent writers, zeroes and trims through a
// Device while the clearer keeps clearing idle regions; every request
// finds its marks synced in the store when it reaches the device below.
func TestMarkBeforeWrite(t *testing.T) {
	h := newHarness(t)
	checker := &markChecker{Device: blockdev.NewMem(testSize, 512), h: h}
	dev := NewDevice(checker, h.b)

	stop := make(chan struct{})
	clockDone := make(chan struct{})
	go func() {
		defer close(clockDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			h.clk.Advance(h.cfg.ClearDelay / 4)
			select {
			case <-h.passes:
			case <-time.After(10 * time.Second):
				t.Error("clearer pass did not run")
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			buf := make([]byte, 3*rs64k)
			for i := range 200 {
				off := rng.Int64N(testSize)
				n := rng.Int64N(min(3*rs64k, testSize-off) + 1)
				var err error
				switch rng.IntN(4) {
				case 0:
					err = dev.Zero(off, n)
				case 1:
					err = dev.Trim(off, n)
				case 2:
					err = dev.ZeroNoHole(off, n)
				default:
					_, err = dev.WriteAt(buf[:n], off)
				}
				if err != nil {
					t.Errorf("writer %d op %d at %d+%d: %v", w, i, off, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-clockDone

	checker.mu.Lock()
	defer checker.mu.Unlock()
	for _, v := range checker.violations[:min(len(checker.violations), 10)] {
		t.Error(v)
	}
	st := h.b.Stats()
	t.Logf("%d requests checked; %+v", checker.checked, st)
	if checker.checked != 800 {
		t.Fatalf("%d requests reached the device, want 800", checker.checked)
	}
	if st.Clears == 0 || st.Marks <= st.Regions {
		t.Fatalf("the clearer never raced the writers (%+v); the test proves nothing", st)
	}
}

func TestDevicePassThrough(t *testing.T) {
	h := newHarness(t)
	mem := blockdev.NewMem(testSize, 512)
	dev := NewDevice(mem, h.b)
	if dev.Size() != testSize || dev.BlockSize() != 512 || dev.Bitmap() != h.b || dev.Underlying() != mem {
		t.Fatal("Size, BlockSize, Bitmap or Underlying wrong")
	}
	if _, err := dev.WriteAt([]byte("hello"), rs64k-2); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 5)
	if _, err := dev.ReadAt(p, rs64k-2); err != nil || string(p) != "hello" {
		t.Fatalf("read %q, %v", p, err)
	}
	if _, err := dev.ReadAt(p, 5*rs64k); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := h.stored(); !slices.Equal(got, regions(0, 1)) {
		t.Fatalf("store holds %v; reads must not mark", got)
	}
	if !dev.CanFastZero() {
		t.Fatal("CanFastZero not passed through")
	}
	ext, err := dev.Extents(nil, 0, testSize)
	if err != nil || len(ext) == 0 {
		t.Fatalf("Extents = %v, %v", ext, err)
	}

	// Out of range: an error, and nothing marked.
	if _, err := dev.WriteAt(p, testSize-1); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("write past the end = %v", err)
	}
	if err := dev.Zero(-1, 5); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("zero at -1 = %v", err)
	}
	if got := h.stored(); !slices.Equal(got, regions(0, 1)) {
		t.Fatalf("out-of-range requests marked: %v", got)
	}

	// Close closes the device, not the bitmap.
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := mem.ReadAt(p, 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("device below still open: %v", err)
	}
	h.write(9*rs64k, 1)
}

// TestDeviceZeroNoHoleUnsupported uses a device below that has no
// NoHoleZeroer at all.
func TestDeviceZeroNoHoleUnsupported(t *testing.T) {
	h := newHarness(t)
	dev := NewDevice(struct{ blockdev.Device }{blockdev.NewMem(testSize, 512)}, h.b)
	if err := dev.ZeroNoHole(0, 10); !errors.Is(err, blockdev.ErrNotSupported) {
		t.Fatalf("ZeroNoHole = %v, want ErrNotSupported", err)
	}
	if got := h.stored(); len(got) != 0 {
		t.Fatalf("unsupported ZeroNoHole marked %v", got)
	}
}

// crashEnv names the directory the crash child works in.
const crashEnv = "BITMAP_CRASH_CHILD_DIR"

const (
	crashSize    = 32 << 20
	crashRegions = crashSize / rs64k
)

// crashChild is the process TestCrashKill kills (TestMain runs it when
// crashEnv is set): it writes random patterns through a Device over a file
// until it dies. Lazy clearing is off (an hour's delay), so every region
// that holds data must be marked.
func crashChild(dir string) {
	fatal := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	store, err := OpenStore(filepath.Join(dir, "bitmap"), StoreConfig{Logger: quietLogger()})
	if err != nil {
		fatal(err)
	}
	file, err := blockdev.OpenFile(filepath.Join(dir, "data"), blockdev.FileOptions{Create: true, CreateSize: crashSize})
	if err != nil {
		fatal(err)
	}
	b, err := New(store, "crash", 0, crashSize, Config{RegionSize: rs64k, ClearDelay: time.Hour, Flush: file.Flush, Logger: quietLogger()})
	if err != nil {
		fatal(err)
	}
	dev := NewDevice(file, b)
	var progress atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(w)))
			buf := bytes.Repeat([]byte{byte(w + 1)}, 2*rs64k)
			for {
				off := rng.Int64N(crashSize - 1)
				n := 1 + rng.Int64N(min(int64(len(buf)), crashSize-off)-1)
				if _, err := dev.WriteAt(buf[:n], off); err != nil {
					fmt.Println("error:", err)
					return
				}
				if progress.Add(1)%8 == 0 {
					fmt.Println("progress")
				}
			}
		})
	}
	wg.Wait()
}

// TestCrashKill kills a writing process at random moments and checks that
// every region holding written data is marked in the store it leaves, and
// that the store opens (a kill is not corruption).
func TestCrashKill(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 4 {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		want := 1 + rng.IntN(24)
		sc := bufio.NewScanner(out)
		seen := 0
		var other []string
		for seen < want && sc.Scan() {
			if sc.Text() == "progress" {
				seen++
			} else {
				other = append(other, sc.Text())
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if seen < want {
			t.Fatalf("iteration %d: child stopped after %d progress lines; it said:\n%s", iter, seen, strings.Join(other, "\n"))
		}

		s, err := OpenStore(filepath.Join(dir, "bitmap"), StoreConfig{Logger: quietLogger()})
		if err != nil {
			t.Fatalf("iteration %d: store left by a killed process: %v", iter, err)
		}
		marked, err := s.Dirty("crash", 0)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, "data"))
		if err != nil {
			t.Fatal(err)
		}
		written := 0
		for r := range uint64(crashRegions) {
			if allZero(data[r*rs64k : (r+1)*rs64k]) {
				continue
			}
			written++
			if !slices.Contains(marked, r) {
				t.Fatalf("iteration %d: region %d holds data but is not marked (marked %v)", iter, r, marked)
			}
		}
		t.Logf("iteration %d: killed after %d progress lines; %d regions written, %d marked", iter, seen, written, len(marked))
	}
}
