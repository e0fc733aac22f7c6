package lockd

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" = valid
	}{
		{"ok", Config{ID: "a", Voters: []NodeID{"b", "a"}}, ""},
		{"no id", Config{Voters: []NodeID{"a"}}, "empty node ID"},
		{"no voters", Config{ID: "a"}, "no voters"},
		{"not a voter", Config{ID: "a", Voters: []NodeID{"b"}}, "not a voter"},
		{"duplicate", Config{ID: "a", Voters: []NodeID{"a", "a"}}, "duplicate"},
		{"empty voter", Config{ID: "a", Voters: []NodeID{"a", ""}}, "bad voter"},
		{"lease too short", Config{ID: "a", Voters: []NodeID{"a"}, HeartbeatTicks: 4, LeaseTicks: 4}, "must exceed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewCore(tc.cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.want != "" && (err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want ErrInvalid mentioning %q", err, tc.want)
			case tc.want == "":
				if c.cfg.LeaseTicks != 8 || c.cfg.HeartbeatTicks != 1 || c.cfg.RetryTicks != 3 || c.cfg.DriftTicks != 2 {
					t.Errorf("defaults not filled: %+v", c.cfg)
				}
				if c.cfg.Voters[0] != "a" {
					t.Errorf("voters not sorted: %v", c.cfg.Voters)
				}
			}
		})
	}
}

func TestAPIErrors(t *testing.T) {
	c, err := NewCore(Config{ID: "a", Voters: []NodeID{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetMembers([]NodeID{"a"})
	held, err := c.Lock("ls", "r", EX, 0)
	if err != nil {
		t.Fatal(err)
	}
	waiting, err := c.Lock("ls", "r", PR, 0)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", maxNameLen+1)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"bad mode", func() error { _, err := c.Lock("ls", "r", Mode(9), 0); return err }(), ErrInvalid},
		{"empty lockspace", func() error { _, err := c.Lock("", "r", PR, 0); return err }(), ErrInvalid},
		{"long resource", func() error { _, err := c.Lock("ls", long, PR, 0); return err }(), ErrInvalid},
		{"unknown flag", func() error { _, err := c.Lock("ls", "r", PR, 1<<12); return err }(), ErrInvalid},
		{"lock with CANCEL", func() error { _, err := c.Lock("ls", "r", PR, Cancel); return err }(), ErrInvalid},
		{"convert unknown", c.Convert(999, PR, 0, nil), ErrUnknownLock},
		{"convert waiting", c.Convert(waiting, EX, 0, nil), ErrBusy},
		{"convert big lvb", c.Convert(held, NL, ValBlk, make([]byte, LVBSize+1)), ErrInvalid},
		{"unlock waiting", c.Unlock(waiting, 0, nil), ErrBusy},
		{"unlock bad flags", c.Unlock(held, NoQueue, nil), ErrInvalid},
		{"cancel granted", c.Cancel(held), ErrInvalid},
		{"cancel unknown", c.Cancel(999), ErrUnknownLock},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if err := c.Cancel(waiting); err != nil {
		t.Errorf("cancel waiting: %v", err)
	}
}

// BenchmarkOneNodeLockUnlock measures the core alone: one uncontended lock and unlock on a
// one-node cluster (no network).
func BenchmarkOneNodeLockUnlock(b *testing.B) {
	c, err := NewCore(Config{ID: "a", Voters: []NodeID{"a"}})
	if err != nil {
		b.Fatal(err)
	}
	c.SetMembers([]NodeID{"a"})
	c.Advance()
	b.ReportAllocs()
	for b.Loop() {
		id, _ := c.Lock("ls", "r", EX, 0)
		if err := c.Unlock(id, 0, nil); err != nil {
			b.Fatal(err)
		}
		c.Advance()
	}
}

// A node that was paused catches up all its ticks at once (Elapse): its lease is gone
// before it can act on anything the others sent meanwhile.
func TestElapseEndsLease(t *testing.T) {
	s := newSim(t, Config{}, "n1", "n2", "n3")
	s.setMembers(s.live(), s.live())
	s.stabilize(12)
	c := s.cores["n1"]
	if !c.HasQuorum() {
		t.Fatal("no quorum after settling")
	}
	c.Elapse(uint64(c.cfg.LeaseTicks))
	if c.HasQuorum() {
		t.Fatalf("still has quorum after %d ticks without answers", c.cfg.LeaseTicks)
	}
	s.stabilize(3)
	if !c.HasQuorum() {
		t.Fatal("answers did not restore the lease")
	}
}

func TestSplitRebuild(t *testing.T) {
	for _, tc := range []struct{ recs, masters, parts int }{
		{0, 0, 1}, {1, 0, 1}, {rebuildChunk, 0, 1}, {rebuildChunk + 1, 0, 2},
		{rebuildChunk - 1, 1, 1}, {rebuildChunk, 1, 2}, {3 * rebuildChunk, 2 * rebuildChunk, 5},
	} {
		m := Message{Type: MsgRebuildLocks, Records: make([]LockRecord, tc.recs), Masters: make([]MasterRecord, tc.masters)}
		parts := splitRebuild(m)
		nr, nm := 0, 0
		for i, p := range parts {
			if p.Part != uint64(i) || p.Parts != uint64(len(parts)) || len(p.Records)+len(p.Masters) > rebuildChunk {
				t.Errorf("%+v: part %d is %d/%d with %d+%d records", tc, i, p.Part, p.Parts, len(p.Records), len(p.Masters))
			}
			nr += len(p.Records)
			nm += len(p.Masters)
		}
		if len(parts) != tc.parts || nr != tc.recs || nm != tc.masters {
			t.Errorf("%+v: %d parts carrying %d+%d records", tc, len(parts), nr, nm)
		}
	}
}

// Recovery with more locks than fit in one rebuild message.
func TestRecoveryManyLocks(t *testing.T) {
	s := newSim(t, Config{}, "n1", "n2", "n3")
	s.setMembers(s.live(), s.live())
	s.stabilize(12)
	const n = 3*rebuildChunk + 10
	for i := range n {
		if _, err := s.cores["n1"].Lock("ls", fmt.Sprint("r", i), PR, ValBlk); err != nil {
			t.Fatal(err)
		}
	}
	s.deliverAll()
	s.crash("n3")
	s.setMembers(s.live(), s.live())
	s.stabilize(30)
	c := s.cores["n1"]
	if !c.Normal() || c.Epoch() != 2 {
		t.Fatalf("recovery did not finish: epoch %d, %v", c.Epoch(), c.phase)
	}
	locks := c.Locks()
	if len(locks) != n {
		t.Fatalf("%d locks after recovery, want %d", len(locks), n)
	}
	for _, li := range locks {
		if li.Granted != PR || li.Token.Epoch != 2 {
			t.Fatalf("lock %+v not recovered", li)
		}
	}
}
