package nbd

import (
	"sync/atomic"
	"testing"
	"time"
)

// Config.OnTransmission is called for each connection that finishes its
// handshake, not for one that fails it, and its done function once the
// connection has ended.
func TestOnTransmission(t *testing.T) {
	var open atomic.Int32
	opened, closed := make(chan struct{}, 4), make(chan struct{}, 4)
	hook := func(c *Config) {
		c.OnTransmission = func() func() {
			open.Add(1)
			opened <- struct{}{}
			return func() {
				open.Add(-1)
				closed <- struct{}{}
			}
		}
	}
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e}, hook)

	// A handshake that fails: an export that does not exist.
	r := rawDial(t, ts.addr)
	r.greet(flagCFixedNewstyle | flagCNoZeroes)
	r.sendOpt(optGo, goData("nosuch"))
	if rep := r.readOptReply(); rep.typ != repErrUnknown {
		t.Fatalf("OPT_GO for an unknown export: reply %#x, want NBD_REP_ERR_UNKNOWN", rep.typ)
	}
	r.sendOpt(optAbort, nil)
	r.readOptReply() // the ACK of ABORT
	r.expectEOF()
	if n := open.Load(); n != 0 || len(opened) != 0 {
		t.Fatalf("after a failed handshake: %d open, %d calls; want none", n, len(opened))
	}

	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(testTimeout):
			t.Fatalf("no %s call", what)
		}
	}
	a := dial(t, ts.addr, "disk")
	wait(opened, "OnTransmission")
	b := dial(t, ts.addr, "disk")
	wait(opened, "OnTransmission")
	if n := open.Load(); n != 2 {
		t.Fatalf("two clients in transmission: %d open, want 2", n)
	}
	goodClientWorks(t, a, 1)
	a.Close()
	wait(closed, "done")
	if n := open.Load(); n != 1 {
		t.Fatalf("after one client left: %d open, want 1", n)
	}
	goodClientWorks(t, b, 2)
	b.Close()
	wait(closed, "done")
	if n := open.Load(); n != 0 || len(opened) != 0 || len(closed) != 0 {
		t.Fatalf("after both left: %d open, %d extra calls, %d extra dones", n, len(opened), len(closed))
	}
}
