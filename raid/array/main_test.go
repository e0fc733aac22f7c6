package array

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

func TestMain(m *testing.M) {
	// pebble starts a disk-health ticker for every Open and stops it only
	// in DB.Close: an Open that fails because another Open of this
	// process holds the metadata store (meta.Open then retries) leaves
	// one behind. The tests read the superblock while failures are being
	// recorded in the background, so such retries happen here.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/cockroachdb/pebble/v2/vfs.(*diskHealthCheckingFS).startTickerLocked.func1"))
}

// Sizes of the test arrays: small members and small regions keep every
// full pass (rebuild, check, initial sync) to a few MiB.
const (
	memberSize = 8 << 20
	regionSize = 64 << 10
)

// unthrottled lets background jobs run at full speed.
var unthrottled = resync.Throttle{Min: 1 << 40}

// logSink is a slog.Handler that keeps every record, so tests can assert
// that a warning was given. It never writes to the test log: background
// goroutines may log after a test has finished.
type logSink struct {
	mu   sync.Mutex
	recs []string
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }

func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	s.mu.Lock()
	s.recs = append(s.recs, b.String())
	s.mu.Unlock()
	return nil
}

func (s *logSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *logSink) WithGroup(string) slog.Handler      { return s }

// find returns the first record that contains every part.
func (s *logSink) find(parts ...string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
next:
	for _, r := range s.recs {
		for _, p := range parts {
			if !strings.Contains(r, p) {
				continue next
			}
		}
		return r, true
	}
	return "", false
}

func (s *logSink) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.recs, "\n")
}

// fixture is one array on member files in a temporary directory.
type fixture struct {
	t        *testing.T
	dir      string
	stateDir string
	name     string
	level    raid.Level
	members  []string
	log      *logSink
	open     map[*Array]bool // arrays not closed yet; closed at cleanup
}

// newFixture creates an array of n members of memberSize bytes. prefill
// creates the member files first, filled with random bytes (an array made
// of disks that held data); otherwise create makes sparse zero files.
func newFixture(t *testing.T, level raid.Level, n int, prefill bool, mod func(*raid.CreateOptions)) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, dir: dir, stateDir: filepath.Join(dir, "state"), name: "a", level: level, log: &logSink{}, open: map[*Array]bool{}}
	for i := range n {
		f.members = append(f.members, filepath.Join(dir, fmt.Sprintf("m%d", i)))
	}
	if prefill {
		for _, p := range f.members {
			writeRandomFile(t, p, memberSize)
		}
	}
	opts := raid.CreateOptions{Name: f.name, Level: level, Members: f.members, CreateSize: memberSize, RegionSize: regionSize}
	if mod != nil {
		mod(&opts)
	}
	err := meta.View(f.stateDir, func(s *meta.Store) error {
		_, err := raid.Create(s, opts)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for a := range f.open {
			a.Close()
		}
	})
	return f
}

// options are the Options tests start from: unthrottled, marks kept
// until a test clears them (a long clear delay), logs captured.
func (f *fixture) options() Options {
	return Options{
		StateDir: f.stateDir, Name: f.name, Throttle: unthrottled, ClearDelay: time.Hour,
		Logger: slog.New(f.log),
	}
}

// openWith opens the array; mod adjusts f.options().
func (f *fixture) openWith(mod func(*Options)) *Array {
	f.t.Helper()
	o := f.options()
	if mod != nil {
		mod(&o)
	}
	a, err := Open(o)
	if err != nil {
		f.t.Fatalf("open: %v", err)
	}
	f.open[a] = true
	return a
}

func (f *fixture) openArray() *Array { f.t.Helper(); return f.openWith(nil) }

// close closes a cleanly and fails the test on an error.
func (f *fixture) close(a *Array) {
	f.t.Helper()
	delete(f.open, a)
	if err := a.Close(); err != nil {
		f.t.Fatalf("close: %v", err)
	}
}

