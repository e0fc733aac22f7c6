// Package tests drives the ddraid binary end to end with real NBD clients
// (nbdinfo, qemu-io, fio, nbdcopy, nbdfuse + ext4) and checks the CLI's
// refusals. Every tool a test needs must be installed (`make test` installs
// them); a missing tool fails the test, it never skips.
package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var ddraidBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ddraid-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ddraidBin = filepath.Join(dir, "ddraid")
	build := exec.Command("go", "build", "-o", ddraidBin, "../cmd/ddraid")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ddraid:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needTools fails the test when a tool is missing: tests never skip.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (run `make test-deps`): %v", tool, err)
		}
	}
}

// run runs a command and fails the test unless it exits 0.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/usr/sbin:/sbin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ddraid runs the ddraid binary with a state directory.
func ddraid(t *testing.T, stateDir string, args ...string) string {
	t.Helper()
	return run(t, ddraidBin, append(args, "--state-dir="+stateDir)...)
}

// array is a test array: its member files and state directory.
type array struct {
	name     string
	dir      string
	stateDir string
	members  []string
}

// newArray creates an array of n members of memberSize bytes each.
func newArray(t *testing.T, level string, n int, memberSize string, extra ...string) *array {
	t.Helper()
	dir := t.TempDir()
	a := &array{name: "data", dir: dir, stateDir: filepath.Join(dir, "state")}
	for i := range n {
		a.members = append(a.members, filepath.Join(dir, fmt.Sprintf("m%d", i)))
	}
	args := append([]string{"create", a.name, "--level=" + level, "--size=" + memberSize}, extra...)
	ddraid(t, a.stateDir, append(args, a.members...)...)
	return a
}

// server is a running `ddraid serve`.
type server struct {
	cmd    *exec.Cmd
	socket string
	uri    string
	mu     sync.Mutex
	log    bytes.Buffer
	done   chan error
}

// serve starts `ddraid serve` for the array on a unix socket and waits until
// it is ready. The server is stopped (SIGTERM) when the test ends.
func (a *array) serve(t *testing.T, extra ...string) *server {
	t.Helper()
	sock := filepath.Join(a.dir, fmt.Sprintf("nbd-%d.sock", time.Now().UnixNano()))
	args := append([]string{"serve", a.name, "--state-dir=" + a.stateDir, "--listen=unix:" + sock}, extra...)
	s := &server{socket: sock, uri: fmt.Sprintf("nbd+unix:///%s?socket=%s", a.name, sock), done: make(chan error, 1)}
	s.cmd = exec.Command(ddraidBin, args...)
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stderr = &lockedWriter{mu: &s.mu, w: &s.log}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			if strings.HasPrefix(sc.Text(), "serving ") {
				once.Do(func() { close(ready) })
			}
		}
		s.done <- s.cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-s.done:
		t.Fatalf("ddraid serve exited before it was ready: %v\n%s", err, s.output())
	case <-time.After(60 * time.Second):
		s.cmd.Process.Kill()
		t.Fatalf("ddraid serve not ready after 60s\n%s", s.output())
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// stop sends SIGTERM and requires a clean exit. Stopping twice is fine.
func (s *server) stop(t *testing.T) {
	t.Helper()
	if s.cmd.ProcessState != nil || s.done == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done = nil
		if err != nil {
			t.Errorf("ddraid serve exited with %v\n%s", err, s.output())
		}
	case <-time.After(60 * time.Second):
		s.cmd.Process.Kill()
		t.Errorf("ddraid serve did not stop within 60s of SIGTERM\n%s", s.output())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// layout is one array configuration the client tests run on.
type layout struct {
	name     string
	level    string
	members  int
	degraded bool // delete member 1 before serving
	extra    []string
}

var layouts = []layout{
	{name: "raid35x3", level: "raid35", members: 3},
	{name: "raid35x5", level: "raid35", members: 5},
	{name: "raid35x5-degraded", level: "raid35", members: 5, degraded: true},
}

// start creates and serves an array of the given layout.
func (l layout) start(t *testing.T, memberSize string) (*array, *server) {
	t.Helper()
	a := newArray(t, l.level, l.members, memberSize, l.extra...)
	if l.degraded {
		if err := os.Remove(a.members[1]); err != nil {
			t.Fatal(err)
		}
	}
	return a, a.serve(t)
}
