package raid

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/raid/meta"
)

// createOnDisk creates an array of n sparse 4 MiB member files.
func createOnDisk(t *testing.T, level Level, n int) (stateDir string, members []string) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, "state")
	for i := range n {
		members = append(members, filepath.Join(dir, "m"+string(rune('0'+i))))
	}
	err := meta.View(stateDir, func(s *meta.Store) error {
		_, err := Create(s, CreateOptions{Name: "a", Level: level, Members: members, CreateSize: 4 << 20})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return stateDir, members
}

func TestCreateAssembleLevels(t *testing.T) {
	cases := []struct {
		level Level
		n     int
		size  int64
	}{
		{LevelRaid35, 2, 3 << 20}, {LevelRaid35, 3, 6 << 20}, {LevelRaid35, 5, 12 << 20}, {LevelRaid35, 9, 24 << 20},
		{LevelMirror, 3, 3 << 20}, {LevelLinear, 3, 9 << 20},
	}
	for _, c := range cases {
		t.Run(string(c.level)+"x"+string(rune('0'+c.n)), func(t *testing.T) {
			stateDir, _ := createOnDisk(t, c.level, c.n)
			a, err := Assemble(stateDir, "a", AssembleOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if a.Device().Size() != c.size {
				t.Errorf("size %d, want %d", a.Device().Size(), c.size)
			}
			p := bytes.Repeat([]byte("ddraid!!"), 8192)
			if _, err := a.Device().WriteAt(p, 12345); err != nil {
				t.Fatal(err)
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			a, err = Assemble(stateDir, "a", AssembleOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			q := make([]byte, len(p))
			if _, err := a.Device().ReadAt(q, 12345); err != nil || !bytes.Equal(p, q) {
				t.Fatalf("data lost across reassembly: %v", err)
			}
		})
	}
}

func TestAssembleRefusesCorruptMetadata(t *testing.T) {
	stateDir, _ := createOnDisk(t, LevelRaid35, 3)
	err := meta.View(stateDir, func(s *meta.Store) error { return s.PutRaw("a", []byte("garbage")) })
	if err != nil {
		t.Fatal(err)
	}
	_, err = Assemble(stateDir, "a", AssembleOptions{})
	if !errors.Is(err, meta.ErrCorrupt) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("got %v, want a corrupt-metadata error", err)
	}
}

func TestAssembleMissingMemberDegraded(t *testing.T) {
	stateDir, members := createOnDisk(t, LevelRaid35, 5)
	os.Remove(members[2])
	a, err := Assemble(stateDir, "a", AssembleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Lost[2] != meta.StateMissing || a.Array.Members[2].State != meta.StateMissing || a.Array.Events != 2 {
		t.Fatalf("lost %v, member state %s, events %d", a.Lost, a.Array.Members[2].State, a.Array.Events)
	}
	// The missing member stays out even if its file comes back: it is stale.
	a.Close()
	f, _ := os.Create(members[2])
	f.Close()
	a, err = Assemble(stateDir, "a", AssembleOptions{})
	if err != nil {
		t.Fatalf("reassemble with a stale file back: %v", err)
	}
	defer a.Close()
	if _, ok := a.Lost[2]; !ok {
		t.Fatal("a returning member was used without a rebuild")
	}
}

// eioAfter is a member that starts failing writes once armed.
type eioAfter struct {
	blockdev.Device
	mu    sync.Mutex
	armed bool
}

func (e *eioAfter) WriteAt(p []byte, off int64) (int, error) {
	e.mu.Lock()
	armed := e.armed
	e.mu.Unlock()
	if armed {
		return 0, syscall.EIO
	}
	return e.Device.WriteAt(p, off)
}

func TestRuntimeFailureIsRecorded(t *testing.T) {
	stateDir, _ := createOnDisk(t, LevelRaid35, 3)
	var recorded sync.WaitGroup
	recorded.Add(1)
	a, err := Assemble(stateDir, "a", AssembleOptions{OnFail: func(m int, err error) {
		if err := RecordFailure(stateDir, "a", m); err != nil {
			t.Error(err)
		}
		recorded.Done()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Swap member 1 for a failing wrapper inside the engine.
	r := a.Device().(*Raid35)
	bad := &eioAfter{Device: r.members[1]}
	r.members[1] = bad
	bad.armed = true
	if _, err := r.WriteAt(make([]byte, 8192), 0); err != nil {
		t.Fatalf("write with one failing member: %v", err)
	}
	recorded.Wait()
	var sb *meta.Array
	meta.View(stateDir, func(s *meta.Store) error { sb, err = s.Get("a"); return err })
	if sb.Members[1].State != meta.StateFailed || sb.Events != 2 {
		t.Fatalf("superblock after failure: state %s events %d", sb.Members[1].State, sb.Events)
	}
	if st := Describe(stateDir, sb); st.State != ArrayDegraded {
		t.Fatalf("status %s, want degraded", st.State)
	}
}

// TestCheckFragment: a member's minimum block size must divide the
// smallest request the array sends it.
func TestCheckFragment(t *testing.T) {
	for _, tc := range []struct {
		level            Level
		members, bs, min int
		want             string // "" for accepted, else part of the error
	}{
		{LevelRaid35, 5, 4096, 0, ""},
		{LevelRaid35, 5, 4096, 1, ""},
		{LevelRaid35, 5, 4096, 1024, ""},
		{LevelRaid35, 5, 4096, 2048, "block size of 8192 or more"},
		{LevelRaid35, 5, 4096, 4096, "in 1024-byte fragments; use a block size of 16384 or more"},
		{LevelRaid35, 9, 512, 64, ""},
		{LevelRaid35, 9, 512, 512, "block size of 4096 or more"},
		{LevelRaid35, 2, 4096, 4096, ""},
		{LevelMirror, 2, 4096, 512, ""},
		{LevelMirror, 2, 4096, 4096, "a mirror array passes 512-byte requests"},
		{LevelLinear, 1, 4096, 1024, "a linear array passes 512-byte requests"},
	} {
		err := checkFragment(string(tc.level), tc.members, tc.bs, tc.min)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s x%d, %d-byte blocks, minimum %d: %v", tc.level, tc.members, tc.bs, tc.min, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s x%d, %d-byte blocks, minimum %d: %v, want %q", tc.level, tc.members, tc.bs, tc.min, err, tc.want)
		}
	}
}
