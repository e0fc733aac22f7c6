package array

import (
	"strings"
	"sync"
	"testing"

	"github.com/ddraid/ddraid/raid"
)

// In cluster mode the array's writes pass its gate, and a member failure
// goes to the MemberFailed hook instead of the local superblock.
func TestClusterOptions(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	g := &rangeGate{lo: regionSize, hi: 2 * regionSize, open: make(chan struct{})}
	var mu sync.Mutex
	var failed []int
	a := f.openWith(func(o *Options) {
		o.Gate = g
		o.MemberFailed = func(role int, err error) error {
			mu.Lock()
			defer mu.Unlock()
			failed = append(failed, role)
			return nil
		}
	})
	dev := a.Device()
	if _, err := dev.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := dev.WriteAt(make([]byte, 4096), regionSize)
		done <- err
	}()
	waitFor(t, "the write at the gate", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.waiting == 1
	})
	select {
	case err := <-done:
		t.Fatalf("a write the gate holds went through: %v", err)
	default:
	}
	close(g.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	events := f.stored().Events
	// The operator's fail goes to the hook; here the hook records nothing,
	// so Fail says the failure is not recorded cluster-wide yet.
	if err := a.Fail("1", false); err == nil || !strings.Contains(err.Error(), "not yet recorded by every writer") {
		t.Errorf("fail not recorded by the cluster: %v", err)
	}
	mu.Lock()
	got := append([]int(nil), failed...)
	mu.Unlock()
	if len(got) != 1 || got[0] != 1 {
		t.Errorf("MemberFailed calls %v, want [1]", got)
	}
	a.bg.Wait()
	if sb := f.stored(); sb.Events != events || sb.Members[1].State != "active" {
		t.Errorf("the local superblock was changed (events %d→%d, member 1 %s): cluster mode records failures through the hook only", events, sb.Events, sb.Members[1].State)
	}
	f.close(a)
}
