package tests

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ddarray "github.com/ddraid/ddraid/raid/array"
)

// writeImage copies n random bytes into the array and returns the source.
func writeImage(t *testing.T, uri string, n int) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "img")
	buf := make([]byte, n)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", "--flush", src, uri)
	return src
}

// sameImage checks the array's first bytes equal src.
func sameImage(t *testing.T, uri, src string) {
	t.Helper()
	st, _ := os.Stat(src)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdcopy", uri, out)
	run(t, "cmp", "-n", fmt.Sprint(st.Size()), src, out)
}

func checkClean(t *testing.T, a *array) {
	t.Helper()
	out, err := runErr(ddraidBin, "check", a.name, "--state-dir="+a.stateDir)
	if err != nil || !strings.Contains(out, " 0 mismatched") {
		t.Fatalf("check: %v\n%s", err, out)
	}
}

func healthy(st ddarray.Status) bool { return idle(st) && st.State == "clean" }

// TestOperatorActions walks an operator through a failed disk, a refused
// failure, refused adds, a rebuild, a live replace, a re-add that rebuilds
// only dirty regions, and an automatic spare — on a served array.
func TestOperatorActions(t *testing.T) {
	needTools(t, "nbdcopy", "qemu-io", "cmp")
	a := newArray(t, "raid35", 5, "32MiB", "--region-size=1M")
	s := a.serve(t, "--clear-delay=1s")
	src := writeImage(t, s.uri, 40<<20)
	newFile := func(name, size string) string {
		p := filepath.Join(a.dir, name)
		run(t, "truncate", "-s", size, p)
		return p
	}

	ddraid(t, a.stateDir, "fail-device", a.name, "1")
	fails(t, "use --force", "fail-device", a.name, "3", "--state-dir="+a.stateDir)
	fails(t, "too small", "add-device", a.name, newFile("small", "4M"), "--state-dir="+a.stateDir)
	other := newArray(t, "raid35", 3, "32MiB")
	fails(t, "belongs to array", "add-device", a.name, other.members[0], "--state-dir="+a.stateDir)
	fails(t, "fail it first", "remove-device", a.name, "0", "--state-dir="+a.stateDir)
	sameImage(t, s.uri, src) // degraded reads

	ddraid(t, a.stateDir, "remove-device", a.name, "1")
	out := ddraid(t, a.stateDir, "add-device", a.name, newFile("new1", "32M"))
	if !strings.Contains(out, "as member 1") {
		t.Fatalf("add-device: %s", out)
	}
	waitStatus(t, s, a.stateDir, a.name, "recovery of member 1", healthy)
	sameImage(t, s.uri, src)
	checkClean(t, a)

	out = ddraid(t, a.stateDir, "replace", a.name, "0", newFile("new0", "32M"))
	if !strings.Contains(out, "replacing member 0") {
		t.Fatalf("replace: %s", out)
	}
	st := waitStatus(t, s, a.stateDir, a.name, "replace", func(st ddarray.Status) bool {
		return idle(st) && st.Members[0].Path == filepath.Join(a.dir, "new0")
	})
	if st.State != "clean" {
		t.Fatalf("array %s during/after replace, want clean all along", st.State)
	}
	sameImage(t, s.uri, src)
	checkClean(t, a)

	// Re-add: member 4 goes away, a few regions are written, it comes back.
	ddraid(t, a.stateDir, "fail-device", a.name, a.members[4])
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", "-c", "write -P 0x77 20M 64k", s.uri)
	out = ddraid(t, a.stateDir, "add-device", a.name, a.members[4])
	if !strings.Contains(out, "re-added") {
		t.Fatalf("re-add: %s", out)
	}
	st = waitStatus(t, s, a.stateDir, a.name, "re-add recovery", healthy)
	if st.LastJob == nil || st.LastJob.Kind != "recover" || st.LastJob.Done >= st.Size/2 {
		t.Fatalf("re-add should rebuild only dirty regions; last job %+v of a %d-byte array", st.LastJob, st.Size)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x77 20M 64k", s.uri)
	checkClean(t, a)

	// A spare takes over automatically.
	out = ddraid(t, a.stateDir, "add-device", a.name, newFile("spare", "32M"))
	if !strings.Contains(out, "spare") {
		t.Fatalf("add spare: %s", out)
	}
	ddraid(t, a.stateDir, "fail-device", a.name, "2")
	st = waitStatus(t, s, a.stateDir, a.name, "recovery onto the spare", healthy)
	if st.Members[2].Path != filepath.Join(a.dir, "spare") || len(st.Spares) != 0 {
		t.Fatalf("spare not used: members %+v spares %+v", st.Members, st.Spares)
	}
	checkClean(t, a)
}

// TestOfflineActions changes a stopped array; serving it runs the recovery.
func TestOfflineActions(t *testing.T) {
	needTools(t, "nbdcopy", "cmp")
	a := newArray(t, "raid35", 3, "32MiB")
	s := a.serve(t)
	src := writeImage(t, s.uri, 20<<20)
	s.stop(t)
	out := ddraid(t, a.stateDir, "fail-device", a.name, "2")
	if !strings.Contains(out, "not served") {
		t.Fatalf("offline fail: %s", out)
	}
	fails(t, "use --force", "fail-device", a.name, "0", "--state-dir="+a.stateDir)
	nw := filepath.Join(a.dir, "new2")
	run(t, "truncate", "-s", "32M", nw)
	ddraid(t, a.stateDir, "add-device", a.name, nw)
	if st := ddraid(t, a.stateDir, "status", a.name); !strings.Contains(st, "recovering") {
		t.Fatalf("status after offline add:\n%s", st)
	}
	s = a.serve(t)
	waitStatus(t, s, a.stateDir, a.name, "recovery after offline add", healthy)
	sameImage(t, s.uri, src)
	checkClean(t, a)
	// A check on a stopped array runs in the command.
	s.stop(t)
	checkClean(t, a)
}

// TestCheckFindsAndRepairsMismatches corrupts a member behind ddraid's back.
func TestCheckFindsAndRepairsMismatches(t *testing.T) {
	a := newArray(t, "raid35", 3, "16MiB")
	s := a.serve(t)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 0 4M", s.uri)
	s.stop(t)
	f, err := os.OpenFile(a.members[1], os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("garbage"), 1<<20+4096*10) // member data starts at 1 MiB
	f.Close()
	out, err := runErr(ddraidBin, "check", a.name, "--state-dir="+a.stateDir)
	if err == nil || !strings.Contains(out, "1 mismatched blocks found") {
		t.Fatalf("check of a corrupted member: %v\n%s", err, out)
	}
	out, err = runErr(ddraidBin, "check", a.name, "--repair", "--state-dir="+a.stateDir)
	if err == nil || !strings.Contains(out, "1 mismatched blocks repaired") {
		t.Fatalf("repair: %v\n%s", err, out)
	}
	checkClean(t, a)
}

// TestInitialSync creates an array on members that already hold data.
func TestInitialSync(t *testing.T) {
	dir := t.TempDir()
	var members []string
	for i := range 3 {
		p := filepath.Join(dir, fmt.Sprintf("m%d", i))
		buf := make([]byte, 16<<20)
		rand.Read(buf)
		os.WriteFile(p, buf, 0o600)
		members = append(members, p)
	}
	a := &array{name: "data", dir: dir, stateDir: filepath.Join(dir, "state"), members: members}
	out := ddraid(t, a.stateDir, append([]string{"create", "data"}, members...)...)
	if !strings.Contains(out, "initial sync") {
		t.Fatalf("create on members with data: %s", out)
	}
	s := a.serve(t)
	st := waitStatus(t, s, a.stateDir, a.name, "initial sync", func(st ddarray.Status) bool {
		return idle(st) && !st.InitialSync
	})
	if st.LastJob == nil || st.LastJob.Kind != "resync" || st.LastJob.Done != st.Size {
		t.Fatalf("initial sync job %+v", st.LastJob)
	}
	checkClean(t, a)
}

// TestDrillMemberFaultsFromNbdkit serves one member through nbdkit's error
// filter (mounted as a file with nbdfuse) and turns errors on mid-run.
func TestDrillMemberFaultsFromNbdkit(t *testing.T) {
	needTools(t, "nbdkit", "nbdfuse", "fusermount3", "fio")
	dir := t.TempDir()
	img, trigger, sock := filepath.Join(dir, "m2.img"), filepath.Join(dir, "errors-on"), filepath.Join(dir, "nbdkit.sock")
	run(t, "truncate", "-s", "32M", img)
	kit := exec.Command("nbdkit", "-f", "-U", sock, "--filter=error", "file", img, "error-rate=100%", "error-file="+trigger)
	if err := kit.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kit.Process.Kill(); kit.Wait() })
	fuseDir := filepath.Join(dir, "fuse")
	os.Mkdir(fuseDir, 0o755)
	waitFile(t, sock)
	pid := filepath.Join(dir, "fuse.pid")
	fuse := exec.Command("nbdfuse", "-P", pid, fuseDir, "nbd+unix:///?socket="+sock)
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { runErr("fusermount3", "-u", fuseDir); fuse.Wait() })
	waitFile(t, pid)

	a := &array{name: "data", dir: dir, stateDir: filepath.Join(dir, "state")}
	for i := range 5 {
		a.members = append(a.members, filepath.Join(dir, fmt.Sprintf("m%d", i)))
	}
	a.members[2] = filepath.Join(fuseDir, "nbd")
	for i, m := range a.members {
		if i != 2 {
			run(t, "truncate", "-s", "32M", m)
		}
	}
	ddraid(t, a.stateDir, append([]string{"create", "data", "--assume-clean"}, a.members...)...)
	s := a.serve(t)
	fio := func(args ...string) {
		t.Helper()
		out := run(t, "fio", append([]string{"--name=faults", "--ioengine=nbd", "--uri=" + s.uri, "--bs=4k",
			"--size=64M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--randseed=5"}, args...)...)
		if !strings.Contains(out, "err= 0") {
			t.Fatalf("fio: %s", out)
		}
	}
	// Errors switch on while the writes run.
	go func() { time.Sleep(300 * time.Millisecond); os.WriteFile(trigger, nil, 0o600) }()
	fio("--rw=randwrite", "--do_verify=1")
	st := waitStatus(t, s, a.stateDir, a.name, "member 2 failed", func(st ddarray.Status) bool {
		return st.Members[2].State == "failed"
	})
	if st.State != "degraded" {
		t.Fatalf("array %s with a failed member", st.State)
	}
	fio("--rw=read", "--do_verify=1", "--verify_only")
	// Replace the failed member with a good disk and verify again.
	nw := filepath.Join(dir, "new2")
	run(t, "truncate", "-s", "32M", nw)
	ddraid(t, a.stateDir, "remove-device", a.name, "2")
	ddraid(t, a.stateDir, "add-device", a.name, nw)
	waitStatus(t, s, a.stateDir, a.name, "recovery", healthy)
	fio("--rw=read", "--do_verify=1", "--verify_only")
	checkClean(t, a)
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s did not appear", path)
}
