package raid

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/internal/nbdtest"
	"github.com/ddraid/ddraid/raid/meta"
)

// memExport is a memory disk served over NBD on a unix socket as export
// "m", at uri.
type memExport struct {
	mem  *blockdev.Mem
	uri  string
	sock string
	srv  *nbdtest.Server
}

// serveMem serves mem over NBD on a unix socket until the test ends; stop
// and start stop and restart it on the same socket.
func serveMem(t *testing.T, mem *blockdev.Mem) *memExport {
	t.Helper()
	e := &memExport{mem: mem, sock: filepath.Join(t.TempDir(), "m.sock")}
	e.uri = "nbd+unix:///m?socket=" + e.sock
	e.start(t)
	return e
}

// remoteFive returns the members of a five-member array: three memory
// exports of bs-byte blocks served over NBD, then two files in dir.
func remoteFive(t *testing.T, dir string, bs int) ([]*memExport, []string) {
	t.Helper()
	var exports []*memExport
	var members []string
	for range 3 {
		e := serveMem(t, blockdev.NewMem(6<<20, bs))
		exports = append(exports, e)
		members = append(members, e.uri)
	}
	return exports, append(members, filepath.Join(dir, "f3"), filepath.Join(dir, "f4"))
}

func (e *memExport) start(t *testing.T) {
	t.Helper()
	e.srv = nbdtest.Serve(t, nbdtest.Listen(t, "unix:"+e.sock), nil, nbd.Export{Name: "m", Device: e.mem})
}

func (e *memExport) stop() { e.srv.Stop() }

func createRemote(stateDir string, opts CreateOptions) (*meta.Array, error) {
	var a *meta.Array
	err := meta.View(stateDir, func(s *meta.Store) error {
		var err error
		a, err = Create(s, opts)
		return err
	})
	return a, err
}

