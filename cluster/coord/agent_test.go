package coord

import (
	"context"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/raid/meta"
)

// The running array and the gate fit each other's interfaces.
var (
	_ RunningArray    = (*array.Array)(nil)
	_ array.WriteGate = (*WriteGate)(nil)
)

func TestAgentHosts(t *testing.T) {
	sb := *testSuperblock()
	sb.Members[0].Path = "10.0.0.1:10810:/dev/sdb"
	sb.Members[1].Path = "10.0.0.2:10810:/dev/sdb"
	sb.Members[2].Path = "/dev/sdc"
	sb.Members[2].State = meta.StateFailed
	hosts, err := AgentHosts(sb, remote.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range hosts {
		names = append(names, h.Name())
	}
	if strings.Join(names, " ") != "10.0.0.1:10810:/dev/sdb 10.0.0.2:10810:/dev/sdb" {
		t.Errorf("hosts %v: want the two agent members in use (the failed local one left out)", names)
	}
	sb.Members[2].State = meta.StateActive
	if _, err := AgentHosts(sb, remote.Config{}); err == nil || !strings.Contains(err.Error(), "member 2 (/dev/sdc) is not hosted by a ddraid agent") {
		t.Errorf("a local member in use: %v", err)
	}
}

// fakeRunning is a RunningArray that records what it is given.
type fakeRunning struct {
	sb      meta.Array
	applied []uint64
}

func (f *fakeRunning) Superblock() meta.Array { return f.sb }
func (f *fakeRunning) ApplySuperblock(sb *meta.Array) error {
	f.applied = append(f.applied, sb.Events)
	f.sb = *sb
	return nil
}
func (f *fakeRunning) CanOpen(context.Context, string) error           { return nil }
func (f *fakeRunning) ResyncRange(context.Context, int64, int64) error { return nil }
func (f *fakeRunning) RecoverRange(context.Context, int, int64, int64) error {
	return nil
}

func TestArrayLocalBeforeAndAfterAttach(t *testing.T) {
	dir := t.TempDir()
	sb := *testSuperblock()
	l := NewArrayLocal(dir, sb, remote.Config{})
	if err := l.Resync(context.Background(), 0, 1); err == nil || !strings.Contains(err.Error(), "not assembled") {
		t.Errorf("resync before attach: %v", err)
	}
	next := sb
	next.Events++
	next.Members = append([]meta.Member(nil), sb.Members...)
	next.Members[2].State = meta.StateFailed
	if err := l.ApplySuperblock(&next); err != nil {
		t.Fatal(err)
	}
	if got := l.Superblock(); got.Events != next.Events || got.Members[2].State != meta.StateFailed {
		t.Errorf("superblock before attach: events %d, member 2 %s", got.Events, got.Members[2].State)
	}
	var stored *meta.Array
	if err := meta.View(dir, func(s *meta.Store) error {
		var err error
		stored, err = s.Get(sb.Name)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if stored.Events != next.Events {
		t.Errorf("stored event %d, want %d", stored.Events, next.Events)
	}
	// The array opened from the older superblock is brought up to date.
	ra := &fakeRunning{sb: sb}
	if err := l.Attach(ra); err != nil {
		t.Fatal(err)
	}
	if len(ra.applied) != 1 || ra.applied[0] != next.Events {
		t.Errorf("applied at attach: %v, want [%d]", ra.applied, next.Events)
	}
	later := next
	later.Events++
	if err := l.ApplySuperblock(&later); err != nil || len(ra.applied) != 2 {
		t.Errorf("after attach the array gets the superblock: %v, applied %v", err, ra.applied)
	}
	if err := l.Resync(context.Background(), 0, 1); err != nil {
		t.Errorf("resync after attach: %v", err)
	}
}
