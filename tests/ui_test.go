//go:build ui

package tests

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestUIStatusPage opens the read-only status page of a degraded array
// that is rebuilding in headless Chromium, checks the rendered DOM and
// checks the screenshot for the failed member's red badge and the blue
// progress bar. `make test-ui` runs it (build tag ui).
func TestUIStatusPage(t *testing.T) {
	needTools(t, "chromium")
	a := newArray(t, "raid35", 3, "64M", "--assume-clean")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	a.serve(t, "--http="+addr, "--speed-min=1M", "--speed-max=1M")
	ddraid(t, a.stateDir, "fail-device", a.name, "1")
	ddraid(t, a.stateDir, "remove-device", a.name, "1")
	spare := filepath.Join(a.dir, "new")
	if err := os.WriteFile(spare, nil, 0o644); err != nil || os.Truncate(spare, 64<<20) != nil {
		t.Fatal("cannot make the new member file")
	}
	ddraid(t, a.stateDir, "add-device", a.name, spare)
	url := "http://" + addr + "/"

	chrome := headless(t, url)
	img, b := screenshot(t, chrome, "DDRAID_UI_SCREENSHOT")
	dom := chrome("--dump-dom")
	for _, want := range []string{`id="array-data"`, "degraded", "recover", a.members[0], spare, "recovering"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q:\n%s", want, dom)
		}
	}

	// The page's colours: the degraded badge (amber), the recovering
	// member's badge (amber), the active members' badges (green) and the
	// progress bar's fill (blue).
	for _, want := range []struct {
		name string
		c    color.RGBA
	}{
		{"amber state badge", color.RGBA{0xc9, 0x8a, 0x00, 0xff}},
		{"green member badge", color.RGBA{0x2f, 0x8f, 0x46, 0xff}},
		{"blue progress fill", color.RGBA{0x3b, 0x74, 0xc4, 0xff}},
	} {
		if n := countColor(img, want.c); n < 20 {
			t.Errorf("screenshot has %d pixels of the %s %v, want at least 20", n, want.name, want.c)
		}
	}
	t.Log(fmt.Sprintf("screenshot %d bytes", len(b)))
}

// headless returns a function that runs headless Chromium (1000x700, a
// profile of its own) on url with the given arguments and returns its
// output.
func headless(t *testing.T, url string) func(args ...string) string {
	profile := t.TempDir()
	return func(args ...string) string {
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
			"--hide-scrollbars", "--user-data-dir=" + profile, "--window-size=1000,700"}
		return run(t, "chromium", append(append(base, args...), url)...)
	}
}

// screenshot takes a screenshot with chrome, checks its size and copies it
// to the file the environment variable env names, if set.
func screenshot(t *testing.T, chrome func(args ...string) string, env string) (image.Image, []byte) {
	t.Helper()
	shot := filepath.Join(t.TempDir(), "status.png")
	chrome("--screenshot=" + shot)
	b, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if r := img.Bounds(); r.Dx() != 1000 || r.Dy() != 700 {
		t.Fatalf("screenshot is %v, want 1000x700", r)
	}
	if dst := os.Getenv(env); dst != "" {
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return img, b
}

// TestUIAgentPage: three cluster agents serve one raid35 array (the drill
// cluster: n0 and n1 serve it, n0 hosts two members and n2 one), n0 and n1
// with --http. n0's page in headless Chromium lists the three nodes alive
// and in quorum, the array serving with its writer slot and three active
// members, and n0's member disks. After n1 is killed with SIGKILL the page
// shows n1 failed (a red badge in the screenshot).
func TestUIAgentPage(t *testing.T) {
	needTools(t, "chromium")
	dn := loopbackNet(t, 3)
	dn.writerFlags = []string{"--http=127.0.0.1:0"}
	dc := startDrillCluster(t, t.TempDir(), dn)
	n0 := dc.nodes[0]
	m := regexp.MustCompile(`agent status page (http://\S+)`).FindStringSubmatch(n0.output())
	if m == nil {
		t.Fatalf("n0 did not print its status page address:\n%s", n0.output())
	}
	url := m[1]
	chrome := headless(t, url)

	dom := chrome("--dump-dom")
	for _, want := range []string{"ddraid agent n0", `id="node-n0" data-state="alive"`, `id="node-n1" data-state="alive"`,
		`id="node-n2" data-state="alive"`, `id="array-data"`, ">serving<", "writer slot", dc.disks[0], dc.disks[1],
		dc.members[0]} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q:\n%s", want, dom)
		}
	}
	if n := strings.Count(dom, `class="node"`); n != 3 {
		t.Errorf("%d node rows, want 3", n)
	}
	if n := strings.Count(dom, `class="member"`); n != 3 {
		t.Errorf("%d member rows, want 3", n)
	}
	if n := strings.Count(dom, "<td>yes</td>"); n != 3 {
		t.Errorf("%d nodes in quorum, want 3:\n%s", n, dom)
	}

	dc.nodes[1].kill9(t)
	waitFor(t, "n0's page shows n1 failed", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `id="node-n1" data-state="failed"`)
	})
	dom = chrome("--dump-dom")
	for _, want := range []string{`id="node-n1" data-state="failed"`, `id="node-n0" data-state="alive"`,
		`id="node-n2" data-state="alive"`, `id="array-data"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page after the kill lacks %q:\n%s", want, dom)
		}
	}
	img, _ := screenshot(t, chrome, "DDRAID_UI_AGENT_SCREENSHOT")
	for _, want := range []struct {
		name string
		c    color.RGBA
	}{
		{"red failed node badge", color.RGBA{0xc0, 0x39, 0x2b, 0xff}},
		{"green badges", color.RGBA{0x2f, 0x8f, 0x46, 0xff}},
	} {
		if n := countColor(img, want.c); n < 20 {
			t.Errorf("screenshot has %d pixels of the %s %v, want at least 20", n, want.name, want.c)
		}
	}
}

// countColor counts the pixels within a small distance of c.
func countColor(img image.Image, c color.RGBA) int {
	n := 0
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			pr, pg, pb, _ := img.At(x, y).RGBA()
			if near(pr>>8, c.R) && near(pg>>8, c.G) && near(pb>>8, c.B) {
				n++
			}
		}
	}
	return n
}

func near(v uint32, want uint8) bool {
	d := int(v) - int(want)
	return d >= -6 && d <= 6
}
