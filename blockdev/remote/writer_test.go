package remote

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/internal/nbdtest"
)

// fenceMember is a member export that fences writers below a minimum
// epoch and records the identities and clears it sees.
type fenceMember struct {
	mu       sync.Mutex
	minEpoch uint64
	admitted []nbd.Writer
	clears   []string
}

func (f *fenceMember) check(w nbd.Writer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.Epoch < f.minEpoch {
		return fmt.Errorf("%w: epoch %d < %d", nbd.ErrFenced, w.Epoch, f.minEpoch)
	}
	return nil
}

func (f *fenceMember) fence(e uint64) { f.mu.Lock(); f.minEpoch = e; f.mu.Unlock() }

func (f *fenceMember) Admit(w nbd.Writer) (nbd.Session, error) {
	if err := f.check(w); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.admitted = append(f.admitted, w)
	f.mu.Unlock()
	return &fenceSession{f: f, w: w}, nil
}

func (f *fenceMember) Dirty(uint32, int64, int64, []blockdev.Extent) ([]blockdev.Extent, error) {
	return nil, errors.New("not kept")
}

type fenceSession struct {
	f *fenceMember
	w nbd.Writer
}

func (s *fenceSession) StartWrite(off, n int64) (func(), error) {
	if err := s.f.check(s.w); err != nil {
		return nil, err
	}
	return func() {}, nil
}

func (s *fenceSession) Clear(off, n int64) error {
	s.f.mu.Lock()
	s.f.clears = append(s.f.clears, fmt.Sprintf("%d+%d", off, n))
	s.f.mu.Unlock()
	return nil
}

func (s *fenceSession) Close() {}

// serveMember serves mem as the member export "disk" backed by f.
func serveMember(t *testing.T, n *pipeNet, mem *blockdev.Mem, f *fenceMember) *nbdtest.Server {
	t.Helper()
	return nbdtest.Serve(t, n.listen(), testLogger(), nbd.Export{Name: "disk", Device: mem, Member: f})
}

// TestWriterIdentity: every connection carries the writer identity (the
// first and the one after a reconnect); CLEAR reaches the member host; a
// fence makes writes fail with ErrFenced while reads go on; a reconnect
// that finds the writer fenced fails the Device with ErrFenced, never
// ErrUnreachable, and at once rather than after FailAfter.
func TestWriterIdentity(t *testing.T) {
	bubble(t, func(t *testing.T) {
		mem := blockdev.NewMem(1<<20, 512)
		f := &fenceMember{}
		n := &pipeNet{}
		inc := serveMember(t, n, mem, f)
		w := &nbd.Writer{Array: [16]byte{4}, Slot: 1, Epoch: 3}
		d := openPipe(t, n, Config{Writer: w, FailAfter: 10 * time.Second})
		if _, err := d.WriteAt(make([]byte, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if err := d.Clear(4096, 8192); err != nil {
			t.Fatal(err)
		}
		// The connection drops and comes back: identity again.
		inc.Kill()
		inc = serveMember(t, n, mem, f)
		if _, err := d.WriteAt(make([]byte, 4096), 4096); err != nil {
			t.Fatalf("write across a reconnect: %v", err)
		}
		f.mu.Lock()
		admitted, clears := len(f.admitted), fmt.Sprint(f.clears)
		f.mu.Unlock()
		if admitted != 2 || clears != "[4096+8192]" {
			t.Fatalf("admitted %d connections (want 2), clears %s", admitted, clears)
		}

		f.fence(4)
		if _, err := d.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrFenced) {
			t.Fatalf("write after a fence = %v, want ErrFenced", err)
		}
		if err := d.Zero(0, 512); !errors.Is(err, ErrFenced) {
			t.Fatalf("zero after a fence = %v, want ErrFenced", err)
		}
		if _, err := d.ReadAt(make([]byte, 512), 0); err != nil {
			t.Fatalf("read after a fence: %v", err)
		}

		// Lost connection, fenced at the reconnect.
		start := time.Now()
		inc.Kill()
		inc = serveMember(t, n, mem, f)
		_, err := d.ReadAt(make([]byte, 512), 0)
		if !errors.Is(err, ErrFenced) || errors.Is(err, ErrUnreachable) {
			t.Fatalf("read after a fenced reconnect = %v, want ErrFenced", err)
		}
		if waited := time.Since(start); waited >= 10*time.Second {
			t.Fatalf("the fenced Device waited %v, the whole FailAfter", waited)
		}
		// Open itself reports the fence.
		if _, err := Open(context.Background(), "nbd://member:10809/disk", Config{Dial: n.Dial, Writer: w, Logger: testLogger()}); !errors.Is(err, ErrFenced) {
			t.Fatalf("Open of a fenced writer = %v", err)
		}
		d.Close()
		inc.Stop()
	})
}
