package array

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/raid"
)

// scrape fetches /metrics through the control socket and returns the
// samples by their name and labels as printed.
func scrape(t *testing.T, cl *Client) map[string]float64 {
	t.Helper()
	resp, err := cl.cs.HTTP().Get("http://ddraid/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v\n%s", resp.StatusCode, err, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestMetrics(t *testing.T) {
	f := newFixture(t, raid.LevelRaid35, 3, false, nil)
	a := f.openArray()
	m := newModel(t, a)
	_, cl := listen(t, f, a)
	bs := a.Device().BlockSize()
	const writes = 7
	for i := range writes {
		m.write(a, int64(i)*regionSize, bs)
	}
	arr := fmt.Sprintf(`array=%q`, f.name)
	reads := scrape(t, cl)[`ddraid_array_io_ops_total{`+arr+`,op="read"}`]
	buf := make([]byte, bs)
	if _, err := a.Device().ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}

	got := scrape(t, cl)
	for _, tc := range []struct {
		sample string
		want   float64
	}{
		{`ddraid_array_io_ops_total{` + arr + `,op="write"}`, writes},
		{`ddraid_array_io_ops_total{` + arr + `,op="read"}`, reads + 1},
		{`ddraid_array_io_bytes_total{` + arr + `,op="write"}`, float64(writes * bs)},
		{`ddraid_array_io_latency_seconds_count{` + arr + `,op="write"}`, writes},
		{`ddraid_array_io_latency_seconds_bucket{` + arr + `,op="write",le="+Inf"}`, writes},
		{`ddraid_array_degraded{` + arr + `}`, 0},
		{`ddraid_array_size_bytes{` + arr + `}`, float64(a.Device().Size())},
		{`ddraid_bitmap_dirty_regions{` + arr + `}`, float64(len(a.bm.Dirty()))},
		{`ddraid_array_state{` + arr + `,state="clean"}`, 1},
		{`ddraid_array_reads_around_total{` + arr + `}`, float64(a.Status().ReadsAround)},
	} {
		if v, ok := got[tc.sample]; !ok || v != tc.want {
			t.Errorf("%s = %v (present %v), want %v", tc.sample, v, ok, tc.want)
		}
	}
	// Each member saw one fragment of every block written.
	for role := range 3 {
		found := false
		for k, v := range got {
			if strings.HasPrefix(k, fmt.Sprintf(`ddraid_member_io_ops_total{%s,member=`, arr)) &&
				strings.HasSuffix(k, fmt.Sprintf(`op="write",role="%d"}`, role)) {
				found = true
				if v < writes {
					t.Errorf("%s = %v, want at least %d", k, v, writes)
				}
			}
		}
		if !found {
			t.Errorf("no write counter for member %d", role)
		}
	}

	if _, err := cl.Do(t.Context(), f.name, "fail", Request{Ref: "1"}); err != nil {
		t.Fatal(err)
	}
	got = scrape(t, cl)
	if v := got[`ddraid_array_degraded{`+arr+`}`]; v != 1 {
		t.Errorf("degraded = %v after failing a member, want 1", v)
	}
	if v := got[`ddraid_array_failed_members{`+arr+`}`]; v != 1 {
		t.Errorf("failed members = %v after failing a member, want 1", v)
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("the Go runtime collector is missing")
	}
}