// stored returns the superblock as stored.
func (f *fixture) stored() *meta.Array {
	f.t.Helper()
	var sb *meta.Array
	err := meta.View(f.stateDir, func(s *meta.Store) error {
		var err error
		sb, err = s.Get(f.name)
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return sb
}

// newFile makes a sparse file of size bytes in the fixture's directory.
func (f *fixture) newFile(name string, size int64) string {
	f.t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func writeRandomFile(t *testing.T, path string, size int) {
	t.Helper()
	b := make([]byte, size)
	h := fnv.New64a()
	h.Write([]byte(path))
	fillRandom(b, h.Sum64())
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fillRandom(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

// model is the expected content of an array: every write goes to the
// array and to the model.
type model struct {
	t    *testing.T
	data []byte
	seed uint64
}

// newModel reads the array's current content as the starting point.
func newModel(t *testing.T, a *Array) *model {
	t.Helper()
	m := &model{t: t, data: make([]byte, a.Device().Size())}
	if _, err := a.Device().ReadAt(m.data, 0); err != nil {
		t.Fatalf("read array: %v", err)
	}
	return m
}

// write writes n random bytes at off to the array and the model.
func (m *model) write(a *Array, off int64, n int) {
	m.t.Helper()
	m.seed++
	p := make([]byte, n)
	fillRandom(p, m.seed*7919)
	if _, err := a.Device().WriteAt(p, off); err != nil {
		m.t.Fatalf("write %d+%d: %v", off, n, err)
	}
	copy(m.data[off:], p)
}

// writeRegions writes one block in the middle of each listed region.
func (m *model) writeRegions(a *Array, regions ...int64) {
	m.t.Helper()
	bs := int64(a.Device().BlockSize())
	for _, r := range regions {
		m.write(a, r*regionSize+regionSize/2-bs, int(2*bs))
	}
}

// verify reads the whole array and compares it with the model.
func (m *model) verify(a *Array) {
	m.t.Helper()
	got := make([]byte, len(m.data))
	if _, err := a.Device().ReadAt(got, 0); err != nil {
		m.t.Fatalf("read array: %v", err)
	}
	if !bytes.Equal(got, m.data) {
		for i := range got {
			if got[i] != m.data[i] {
				m.t.Fatalf("array content differs from the model from byte %d on", i)
			}
		}
	}
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline. Background jobs have no completion hook to wait on, so tests
// poll the state an operator would watch.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// waitIdle waits until no job runs or is queued.
func waitIdle(t *testing.T, a *Array) {
	t.Helper()
	waitFor(t, "background jobs to finish", a.Idle)
}

// check runs a check (or repair) and returns the mismatch count. It
// returns once the worker is idle again, so that status shows the check
// as the last job (Check returns as soon as the job ends, and the worker
// records the last job just after).
func check(t *testing.T, a *Array, repair bool) int64 {
	t.Helper()
	p, err := a.Check(context.Background(), repair)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	waitIdle(t, a)
	if p.Done != a.Device().Size() {
		t.Fatalf("check covered %d bytes of %d", p.Done, a.Device().Size())
	}
	return p.Mismatches
}

// memberStates returns the superblock member states in role order.
func memberStates(sb meta.Array) string {
	var s []string
	for _, m := range sb.Members {
		s = append(s, m.State)
	}
	return strings.Join(s, " ")
}

// corruptMember overwrites n bytes of a member's data area at off (a
// member offset) behind the array's back.
func corruptMember(t *testing.T, path string, off int64, n int) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	old := make([]byte, n)
	if _, err := fh.ReadAt(old, meta.DataOffset+off); err != nil {
		t.Fatal(err)
	}
	for i := range old {
		old[i] ^= 0xa5
	}
	if _, err := fh.WriteAt(old, meta.DataOffset+off); err != nil {
		t.Fatal(err)
	}
}

// redundancyOf returns, for array block n, the member and member offset
// of a fragment that only carries redundancy: raid35 parity, or the
// second mirror copy. A repair rewrites it from the data (raid35) or the
// first copy (mirror), so the array's content survives the corruption;
// mirror reads may return the bad copy until then.
func redundancyOf(t *testing.T, sb meta.Array, n int64) (member int, off int64) {
	t.Helper()
	switch raid.Level(sb.Level) {
	case raid.LevelRaid35:
		g := raid.Geometry{Members: len(sb.Members), BlockSize: sb.BlockSize, Parity: raid.Parity(sb.Parity), ParityChunk: sb.ParityChunk}.WithDefaults()
		return g.ParityMember(n), n * int64(g.FragmentSize())
	case raid.LevelMirror:
		return 1, n * int64(sb.BlockSize)
	}
	t.Fatalf("level %s has no redundancy", sb.Level)
	return 0, 0
}

// corruptRedundancy corrupts the redundancy of the block at array offset
// off.
func corruptRedundancy(t *testing.T, sb meta.Array, off int64) {
	t.Helper()
	n := off / int64(sb.BlockSize)
	m, moff := redundancyOf(t, sb, n)
	corruptMember(t, sb.Members[m].Path, moff, 64)
}
