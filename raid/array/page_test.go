package array

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/raid"
)

func get(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestStatusPage(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	ctl, cl := listen(t, f, a)
	if _, err := cl.Do(t.Context(), f.name, "fail", Request{Ref: "2"}); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctl.ServeReadOnly(ln)
	base := "http://" + ln.Addr().String()
	hc := &http.Client{}
	t.Cleanup(hc.CloseIdleConnections)

	for _, via := range []struct {
		name string
		hc   *http.Client
		base string
	}{{"control socket", cl.cs.HTTP(), "http://ddraid"}, {"read-only listener", hc, base}} {
		code, page := get(t, via.hc, via.base+"/")
		if code != 200 {
			t.Fatalf("%s: GET / = %d\n%s", via.name, code, page)
		}
		for _, want := range []string{
			`id="array-` + f.name + `"`, "raid35", raid.ArrayDegraded, a.Superblock().UUID.String(),
			a.Superblock().Members[0].Path, string(raid.MemberFailed),
		} {
			if !strings.Contains(page, want) {
				t.Errorf("%s: page lacks %q", via.name, want)
			}
		}
		if n := strings.Count(page, `class="member"`); n != 3 {
			t.Errorf("%s: %d member rows, want 3", via.name, n)
		}
	}

	// The read-only listener refuses every action.
	resp, err := hc.Post(base+"/v1/arrays/"+f.name+"/fail", "application/json", strings.NewReader(`{"ref":"1"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST on the read-only listener = %d, want 404 or 405", resp.StatusCode)
	}
	if st := a.Status(); st.Members[1].State != string(raid.MemberActive) {
		t.Errorf("member 1 is %s after a refused fail", st.Members[1].State)
	}
	if code, body := get(t, hc, base+"/metrics"); code != 200 || !strings.Contains(body, "ddraid_array_degraded") {
		t.Errorf("GET /metrics on the read-only listener = %d", code)
	}
	if code, _ := get(t, hc, base+"/nothing"); code != 404 {
		t.Errorf("GET /nothing = %d, want 404", code)
	}
}
