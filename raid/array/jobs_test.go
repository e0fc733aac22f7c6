package array

import (
	"testing"

	"github.com/ddraid/ddraid/raid"
)

// Jobs yield to foreground IO (down to the minimum speed); their own
// member IO must not count as foreground, or every job runs at the
// minimum speed on an idle array.
func TestBusyCountsForegroundIOOnly(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	busy := a.busyFunc()
	busy()
	check(t, a, true) // reads every member
	if busy() {
		t.Fatal("a job's own member IO counted as foreground IO")
	}
	steps := []struct {
		name string
		io   func() error
	}{
		{"write", func() error { _, err := a.Device().WriteAt(make([]byte, 4096), 8192); return err }},
		{"read", func() error { _, err := a.Device().ReadAt(make([]byte, 4096), 0); return err }},
		{"zero", func() error { return a.Device().Zero(0, 4096) }},
	}
	for _, s := range steps {
		if err := s.io(); err != nil {
			t.Fatal(err)
		}
		if !busy() {
			t.Fatalf("a foreground %s was not seen", s.name)
		}
		if busy() {
			t.Fatalf("one foreground %s seen twice", s.name)
		}
	}
	f.close(a)
}
