package member

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/raid/meta"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testRegion = 64 << 10
	testBase   = 4096
)

var arrayA = [16]byte{0xaa, 1}

var quiet = slog.New(slog.DiscardHandler)

// newHost opens a host on a fresh state dir with one 1 MiB + 4 KiB disk.
func newHost(t *testing.T) (*Host, *Disk, string) {
	t.Helper()
	h, d, dir := newHostTB(t)
	t.Cleanup(func() { h.Close() })
	return h, d, dir
}

// newHostTB is newHost without closing the host at the end.
func newHostTB(t testing.TB) (*Host, *Disk, string) {
	t.Helper()
	dir := t.TempDir()
	h, err := Open(Config{StateDir: filepath.Join(dir, "state"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, testBase+16*testRegion); err != nil {
		t.Fatal(err)
	}
	d, err := h.AddDisk(disk)
	if err != nil {
		t.Fatal(err)
	}
	return h, d, dir
}

func writer(slot uint32, epoch uint64) nbd.Writer {
	return nbd.Writer{Array: arrayA, Slot: slot, Epoch: epoch, RegionSize: testRegion, DataOffset: testBase}
}

// dirtyOf renders the dirty extents of slot over the whole disk.
func dirtyOf(t *testing.T, d *Disk, slot uint32) string {
	t.Helper()
	ext, err := d.Dirty(slot, 0, d.Device().Size(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ext {
		fmt.Fprintf(&b, "%d:%d ", e.Length, e.Flags)
	}
	return strings.TrimSpace(b.String())
}

func write(t *testing.T, s nbd.Session, off, n int64) error {
	t.Helper()
	end, err := s.StartWrite(off, n)
	if err != nil {
		return err
	}
	end()
	return nil
}

func TestMarksAndClears(t *testing.T) {
	_, d, _ := newHost(t)
	s, err := d.Admit(writer(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	R, B := int64(testRegion), int64(testBase)
	steps := []struct {
		name  string
		do    func() error
		dirty string // slot 0 over the whole disk
	}{
		{"fresh", func() error { return nil }, fmt.Sprintf("%d:0", B+16*R)},
		{"header write is not marked", func() error { return write(t, s, 0, B) }, fmt.Sprintf("%d:0", B+16*R)},
		{"write in region 0", func() error { return write(t, s, B+100, 10) }, fmt.Sprintf("%d:0 %d:1 %d:0", B, R, 15*R)},
		{"write across regions 2 and 3", func() error { return write(t, s, B+3*R-512, 1024) },
			fmt.Sprintf("%d:0 %d:1 %d:0 %d:1 %d:0", B, R, R, 2*R, 12*R)},
		{"header and region 0 at once", func() error { return write(t, s, 0, B+512) },
			fmt.Sprintf("%d:0 %d:1 %d:0 %d:1 %d:0", B, R, R, 2*R, 12*R)},
		{"clear of a partial region clears nothing", func() error { return s.Clear(B+2*R+512, R) },
			fmt.Sprintf("%d:0 %d:1 %d:0 %d:1 %d:0", B, R, R, 2*R, 12*R)},
		{"clear region 2", func() error { return s.Clear(B+2*R, R) },
			fmt.Sprintf("%d:0 %d:1 %d:0 %d:1 %d:0", B, R, 2*R, R, 12*R)},
		{"clear everything", func() error { return s.Clear(0, B+16*R) }, fmt.Sprintf("%d:0", B+16*R)},
		{"last region", func() error { return write(t, s, B+15*R, R) }, fmt.Sprintf("%d:0 %d:1", B+15*R, R)},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := dirtyOf(t, d, 0); got != st.dirty {
			t.Fatalf("%s: dirty %q, want %q", st.name, got, st.dirty)
		}
	}
	if got := dirtyOf(t, d, 1); got != fmt.Sprintf("%d:0", B+16*R) {
		t.Fatalf("slot 1 has marks: %s", got)
	}
}

func TestExtentsOf(t *testing.T) {
	cases := []struct {
		name     string
		marked   []span
		from, to int64
		want     string
	}{
		{"none", nil, 0, 100, "100:0"},
		{"inside", []span{{10, 20}}, 0, 100, "10:0 10:1 80:0"},
		{"unsorted and overlapping", []span{{50, 60}, {10, 30}, {20, 40}}, 0, 100, "10:0 30:1 10:0 10:1 40:0"},
		{"adjacent merge", []span{{10, 20}, {20, 30}}, 0, 40, "10:0 20:1 10:0"},
		{"clipped to the range", []span{{0, 50}, {90, 200}}, 20, 100, "30:1 40:0 10:1"},
		{"outside", []span{{200, 300}}, 0, 100, "100:0"},
	}
	for _, c := range cases {
		var b strings.Builder
		for _, e := range extentsOf(nil, c.marked, c.from, c.to) {
			fmt.Fprintf(&b, "%d:%d ", e.Length, e.Flags)
		}
		if got := strings.TrimSpace(b.String()); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

func TestFencing(t *testing.T) {
	h, d, _ := newHost(t)
	old, err := d.Admit(writer(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	other, err := d.Admit(writer(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := write(t, old, testBase, 10); err != nil {
		t.Fatal(err)
	}

	// A newer writer of slot 0 fences the older one.
	newer, err := d.Admit(writer(0, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Close()
	if got := h.MinEpoch(arrayA, 0); got != 2 {
		t.Fatalf("min epoch %d after a writer with epoch 2, want 2", got)
	}
	cases := []struct {
		name   string
		err    error
		fenced bool
	}{
		{"old writer writes", write(t, old, testBase, 10), true},
		{"old writer clears", old.Clear(testBase, testRegion), true},
		{"old epoch admitted", func() error { _, err := d.Admit(writer(0, 1)); return err }(), true},
		{"new writer writes", write(t, newer, testBase, 10), false},
		{"other slot unaffected", write(t, other, testBase, 10), false},
		{"lower fence changes nothing", h.Fence(arrayA, 0, 1), false},
	}
	for _, c := range cases {
		if got := errors.Is(c.err, ErrFenced); got != c.fenced {
			t.Errorf("%s: %v; fenced %v, want %v", c.name, c.err, got, c.fenced)
		}
		if c.fenced && !strings.HasPrefix(c.err.Error(), "fenced") {
			t.Errorf("%s: message %q does not start with fenced", c.name, c.err)
		}
	}
	// The admin fence.
	if err := h.Fence(arrayA, 0, 5); err != nil {
		t.Fatal(err)
	}
	if err := write(t, newer, testBase, 10); !errors.Is(err, ErrFenced) {
		t.Fatalf("write under epoch 2 after a fence at 5: %v", err)
	}
}

// TestFenceWaitsForWrites: a fence returns only once the writes it
// overtakes have finished, so nothing lands under the old epoch after it.
func TestFenceWaitsForWrites(t *testing.T) {
	h, d, _ := newHost(t)
	s, err := d.Admit(writer(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	end, err := s.StartWrite(testBase, 512)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Fence(arrayA, 0, 2) }()
	// Once the fence waits for the lock, new readers are held back.
	for h.fence.TryRLock() {
		h.fence.RUnlock()
	}
	select {
	case err := <-done:
		t.Fatalf("fence returned (%v) while a write was in flight", err)
	default:
	}
	end()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := write(t, s, testBase, 512); !errors.Is(err, ErrFenced) {
		t.Fatalf("write after the fence: %v", err)
	}
}

func TestStatePersists(t *testing.T) {
	h, d, dir := newHost(t)
	s, err := d.Admit(writer(0, 3))
	if err != nil {
		t.Fatal(err)
	}
	if err := write(t, s, testBase+testRegion, 10); err != nil {
		t.Fatal(err)
	}
	want := dirtyOf(t, d, 0)
	s.Close()
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h2, err := Open(Config{StateDir: filepath.Join(dir, "state"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	d2, err := h2.AddDisk(filepath.Join(dir, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	if got := dirtyOf(t, d2, 0); got != want {
		t.Fatalf("marks after reopening %q, want %q", got, want)
	}
	if got := h2.MinEpoch(arrayA, 0); got != 3 {
		t.Fatalf("min epoch after reopening %d, want 3", got)
	}
	if _, err := d2.Admit(writer(0, 2)); !errors.Is(err, ErrFenced) {
		t.Fatalf("stale writer after reopening: %v", err)
	}
	// Marks made with one geometry refuse a writer with another.
	w := writer(0, 3)
	w.RegionSize = 2 * testRegion
	if _, err := d2.Admit(w); err == nil || !strings.Contains(err.Error(), "region size") {
		t.Fatalf("writer with another region size: %v", err)
	}
	// Loaded marks clear on request.
	s2, err := d2.Admit(writer(0, 3))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Clear(0, d2.Device().Size()); err != nil {
		t.Fatal(err)
	}
	if got := dirtyOf(t, d2, 0); strings.Contains(got, ":1") {
		t.Fatalf("marks after clearing: %s", got)
	}
}

func TestRefusals(t *testing.T) {
	h, d, dir := newHost(t)
	if _, err := Open(Config{StateDir: filepath.Join(dir, "state")}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open of one state dir: %v", err)
	}
	if _, err := h.AddDisk(filepath.Join(dir, "disk")); err == nil {
		t.Fatal("a disk added twice")
	}
	if _, err := h.AddDisk(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing disk was added")
	}
	w := writer(0, 1)
	w.DataOffset = 1 << 30
	if _, err := d.Admit(w); err == nil {
		t.Fatal("a data offset beyond the disk was admitted")
	}
	if _, err := Open(Config{}); err == nil {
		t.Fatal("Open without a state dir")
	}
	bad := filepath.Join(dir, "bad")
	os.MkdirAll(bad, 0o750)
	os.WriteFile(filepath.Join(bad, stateFile), []byte("{not json"), 0o600)
	if _, err := Open(Config{StateDir: bad}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state file: %v", err)
	}
}

func TestNoMarksWriter(t *testing.T) {
	_, d, _ := newHost(t)
	w := writer(0, 1)
	w.RegionSize = 0
	s, err := d.Admit(w)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := write(t, s, testBase, 4096); err != nil {
		t.Fatal(err)
	}
	if err := s.Clear(0, 4096); err != nil {
		t.Fatal(err)
	}
	if got := dirtyOf(t, d, 0); strings.Contains(got, ":1") {
		t.Fatalf("a writer without marks left marks: %s", got)
	}
}

// TestConcurrentWriters: many writers at once (run with -race).
func TestConcurrentWriters(t *testing.T) {
	_, d, _ := newHost(t)
	var wg sync.WaitGroup
	for slot := range uint32(4) {
		s, err := d.Admit(writer(slot, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := write(t, s, testBase+int64(i)*testRegion, 512); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	for slot := range uint32(4) {
		if got := dirtyOf(t, d, slot); got != fmt.Sprintf("%d:0 %d:1 %d:0", testBase, 8*testRegion, 8*testRegion) {
			t.Fatalf("slot %d: %s", slot, got)
		}
	}
}

func TestControl(t *testing.T) {
	h, _, dir := newHost(t)
	sock := filepath.Join(dir, "c.sock")
	ctl, err := ListenControl(sock, h, nil)
	if err == nil {
		defer ctl.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	c := DialControl(sock)
	defer c.cs.CloseIdle()
	cases := []struct {
		req FenceRequest
		err string
	}{
		{FenceRequest{Array: "aa010000-0000-0000-0000-000000000000", Slot: 2, Epoch: 7}, ""},
		{FenceRequest{Array: "not-a-uuid", Epoch: 7}, "UUID"},
		{FenceRequest{Array: "aa010000-0000-0000-0000-00000000000g", Epoch: 7}, "UUID"},
		{FenceRequest{Array: "aa010000-0000-0000-0000-000000000000", Epoch: 0}, "positive"},
	}
	for _, cs := range cases {
		msg, err := c.Fence(cs.req)
		if cs.err == "" {
			if err != nil || !strings.Contains(msg, "below 7") {
				t.Errorf("fence %+v: %q %v", cs.req, msg, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), cs.err) {
			t.Errorf("fence %+v: %v, want an error with %q", cs.req, err, cs.err)
		}
	}
	if got := h.MinEpoch(arrayA, 2); got != 7 {
		t.Fatalf("min epoch %d after the control fence, want 7", got)
	}
	if st := h.Status(); len(st.Disks) != 1 || st.Fences[fenceKey(arrayA, 2)] != 7 {
		t.Fatalf("status %+v", st)
	}
}

var _ blockdev.Device = (*blockdev.File)(nil)

// TestDirtyFollowsTheHeader: a disk that moved to another array reports
// only the marks of the array whose header it carries.
func TestDirtyFollowsTheHeader(t *testing.T) {
	_, d, _ := newHost(t)
	arrayB := [16]byte{0xbb}
	wa, wb := writer(0, 1), writer(0, 1)
	wb.Array = arrayB
	sa, err := d.Admit(wa)
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := d.Admit(wb)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	if err := write(t, sa, testBase, 1); err != nil { // A: region 0
		t.Fatal(err)
	}
	if err := write(t, sb, testBase+2*testRegion, 1); err != nil { // B: region 2
		t.Fatal(err)
	}
	R, B := int64(testRegion), int64(testBase)
	both := fmt.Sprintf("%d:0 %d:1 %d:0 %d:1 %d:0", B, R, R, R, 13*R)
	onlyB := fmt.Sprintf("%d:0 %d:1 %d:0", B+2*R, R, 13*R)
	if got := dirtyOf(t, d, 0); got != both {
		t.Fatalf("without a header: %q, want every array's marks %q", got, both)
	}
	hdr := meta.Header{ArrayUUID: meta.UUID(arrayB), MemberUUID: meta.UUID{1}, Members: 3, BlockSize: 4096,
		DataOffset: testBase, DataSize: uint64(16 * R), Level: "raid35", ArrayName: "b"}
	if err := meta.WriteHeader(d.Device(), &hdr); err != nil {
		t.Fatal(err)
	}
	if got := dirtyOf(t, d, 0); got != onlyB {
		t.Fatalf("with array B's header: %q, want B's marks %q", got, onlyB)
	}
}
