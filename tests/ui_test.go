//go:build ui

package tests

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUIStatusPage opens the read-only status page of a degraded array
// that is rebuilding in headless Chromium, checks the rendered DOM and
// checks the screenshot for the failed member's red badge and the blue
// progress bar. `make test-ui` runs it (build tag ui).
func TestUIStatusPage(t *testing.T) {
	browser := "chromium"
	needTools(t, browser)
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

	profile := t.TempDir()
	chrome := func(args ...string) string {
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
			"--hide-scrollbars", "--user-data-dir=" + profile, "--window-size=1000,700"}
		return run(t, browser, append(append(base, args...), url)...)
	}
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
	if dst := os.Getenv("DDRAID_UI_SCREENSHOT"); dst != "" {
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
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