// TestRemoteMembers creates a raid35 array of three NBD exports and two
// files, writes through it, reassembles it, and runs it with one export
// gone.
func TestRemoteMembers(t *testing.T) {
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	exports, members := remoteFive(t, dir, 512)
	a, err := createRemote(stateDir, CreateOptions{Name: "a", Level: LevelRaid35, Members: members, CreateSize: 8 << 20, AssumeClean: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range exports {
		if a.Members[i].Path != e.uri {
			t.Fatalf("member %d recorded as %q, want %q", i, a.Members[i].Path, e.uri)
		}
		h, err := meta.ReadHeader(e.mem)
		if err != nil || h.ArrayUUID != a.UUID || int(h.Role) != i {
			t.Fatalf("export %d header %+v, %v", i, h, err)
		}
	}
	// The smallest member (6 MiB exports, not the 8 MiB files) sets the size.
	if a.MemberDataSize > 6<<20-meta.DataOffset {
		t.Fatalf("member data size %d exceeds the exports", a.MemberDataSize)
	}

	asm, err := Assemble(stateDir, "a", AssembleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte("remote!!"), 32<<10)
	if _, err := asm.Device().WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	if err := asm.Close(); err != nil {
		t.Fatal(err)
	}

	// Export 1 goes away: assembly records it missing and runs degraded.
	exports[1].stop()
	asm, err = Assemble(stateDir, "a", AssembleOptions{Remote: remote.Config{DialTimeout: 5 * time.Second}})
	if err != nil {
		t.Fatalf("assemble without export 1: %v", err)
	}
	defer asm.Close()
	if asm.Lost[1] != meta.StateMissing {
		t.Fatalf("lost %v, want member 1 missing", asm.Lost)
	}
	q := make([]byte, len(p))
	if _, err := asm.Device().ReadAt(q, 4096); err != nil || !bytes.Equal(p, q) {
		t.Fatalf("degraded read: %v", err)
	}
}

// TestRemoteMemberRefusals: an unreachable or too small export at create,
// an export that belongs to another array, and an export swapped for
// another array's member while the array runs.
func TestRemoteMemberRefusals(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().String()
	l.Close()
	small := serveMem(t, blockdev.NewMem(1<<20, 512))
	good := []string{serveMem(t, blockdev.NewMem(4<<20, 512)).uri, filepath.Join(dir, "f1"), filepath.Join(dir, "f2")}

	cases := []struct {
		name    string
		members []string
		want    []string
	}{
		{"unreachable", []string{"nbd://" + closedPort + "/d0", good[1], good[2]}, []string{"nbd://" + closedPort + "/d0", "unreachable"}},
		{"too small", []string{small.uri, good[1], good[2]}, []string{"too small", "--size does not apply to remote members"}},
		{"bad URI", []string{"nbd+unix:///m", good[1], good[2]}, []string{"socket=PATH"}},
		{"given twice", []string{good[0], "nbd+unix://localhost/m?socket=" + strings.TrimPrefix(good[0], "nbd+unix:///m?socket="), good[1]}, []string{"given twice"}},
	}
	for _, c := range cases {
		_, err := createRemote(filepath.Join(dir, "state-"+c.name), CreateOptions{Name: "x", Level: LevelRaid35, Members: c.members, CreateSize: 4 << 20})
		if err == nil {
			t.Errorf("%s: create succeeded", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want %q in it", c.name, err, w)
			}
		}
	}

	// good[0] now belongs to array "a"; another array may not take it.
	stateA := filepath.Join(dir, "state-a")
	if _, err := createRemote(stateA, CreateOptions{Name: "a", Level: LevelRaid35, Members: good, CreateSize: 4 << 20, AssumeClean: true}); err != nil {
		t.Fatal(err)
	}
	others := []string{good[0], filepath.Join(dir, "g1"), filepath.Join(dir, "g2")}
	_, err = createRemote(filepath.Join(dir, "state-b"), CreateOptions{Name: "b", Level: LevelRaid35, Members: others, CreateSize: 4 << 20})
	if err == nil || !strings.Contains(err.Error(), `already belongs to array "a"`) {
		t.Fatalf("create over another array's export: %v", err)
	}
}

// TestRemoteMemberSwappedWhileDisconnected: the export behind a member's
// URI comes back after a restart holding another disk. The member's
// Verify sees the wrong header and the member fails instead of being
// written to.
func TestRemoteMemberSwappedWhileDisconnected(t *testing.T) {
	dir := t.TempDir()
	e := serveMem(t, blockdev.NewMem(4<<20, 512))
	members := []string{e.uri, filepath.Join(dir, "f1"), filepath.Join(dir, "f2")}
	stateDir := filepath.Join(dir, "state")
	if _, err := createRemote(stateDir, CreateOptions{Name: "a", Level: LevelRaid35, Members: members, CreateSize: 4 << 20, AssumeClean: true}); err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	quiet := remote.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	asm, err := Assemble(stateDir, "a", AssembleOptions{Remote: quiet, OnFail: func(m int, err error) {
		if m == 0 {
			failed <- err
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer asm.Close()
	e.stop()
	blank := blockdev.NewMem(4<<20, 512)
	e.mem = blank
	e.start(t)
	p := bytes.Repeat([]byte{7}, 8192)
	if _, err := asm.Device().WriteAt(p, 0); err != nil {
		t.Fatalf("write with member 0 swapped: %v (the array should run degraded)", err)
	}
	err = <-failed
	if !errors.Is(err, remote.ErrReplaced) || !strings.Contains(err.Error(), "no header") {
		t.Fatalf("member 0 failed with %v, want ErrReplaced for a disk without a header", err)
	}
	if !bytes.Equal(blank.Bytes(), make([]byte, blank.Size())) {
		t.Fatal("the swapped-in disk was written to")
	}
}

// TestRemoteMemberMinBlockSize: a raid35 refuses, at create and at
// assemble, an export whose minimum block size does not divide the
// fragment (every small write to it would be refused and fail it), and
// takes it with blocks large enough.
func TestRemoteMemberMinBlockSize(t *testing.T) {
	dir := t.TempDir()
	exports, members := remoteFive(t, dir, 4096)

	// 4096-byte blocks over 5 members: 1024-byte fragments.
	_, err := createRemote(filepath.Join(dir, "s1"), CreateOptions{Name: "a", Level: LevelRaid35, Members: members, CreateSize: 8 << 20, AssumeClean: true})
	if err == nil || !strings.Contains(err.Error(), "multiples of 4096 bytes") || !strings.Contains(err.Error(), "block size of 16384 or more") {
		t.Fatalf("create with 1024-byte fragments: %v, want the minimum block size named", err)
	}
	for i, e := range exports {
		if _, err := meta.ReadHeader(e.mem); !errors.Is(err, meta.ErrNoHeader) {
			t.Fatalf("export %d was written by a refused create: %v", i, err)
		}
	}

	// 16384-byte blocks: 4096-byte fragments, and a 4 KiB write works.
	stateDir := filepath.Join(dir, "s2")
	if _, err := createRemote(stateDir, CreateOptions{Name: "a", Level: LevelRaid35, Members: members, CreateSize: 8 << 20,
		AssumeClean: true, Geometry: Geometry{BlockSize: 16384}}); err != nil {
		t.Fatal(err)
	}
	asm, err := Assemble(stateDir, "a", AssembleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte("frag"), 1024)
	if _, err := asm.Device().WriteAt(p, 4096); err != nil {
		t.Fatalf("4 KiB write: %v", err)
	}
	got := make([]byte, len(p))
	if _, err := asm.Device().ReadAt(got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, p))
	}
	if err := asm.Close(); err != nil {
		t.Fatal(err)
	}

	// An export that comes back with a larger minimum is refused at
	// assembly, naming the member.
	e := exports[1]
	e.stop()
	bigger := blockdev.NewMem(6<<20, 8192)
	copy(bigger.Bytes(), e.mem.Bytes())
	e.mem = bigger
	e.start(t)
	_, err = Assemble(stateDir, "a", AssembleOptions{})
	if err == nil || !strings.Contains(err.Error(), "multiples of 8192 bytes") {
		t.Fatalf("assemble with an 8192-byte minimum: %v, want the member refused", err)
	}
}
