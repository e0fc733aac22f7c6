package tests

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs `ddraid demo` twice: the first run creates the array, the
// second reuses it; both serve it to nbdinfo and stop cleanly on SIGTERM.
func TestDemo(t *testing.T) {
	needTools(t, "nbdinfo")
	dir := filepath.Join(t.TempDir(), "ddraid-demo")
	for i, want := range []string{"created array \"demo\"", "reusing array \"demo\""} {
		port := freePort(t)
		cmd := exec.Command(ddraidBin, "demo", "--dir="+dir, "--listen=127.0.0.1:"+port)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var seen strings.Builder
		ready := make(chan bool, 1)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				seen.WriteString(sc.Text() + "\n")
				if strings.HasPrefix(sc.Text(), "serving demo") {
					select {
					case ready <- true:
					default:
					}
				}
			}
			close(ready)
		}()
		select {
		case ok := <-ready:
			if !ok {
				cmd.Wait()
				t.Fatalf("run %d: demo exited early:\n%s", i, seen.String())
			}
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("run %d: demo not serving after 60s", i)
		}
		info := run(t, "nbdinfo", "nbd://127.0.0.1:"+port+"/demo")
		if !strings.Contains(info, "export-size: 4290772992") {
			t.Errorf("run %d: demo export is not a 5 x 1 GiB raid35:\n%s", i, info)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		for range ready { // the reader closes ready when stdout ends
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("run %d: demo exit: %v", i, err)
		}
		for _, w := range []string{want, "nbd://127.0.0.1:" + port + "/demo", "nbdinfo", "fio"} {
			if !strings.Contains(seen.String(), w) {
				t.Errorf("run %d: demo output lacks %q:\n%s", i, w, seen.String())
			}
		}
	}
}
