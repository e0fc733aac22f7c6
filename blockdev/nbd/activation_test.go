package nbd

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// freeFDPair returns n such that descriptors n and n+1 are not open.
func freeFDPair(t *testing.T) int {
	t.Helper()
	for n := 600; n < 2000; n += 2 {
		_, e1 := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0)
		_, e2 := unix.FcntlInt(uintptr(n+1), unix.F_GETFD, 0)
		if e1 == unix.EBADF && e2 == unix.EBADF {
			return n
		}
	}
	t.Fatal("no free descriptor pair")
	return 0
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestActivationListeners(t *testing.T) {
	// Two listening sockets, duplicated to consecutive descriptors as
	// systemd would pass them (from 3 up; here from wherever dup puts
	// them).
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := Listen("unix:" + filepath.Join(shortTempDir(t), "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	// activationListeners owns the descriptors it is given: hand it
	// duplicates at two consecutive free numbers.
	first := freeFDPair(t)
	for i, l := range []interface{ File() (*os.File, error) }{l1.(*net.TCPListener), l2.(*net.UnixListener)} {
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Dup3(int(f.Fd()), first+i, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	pid := os.Getpid()
	env := map[string]string{"LISTEN_PID": strconv.Itoa(pid), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "tcp:unix"}

	ls, err := activationListeners(envOf(env), pid, first)
	if err != nil || len(ls) != 2 {
		t.Fatalf("activationListeners = %v, %v", ls, err)
	}
	e, mem := memExport("disk", 1<<20, 512)
	copy(mem.Bytes(), "activated")
	s, err := NewServer(Config{Logger: newTestLogger(&logBuffer{}, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(e); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	for _, l := range ls {
		go func() { done <- s.Serve(l) }()
	}
	for _, l := range ls {
		c, err := Dial(t.Context(), l.Addr().Network(), l.Addr().String(), "disk")
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 9)
		if _, err := c.ReadAt(buf, 0); err != nil || string(buf) != "activated" {
			t.Fatalf("read through the activated listener: %q, %v", buf, err)
		}
		c.Close()
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	for range ls {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}

	// Not for us, or not activated: nothing.
	for _, m := range []map[string]string{
		{"LISTEN_PID": strconv.Itoa(pid + 1), "LISTEN_FDS": "1"},
		{"LISTEN_FDS": "1"},
		{},
	} {
		if ls, err := activationListeners(envOf(m), pid, first); ls != nil || err != nil {
			t.Errorf("env %v: %v, %v", m, ls, err)
		}
	}
	// Broken: a bad count, a descriptor that is not a socket.
	if _, err := activationListeners(envOf(map[string]string{"LISTEN_PID": strconv.Itoa(pid), "LISTEN_FDS": "x"}), pid, first); err == nil {
		t.Error("bad LISTEN_FDS accepted")
	}
	reg, err := os.CreateTemp(t.TempDir(), "notsock")
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	dup := freeFDPair(t)
	if err := unix.Dup3(int(reg.Fd()), dup, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if _, err := activationListeners(envOf(map[string]string{"LISTEN_PID": strconv.Itoa(pid), "LISTEN_FDS": "1"}), pid, dup); err == nil {
		t.Error("a regular file was accepted as a listening socket")
	}
}
