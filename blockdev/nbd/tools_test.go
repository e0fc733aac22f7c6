package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// These tests drive the server with the reference clients: libnbd's
// nbdinfo and nbdsh, and qemu-io. A missing tool is a test failure.

// requireTool returns the path of a tool, failing the test when it is not
// installed.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required for this test (install libnbd-bin, python3-libnbd, qemu-utils): %v", name, err)
	}
	return p
}

// runTool runs a tool with a timeout and returns its combined output,
// failing the test when it exits non-zero.
func runTool(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runToolErr(t, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runToolErr(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, requireTool(t, name), args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// toolTransports runs f once over TCP and once over the unix socket.
func toolTransports(t *testing.T, ts *testServer, f func(t *testing.T, uri func(export string) string)) {
	t.Run("tcp", func(t *testing.T) {
		f(t, func(e string) string { return "nbd://" + ts.addr + "/" + e })
	})
	t.Run("unix", func(t *testing.T) {
		f(t, func(e string) string { return "nbd+unix:///" + e + "?socket=" + ts.sock })
	})
}

type nbdinfoExport struct {
	Name         string `json:"export-name"`
	Description  string `json:"description"`
	Size         int64  `json:"export-size"`
	ReadOnly     bool   `json:"is_read_only"`
	CanCache     bool   `json:"can_cache"`
	CanDF        bool   `json:"can_df"`
	CanFastZero  bool   `json:"can_fast_zero"`
	CanFlush     bool   `json:"can_flush"`
	CanFUA       bool   `json:"can_fua"`
	CanMultiConn bool   `json:"can_multi_conn"`
	CanTrim      bool   `json:"can_trim"`
	CanZero      bool   `json:"can_zero"`
	BlockMin     uint32 `json:"block_size_minimum"`
	BlockPref    uint32 `json:"block_size_preferred"`
	BlockMax     uint32 `json:"block_size_maximum"`
}

type nbdinfoOutput struct {
	Protocol   string          `json:"protocol"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

func toolExports() []Export {
	disk, _ := memExport("disk", 16<<20, 512)
	ro, _ := memExport("ro", 1<<20, 4096)
	ro.ReadOnly = true
	ro.Description = ""
	return []Export{disk, ro}
}

func TestNbdinfo(t *testing.T) {
	requireTool(t, "nbdinfo")
	ts := startServer(t, true, toolExports())
	toolTransports(t, ts, func(t *testing.T, uri func(string) string) {
		var out nbdinfoOutput
		raw := runTool(t, nil, "nbdinfo", "--json", uri("disk"))
		if err := json.Unmarshal([]byte(raw), &out); err != nil {
			t.Fatalf("nbdinfo output is not JSON: %v\n%s", err, raw)
		}
		if out.Protocol != "newstyle-fixed" || !out.Structured || len(out.Exports) != 1 {
			t.Fatalf("nbdinfo: %+v", out)
		}
		want := nbdinfoExport{
			Name: "disk", Description: "memory disk", Size: 16 << 20,
			CanCache: true, CanFlush: true, CanFUA: true, CanMultiConn: true, CanTrim: true, CanZero: true,
			CanDF: true, CanFastZero: true, BlockMin: 512, BlockPref: 4096, BlockMax: 32 << 20,
		}
		if out.Exports[0] != want {
			t.Errorf("nbdinfo export\n got %+v\nwant %+v", out.Exports[0], want)
		}

		raw = runTool(t, nil, "nbdinfo", "--json", "--list", uri(""))
		out = nbdinfoOutput{}
		if err := json.Unmarshal([]byte(raw), &out); err != nil {
			t.Fatalf("nbdinfo --list output is not JSON: %v\n%s", err, raw)
		}
		var names []string
		for _, e := range out.Exports {
			names = append(names, e.Name)
			if e.Name == "ro" && (!e.ReadOnly || e.Size != 1<<20 || e.BlockMin != 4096) {
				t.Errorf("ro export listed as %+v", e)
			}
		}
		if !slices.Equal(names, []string{"disk", "ro"}) {
			t.Errorf("nbdinfo --list exports %v, want [disk ro]", names)
		}

		for _, can := range []string{"flush", "fua", "trim", "zero", "multi-conn", "cache", "fast-zero", "df", "structured-reply"} {
			runTool(t, nil, "nbdinfo", "--can", can, uri("disk"))
		}
		if _, err := runToolErr(t, nil, "nbdinfo", "--is", "read-only", uri("disk")); err == nil {
			t.Error("nbdinfo --is read-only succeeded on a writable export")
		}
		runTool(t, nil, "nbdinfo", "--is", "read-only", uri("ro"))
		if _, err := runToolErr(t, nil, "nbdinfo", uri("missing")); err == nil {
			t.Error("nbdinfo on a missing export succeeded")
		}
	})
}

func TestQemuIO(t *testing.T) {
	requireTool(t, "qemu-io")
	exps := toolExports()
	mem := exps[0].Device.(*blockdev.Mem)
	ts := startServer(t, true, exps)
	seed := byte(0)
	toolTransports(t, ts, func(t *testing.T, uri func(string) string) {
		seed += 0x10
		a, b := seed+1, seed+2
		cmds := []string{
			fmt.Sprintf("write -P %#x 0 64k", a),
			fmt.Sprintf("read -P %#x 0 64k", a),
			fmt.Sprintf("write -f -P %#x 64k 64k", b), // FUA
			fmt.Sprintf("read -P %#x 64k 64k", b),
			"write -z 128k 64k",
			"read -P 0 128k 64k",
			fmt.Sprintf("write -P %#x 192k 64k", a),
			"discard 192k 64k",
			"flush",
		}
		// A burst of asynchronous writes, all in flight together.
		for i := 0; i < 32; i++ {
			cmds = append(cmds, fmt.Sprintf("aio_write -P %#x %dk 4k", byte(i)+seed, 1024+4*i))
		}
		cmds = append(cmds, "aio_flush")
		for i := 0; i < 32; i++ {
			cmds = append(cmds, fmt.Sprintf("read -P %#x %dk 4k", byte(i)+seed, 1024+4*i))
		}
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out := runTool(t, nil, "qemu-io", append(args, uri("disk"))...)
		if strings.Contains(out, "fail") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io reported a problem:\n%s", out)
		}
		if n := strings.Count(out, "wrote "); n != 4+32 {
			t.Errorf("qemu-io reported %d writes, want 36:\n%s", n, out)
		}

		// The device holds what qemu wrote.
		got := snapshot(mem)
		check := func(off, n int, v byte) {
			t.Helper()
			if !bytes.Equal(got[off:off+n], bytes.Repeat([]byte{v}, n)) {
				t.Errorf("device bytes at %d..%d are not %#x", off, off+n, v)
			}
		}
		check(0, 64<<10, a)
		check(64<<10, 64<<10, b)
		check(128<<10, 64<<10, 0)
		check(192<<10, 64<<10, 0) // memory trims to zeroes
		for i := 0; i < 32; i++ {
			check((1024+4*i)<<10, 4096, byte(i)+seed)
		}

		// A failed pattern check must show up as a failure.
		if out, err := runToolErr(t, nil, "qemu-io", "-f", "raw", "-c", "read -P 0x99 0 4k", uri("disk")); err == nil ||
			!strings.Contains(out, "Pattern verification failed") {
			t.Errorf("qemu-io wrong-pattern read: %v\n%s", err, out)
		}
		// The read-only export can be read and refuses writes.
		runTool(t, nil, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 64k", uri("ro"))
		if out, err := runToolErr(t, nil, "qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", uri("ro")); err == nil {
			t.Errorf("qemu-io wrote to a read-only export:\n%s", out)
		}
	})
}

// nbdshScript checks transmission behaviour through libnbd, including the
// error of every kind of invalid request (strict mode off so that libnbd
// sends them).
const nbdshScript = `
import errno
size = h.get_size()
assert size == 16 << 20, size
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
assert h.can_multi_conn() and h.can_cache()
assert h.can_fast_zero() and h.can_df() and h.get_structured_replies_negotiated()
assert not h.is_read_only()
h.pwrite(b'\xab' * 8192, 0)
assert h.pread(8192, 0) == b'\xab' * 8192
h.pwrite(b'\xcd' * 4096, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 8192) == b'\xcd' * 4096
h.flush()
h.zero(4096, 0, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 0) == bytes(4096)
h.zero(4096, 4096, nbd.CMD_FLAG_FUA)
h.trim(4096, 8192)
h.cache(4096, 0)
h.pwrite(b'\xef' * 4096, 1 << 20)
h.set_strict_mode(0)
def expect(name, fn, want):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == want, (name, str(e), e.errnum, want)
        return
    raise AssertionError("%s: no error, want %s" % (name, errno.errorcode[want]))
expect("read past end", lambda: h.pread(4096, size), errno.EINVAL)
expect("read across end", lambda: h.pread(4096, size - 512), errno.EINVAL)
expect("write past end", lambda: h.pwrite(b'x' * 4096, size), errno.ENOSPC)
expect("zero past end", lambda: h.zero(4096, size), errno.ENOSPC)
expect("trim past end", lambda: h.trim(4096, size), errno.EINVAL)
expect("cache past end", lambda: h.cache(4096, size), errno.EINVAL)
expect("misaligned read", lambda: h.pread(100, 1), errno.EINVAL)
expect("misaligned write", lambda: h.pwrite(b'y' * 100, 512), errno.EINVAL)
h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO)
h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
assert h.pread(512, 0, nbd.CMD_FLAG_DF) == bytes(512)
expect("read with REQ_ONE", lambda: h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE), errno.EINVAL)
expect("write with DF", lambda: h.pwrite(b'z' * 512, 0, nbd.CMD_FLAG_DF), errno.EINVAL)
expect("oversized read", lambda: h.pread(64 << 20, 0), errno.EINVAL)
assert h.pread(0, 0) == b''
h.pwrite(b'', 0)
h.trim(0, 0)
h.zero(0, 0)
assert h.pread(512, 1 << 20) == b'\xef' * 512, "connection unusable after errors"
print("nbdsh-ok")
`

const nbdshReadOnlyScript = `
import errno
assert h.is_read_only()
h.set_strict_mode(0)
for name, fn in [("write", lambda: h.pwrite(b'x' * 4096, 0)),
                 ("trim", lambda: h.trim(4096, 0)),
                 ("zero", lambda: h.zero(4096, 0))]:
    try:
        fn()
        raise AssertionError(name + " succeeded on a read-only export")
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, (name, str(e))
assert h.pread(4096, 0) == bytes(4096)
print("nbdsh-ro-ok")
`

func TestNbdsh(t *testing.T) {
	requireTool(t, "nbdsh")
	ts := startServer(t, true, toolExports())
	env := []string{"PATH=/usr/bin:" + os.Getenv("PATH")}
	toolTransports(t, ts, func(t *testing.T, uri func(string) string) {
		out := runTool(t, env, "nbdsh", "-u", uri("disk"), "-c", nbdshScript)
		if !strings.Contains(out, "nbdsh-ok") {
			t.Fatalf("nbdsh script did not finish:\n%s", out)
		}
		out = runTool(t, env, "nbdsh", "-u", uri("ro"), "-c", nbdshReadOnlyScript)
		if !strings.Contains(out, "nbdsh-ro-ok") {
			t.Fatalf("nbdsh read-only script did not finish:\n%s", out)
		}
	})
}

// nbdshOptScript walks the option phase with libnbd's opt mode: LIST, INFO
// for a good and a missing export, then GO.
const nbdshOptScript = `
import os
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_uri(os.environ["NBD_URI"])
found = []
h.opt_list(lambda name, desc: found.append((name, desc)))
assert found == [("disk", "memory disk"), ("ro", "")], found
h.set_export_name("disk")
h.opt_info()
assert h.get_size() == 16 << 20
assert h.get_export_description() == "memory disk", h.get_export_description()
assert h.get_canonical_export_name() == "disk"
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
h.set_export_name("nope")
try:
    h.opt_info()
    raise AssertionError("opt_info on a missing export succeeded")
except nbd.Error:
    pass
h.set_export_name("ro")
h.opt_go()
assert h.is_read_only()
assert h.get_size() == 1 << 20
assert len(h.pread(4096, 0)) == 4096
h.shutdown()
print("nbdsh-opt-ok")
`

func TestNbdshOptMode(t *testing.T) {
	requireTool(t, "nbdsh")
	ts := startServer(t, true, toolExports())
	toolTransports(t, ts, func(t *testing.T, uri func(string) string) {
		env := []string{"PATH=/usr/bin:" + os.Getenv("PATH"), "NBD_URI=" + uri("")}
		out := runTool(t, env, "nbdsh", "-c", nbdshOptScript)
		if !strings.Contains(out, "nbdsh-opt-ok") {
			t.Fatalf("nbdsh opt-mode script did not finish:\n%s", out)
		}
	})
}

// TestNbdcopyMultiConn copies an image in and out over four connections
// with many requests in flight, relying on CAN_MULTI_CONN.
func TestNbdcopyMultiConn(t *testing.T) {
	requireTool(t, "nbdcopy")
	disk, mem := memExport("disk", 16<<20, 512)
	ts := startServer(t, false, []Export{disk})
	dir := t.TempDir()
	in, out := dir+"/in.img", dir+"/out.img"
	img := pattern(16<<20, 77)
	for i := 0; i < len(img); i += 1 << 20 {
		img[i] ^= byte(i >> 20) // make every MiB distinct
	}
	if err := os.WriteFile(in, img, 0o600); err != nil {
		t.Fatal(err)
	}
	uri := "nbd://" + ts.addr + "/disk"
	runTool(t, nil, "nbdcopy", "--flush", "-C", "4", "-R", "32", in, uri)
	if !bytes.Equal(snapshot(mem), img) {
		t.Fatal("export content differs from the copied image")
	}
	runTool(t, nil, "nbdcopy", "-C", "4", "-R", "32", uri, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Fatal("image copied out differs")
	}
}
