package serve

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/array"
)

func TestPageHandler(t *testing.T) {
	st := cluster.Status{Node: "n0", Quorum: true, Epoch: 7, Phase: "normal", Voters: []lockd.NodeID{"n0", "n1", "n2"},
		Members: []cluster.MemberStatus{
			{Name: "n0", State: cluster.StateAlive, Lockd: true, Gossip: "127.0.0.11:7946"},
			{Name: "n1", State: cluster.StateFailed},
			{Name: "n2", State: cluster.StateUnknown},
		}}
	h := PageHandler(nil, PageConfig{Title: "agent n0", Cluster: func() cluster.Status { return st },
		Exports: func() []array.PageExport {
			return []array.PageExport{{Path: "/srv/d0", Addresses: []string{"127.0.0.11:10810"}}}
		}})
	code, page := request(h, http.MethodGet, "/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d\n%s", code, page)
	}
	for _, want := range []string{
		"ddraid agent n0", `id="node-n0" data-state="alive"`, `id="node-n1" data-state="failed"`,
		`id="node-n2" data-state="unknown"`, "n0 (this node)", "epoch 7", "3 node(s)", ">quorum<",
		"No arrays.", "127.0.0.11:10810:/srv/d0", `http-equiv="refresh"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if n := strings.Count(page, `class="node"`); n != 3 {
		t.Errorf("%d node rows, want 3", n)
	}
	if code, _ := request(h, http.MethodGet, "/v1/status"); code != http.StatusNotFound {
		t.Errorf("GET /v1/status = %d, want 404", code)
	}
	if code, _ := request(h, http.MethodPost, "/"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST / = %d, want 405", code)
	}

	// Outside cluster mode: no nodes section.
	_, page = request(PageHandler(nil, PageConfig{Title: "agent"}), http.MethodGet, "/")
	if strings.Contains(page, `id="cluster"`) || !strings.Contains(page, "ddraid agent") {
		t.Errorf("page outside cluster mode:\n%s", page)
	}
}

// request runs one request through h.
func request(h http.Handler, method, path string) (int, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Body.String()
}
