package array

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// listen starts a control server for arrays on a socket in a temporary
// directory and returns a client for it; both stop at the end of the test.
func listen(t *testing.T, f *fixture, arrays ...*Array) (*Control, *Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ctl, err := ListenControl(sock, arrays, f.options().Logger)
	if err != nil {
		t.Fatal(err)
	}
	cl := NewClient(sock)
	t.Cleanup(func() {
		cl.cs.CloseIdle()
		ctl.Close()
	})
	return ctl, cl
}

func TestControlRoundTrip(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	m.write(a, 0, int(a.Device().Size()))
	ctl, cl := listen(t, f, a)

	fi, err := os.Stat(ctl.Path())
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket %v, %v: want a socket with mode 0600", fi, err)
	}

	status := func() Status {
		t.Helper()
		sts, err := cl.Status(ctx)
		if err != nil || len(sts) != 1 || sts[0].Name != f.name {
			t.Fatalf("status: %+v, %v", sts, err)
		}
		return sts[0]
	}
	do := func(action string, req Request) Reply {
		t.Helper()
		rep, err := cl.Do(ctx, f.name, action, req)
		if err != nil {
			t.Fatalf("%s %+v: %v", action, req, err)
		}
		return rep
	}

	st := status()
	if st.State != raid.ArrayClean || st.Level != "raid35" || len(st.Members) != 3 || st.RegionSize != regionSize || len(st.MemberIO) != 3 {
		t.Fatalf("status %+v", st)
	}
	if st.MemberIO[0].Writes == 0 || st.DirtyRegions == 0 {
		t.Fatalf("status lost the counters: member IO %+v, dirty %d", st.MemberIO, st.DirtyRegions)
	}

	rep := do("check", Request{})
	if p := rep.Progress; p == nil || p.Kind != resync.KindCheck || p.Done != a.Device().Size() || p.Mismatches != 0 || !p.Finished {
		t.Fatalf("check progress %+v", rep.Progress)
	}
	waitIdle(t, a) // the worker records the last job just after the reply
	if j := status().LastJob; j == nil || j.Kind != resync.KindCheck {
		t.Fatalf("status after check: last job %+v", j)
	}

	if rep := do("fail", Request{Ref: "1"}); rep.Message != "1 marked failed" {
		t.Fatalf("fail: %q", rep.Message)
	}
	if st := status(); st.State != raid.ArrayDegraded || st.Members[1].State != meta.StateFailed {
		t.Fatalf("status after fail: %s, member 1 %s", st.State, st.Members[1].State)
	}
	do("remove", Request{Ref: f.members[1]})
	new1 := f.newFile("new1", memberSize)
	if rep := do("add", Request{Path: new1}); !strings.Contains(rep.Message, "as member 1; recovery started") {
		t.Fatalf("add: %q", rep.Message)
	}
	waitIdle(t, a)
	spare := f.newFile("spare", memberSize)
	if rep := do("add", Request{Path: spare}); !strings.Contains(rep.Message, "as a spare") {
		t.Fatalf("add spare: %q", rep.Message)
	}
	new2 := f.newFile("new2", memberSize)
	if rep := do("replace", Request{Ref: "2", Path: new2}); !strings.Contains(rep.Message, "replacing member 2") {
		t.Fatalf("replace: %q", rep.Message)
	}
	waitFor(t, "the replace to finish", func() bool {
		st := status()
		return st.Members[2].Path == new2 && st.Job == nil && st.Queued == 0
	})
	st = status()
	if st.State != raid.ArrayClean || st.Members[1].Path != new1 || len(st.Spares) != 1 || st.Spares[0].Path != spare {
		t.Fatalf("status after add, spare and replace: %+v", st)
	}
	if p := do("check", Request{Repair: true}).Progress; p == nil || p.Kind != resync.KindRepair || p.Mismatches != 0 {
		t.Fatalf("repair progress %+v", p)
	}
	m.verify(a)

	ctl.Close()
	if _, err := os.Stat(ctl.Path()); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after Close: %v", err)
	}
	if _, err := cl.Status(ctx); err == nil || !strings.Contains(err.Error(), "control socket") {
		t.Fatalf("status from a closed server: %v", err)
	}
	f.close(a)
}

func TestControlErrors(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	ctl, cl := listen(t, f, a)
	if _, err := cl.Do(ctx, f.name, "fail", Request{Ref: "0"}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, array, action string
		req                 Request
		want                []string // parts of the error message
	}{
		{"unknown array", "nope", "check", Request{}, []string{`array "nope" is not served by this process`}},
		{"unknown action", f.name, "explode", Request{}, []string{"unknown action explode"}},
		{"refused fail", f.name, "fail", Request{Ref: "1"}, []string{"refused", "--force"}},
		{"refused remove", f.name, "remove", Request{Ref: "2"}, []string{"refused", "fail it first"}},
		{"refused add", f.name, "add", Request{Path: f.members[2]}, []string{"refused", "already in array"}},
		{"refused replace", f.name, "replace", Request{Ref: "0", Path: f.newFile("x", memberSize)}, []string{"refused", "not an active member"}},
		{"unknown member", f.name, "fail", Request{Ref: "9"}, []string{"has no member 9"}},
		{"missing device", f.name, "add", Request{Path: filepath.Join(f.dir, "nothing")}, []string{"no such file"}},
		{"degraded check", f.name, "check", Request{}, []string{"degraded"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := cl.Do(ctx, c.array, c.action, c.req)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not say %q", err, w)
				}
			}
		})
	}

	// The HTTP codes under the client: 404 for what is not there, 409 for
	// a refusal, 400 for a body that is not JSON, 500 for other failures.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", ctl.Path())
	}}}
	defer hc.CloseIdleConnections()
	codes := []struct {
		path, body string
		code       int
	}{
		{"/v1/arrays/nope/fail", `{"ref":"1"}`, http.StatusNotFound},
		{"/v1/arrays/a/explode", `{}`, http.StatusNotFound},
		{"/v1/arrays/a/fail", `{"ref":"1"}`, http.StatusConflict},
		{"/v1/arrays/a/fail", `{not json`, http.StatusBadRequest},
		{"/v1/arrays/a/fail", `{"ref":"9"}`, http.StatusInternalServerError},
	}
	for _, c := range codes {
		resp, err := hc.Post("http://ddraid"+c.path, "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error string }
		derr := json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != c.code || derr != nil || e.Error == "" {
			t.Errorf("POST %s %s: HTTP %d with error %q (%v), want %d and a JSON error", c.path, c.body, resp.StatusCode, e.Error, derr, c.code)
		}
	}
	delete(f.open, a)
	a.Close()
}
