package nbd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ddraid/ddraid/blockdev"
)

// These tests drive the protocol extensions (structured replies, block
// status, fast zero, TLS) with the reference clients.

// sparseExport returns an export of a sparse file of size bytes with
// 64 KiB of 0x5a at each offset in dataAt. The file is closed after the
// test's server is shut down.
func sparseExport(t *testing.T, name string, size int64, dataAt ...int64) Export {
	t.Helper()
	f, err := blockdev.OpenFile(filepath.Join(t.TempDir(), name+".img"), blockdev.FileOptions{Create: true, CreateSize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	for _, at := range dataAt {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 64<<10), at); err != nil {
			t.Fatal(err)
		}
	}
	return Export{Name: name, Device: f}
}

type mapEntry struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Type   uint32 `json:"type"`
}

func TestNbdinfoMap(t *testing.T) {
	requireTool(t, "nbdinfo")
	const size = 8 << 20
	disk := sparseExport(t, "disk", size, 1<<20, 5<<20)
	mem, m := memExport("mem", 1<<20, 512)
	copy(m.Bytes()[8192:], "x")
	ts := startServer(t, true, []Export{disk, mem})
	toolTransports(t, ts, func(t *testing.T, uri func(string) string) {
		var got []mapEntry
		raw := runTool(t, nil, "nbdinfo", "--map", "--json", uri("disk"))
		if err := json.Unmarshal([]byte(raw), &got); err != nil {
			t.Fatalf("nbdinfo --map --json: %v\n%s", err, raw)
		}
		want := []mapEntry{
			{0, 1 << 20, 3}, {1 << 20, 64 << 10, 0}, {1<<20 + 64<<10, 4<<20 - 64<<10, 3},
			{5 << 20, 64 << 10, 0}, {5<<20 + 64<<10, 3<<20 - 64<<10, 3},
		}
		if !slices.Equal(got, want) {
			t.Errorf("map of the sparse file\n got %v\nwant %v", got, want)
		}
		if out := runTool(t, nil, "nbdinfo", "--map", "--totals", uri("disk")); !strings.Contains(out, "hole,zero") || !strings.Contains(out, "data") {
			t.Errorf("nbdinfo --map --totals:\n%s", out)
		}
		// Memory reports zero (not hole) for untouched 4 KiB pieces.
		out := runTool(t, nil, "nbdinfo", "--map", uri("mem"))
		for _, w := range []string{"0        8192    2  zero", "8192        4096    0  data"} {
			if !strings.Contains(out, w) {
				t.Errorf("nbdinfo --map of memory lacks %q:\n%s", w, out)
			}
		}
	})
}

func TestQemuImgMap(t *testing.T) {
	requireTool(t, "qemu-img")
	const size = 4 << 20
	ts := startServer(t, false, []Export{sparseExport(t, "disk", size, 2<<20)})
	out := runTool(t, nil, "qemu-img", "map", "--output=json", "-f", "raw", "nbd://"+ts.addr+"/disk")
	var entries []struct {
		Start, Length int64
		Zero, Data    bool
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	type ent struct {
		start, length int64
		zero, data    bool
	}
	var got []ent
	for _, e := range entries {
		got = append(got, ent{e.Start, e.Length, e.Zero, e.Data})
	}
	want := []ent{{0, 2 << 20, true, false}, {2 << 20, 64 << 10, false, true}, {2<<20 + 64<<10, 2<<20 - 64<<10, true, false}}
	if !slices.Equal(got, want) {
		t.Errorf("qemu-img map\n got %v\nwant %v\n%s", got, want, out)
	}
	// qemu-img compare reads through structured replies with holes.
	img := filepath.Join(t.TempDir(), "same.img")
	data := make([]byte, size)
	copy(data[2<<20:], bytes.Repeat([]byte{0x5a}, 64<<10))
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	runTool(t, nil, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, "nbd://"+ts.addr+"/disk")
}

func TestQemuIOWriteZeroesFlags(t *testing.T) {
	requireTool(t, "qemu-io")
	plain := plainDevice{blockdev.NewMem(1<<20, 512)}
	ts := startServer(t, false, []Export{sparseExport(t, "file", 4<<20), {Name: "plain", Device: plain}})
	qio := func(export string, cmds ...string) (string, error) {
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		return runToolErr(t, nil, "qemu-io", append(args, "nbd://"+ts.addr+"/"+export)...)
	}
	// A sparse file zeroes fast with and without holes (-u allows them,
	// -n refuses a slow fallback: NBD_CMD_FLAG_FAST_ZERO).
	out, err := qio("file", "write -P 0xab 0 1M", "write -z -n 0 64k", "write -z -u -n 64k 64k", "write -z 128k 64k",
		"read -P 0 0 192k", "read -P 0xab 192k 64k")
	if err != nil || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io on a file: %v\n%s", err, out)
	}
	// A device that cannot zero fast fails -n at once, and the data stays;
	// without -n the zeroes are written.
	out, err = qio("plain", "write -P 0xcd 0 64k", "write -z -n 0 4k")
	if !strings.Contains(out, "Operation not supported") {
		t.Fatalf("fast zero on a plain device: %v\n%s", err, out)
	}
	out, err = qio("plain", "read -P 0xcd 0 64k", "write -z 0 4k", "write -z -u 4k 4k", "read -P 0 0 8k", "read -P 0xcd 8k 56k")
	if err != nil || strings.Contains(out, "failed") {
		t.Fatalf("zeroes on a plain device: %v\n%s", err, out)
	}
}

// nbdshBlockStatusScript checks BLOCK_STATUS and the refusals of invalid
// requests through libnbd with strict mode off.
const nbdshBlockStatusScript = `
import errno, os
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(os.environ["NBD_URI"])
assert h.can_meta_context("base:allocation")
size = h.get_size()
seen = []
def cb(meta, offset, entries, err):
    assert meta == "base:allocation", meta
    seen.append((offset, list(entries)))
h.block_status(size, 0, cb)
assert seen == [(0, [1 << 20, 3, 64 << 10, 0, size - (1 << 20) - (64 << 10), 3])], seen
seen.clear()
h.block_status(size, 0, cb, nbd.CMD_FLAG_REQ_ONE)
assert seen == [(0, [1 << 20, 3])], seen
seen.clear()
h.block_status(4096, (1 << 20) + 4096, cb)
assert seen == [((1 << 20) + 4096, [4096, 0])], seen
h.set_strict_mode(0)
def expect(name, fn, want):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == want, (name, str(e), e.errnum, want)
        return
    raise AssertionError("%s: no error, want %s" % (name, errno.errorcode[want]))
noop = lambda *a: 0
expect("status past end", lambda: h.block_status(4096, size, noop), errno.EINVAL)
expect("status misaligned", lambda: h.block_status(512, 100, noop), errno.EINVAL)
expect("status zero length", lambda: h.block_status(0, 0, noop), errno.EINVAL)
expect("status with DF", lambda: h.block_status(512, 0, noop, nbd.CMD_FLAG_DF), errno.EINVAL)
expect("read unknown flag", lambda: h.pread(512, 0, 1 << 9), errno.EINVAL)
expect("flush with NO_HOLE", lambda: h.flush(nbd.CMD_FLAG_NO_HOLE), errno.EINVAL)
expect("trim with DF", lambda: h.trim(512, 0, nbd.CMD_FLAG_DF), errno.EINVAL)
expect("cache with REQ_ONE", lambda: h.cache(512, 0, nbd.CMD_FLAG_REQ_ONE), errno.EINVAL)
expect("zero with DF", lambda: h.zero(512, 0, nbd.CMD_FLAG_DF), errno.EINVAL)
expect("misaligned zero", lambda: h.zero(100, 512), errno.EINVAL)
expect("misaligned trim", lambda: h.trim(512, 100), errno.EINVAL)
expect("read past end", lambda: h.pread(512, size), errno.EINVAL)
assert h.pread(0, 0) == b''
assert h.pread(512, 1 << 20, nbd.CMD_FLAG_DF) == b'\x5a' * 512
h.shutdown()

# A handle without the context may not ask; with strict mode off it does,
# and the server refuses.
g = nbd.NBD()
g.connect_uri(os.environ["NBD_URI"])
assert not g.can_meta_context("base:allocation")
g.set_strict_mode(0)
try:
    g.block_status(512, 0, noop)
    raise AssertionError("block status without a context succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
g.shutdown()
print("nbdsh-status-ok")
`

func TestNbdshBlockStatus(t *testing.T) {
	requireTool(t, "nbdsh")
	ts := startServer(t, true, []Export{sparseExport(t, "disk", 4<<20, 1<<20)})
	toolTransports(t, ts, func(t *testing.T, uri func(string) string) {
		env := []string{"PATH=/usr/bin:" + os.Getenv("PATH"), "NBD_URI=" + uri("disk")}
		out := runTool(t, env, "nbdsh", "-c", nbdshBlockStatusScript)
		if !strings.Contains(out, "nbdsh-status-ok") {
			t.Fatalf("nbdsh block status script did not finish:\n%s", out)
		}
	})
}

// TestNbdcopySparse copies a sparse export out and back in over four
// connections: nbdcopy uses block status to skip holes and FAST_ZERO or
// WRITE_ZEROES for them on the way in.
func TestNbdcopySparse(t *testing.T) {
	requireTool(t, "nbdcopy")
	const size = 16 << 20
	src := sparseExport(t, "src", size, 0, 3<<20, 15<<20)
	dst, dmem := memExport("dst", size, 512)
	copy(dmem.Bytes(), bytes.Repeat([]byte{0xff}, size)) // must be overwritten with zeroes
	ts := startServer(t, false, []Export{src, dst})
	out := filepath.Join(t.TempDir(), "out.img")
	runTool(t, nil, "nbdcopy", "-C", "4", "-R", "16", "nbd://"+ts.addr+"/src", out)
	want := make([]byte, size)
	for _, at := range []int{0, 3 << 20, 15 << 20} {
		copy(want[at:], bytes.Repeat([]byte{0x5a}, 64<<10))
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("copied image differs (%v)", err)
	}
	runTool(t, nil, "nbdcopy", "-C", "4", "--flush", "nbd://"+ts.addr+"/src", "nbd://"+ts.addr+"/dst")
	if !bytes.Equal(snapshot(dmem), want) {
		t.Fatal("export-to-export copy differs")
	}
}

func TestTLSWithRealClients(t *testing.T) {
	requireTool(t, "nbdinfo")
	requireTool(t, "qemu-img")
	requireTool(t, "qemu-io")
	pki := newTestPKI(t)

	tlsURI := func(addr, export, dir string) string {
		return fmt.Sprintf("nbds://%s/%s?tls-certificates=%s", addr, export, dir)
	}
	// qemuArgs returns pre, the TLS object and image options, then post.
	qemuArgs := func(addr, export, dir string, pre []string, post ...string) []string {
		host, port, _ := strings.Cut(addr, ":")
		args := append(pre, "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+dir, "--image-opts")
		args = append(args, post...)
		return append(args, fmt.Sprintf("driver=nbd,host=%s,port=%s,export=%s,tls-creds=tls0", host, port, export))
	}

	t.Run("required with client certificates", func(t *testing.T) {
		cfg, err := LoadTLSConfig(pki.ServerCert, pki.ServerKey, pki.CA)
		if err != nil {
			t.Fatal(err)
		}
		disk, mem := memExport("disk", 4<<20, 512)
		copy(mem.Bytes(), "secret")
		ts := startServer(t, false, []Export{disk}, withTLS(TLSRequired, cfg))

		var info nbdinfoOutput
		raw := runTool(t, nil, "nbdinfo", "--json", tlsURI(ts.addr, "disk", pki.ClientDir))
		if err := json.Unmarshal([]byte(raw), &info); err != nil || len(info.Exports) != 1 || info.Exports[0].Size != 4<<20 {
			t.Fatalf("nbdinfo over TLS: %v\n%s", err, raw)
		}
		if !strings.Contains(raw, `"TLS": true`) && !strings.Contains(raw, `"TLS":true`) {
			t.Errorf("nbdinfo does not report TLS:\n%s", raw)
		}
		out := runTool(t, nil, "qemu-io", qemuArgs(ts.addr, "disk", pki.ClientDir, nil, "-c", "read -P 0 4k 4k", "-c", "write -P 0x11 8k 4k", "-c", "read -P 0x11 8k 4k")...)
		if strings.Contains(out, "fail") {
			t.Fatalf("qemu-io over TLS:\n%s", out)
		}
		out = runTool(t, nil, "qemu-img", qemuArgs(ts.addr, "disk", pki.ClientDir, []string{"info"})...)
		if !strings.Contains(out, "4 MiB") {
			t.Errorf("qemu-img info over TLS:\n%s", out)
		}
		if string(snapshot(mem)[:6]) != "secret" || snapshot(mem)[8192] != 0x11 {
			t.Error("data written over TLS is not on the device")
		}

		// Refused: plaintext, no client certificate, a certificate from
		// another CA.
		if out, err := runToolErr(t, nil, "nbdinfo", "nbd://"+ts.addr+"/disk"); err == nil {
			t.Errorf("plaintext nbdinfo got in:\n%s", out)
		}
		if out, err := runToolErr(t, nil, "qemu-img", "info", "nbd://"+ts.addr+"/disk"); err == nil || !strings.Contains(strings.ToLower(out), "tls") {
			t.Errorf("plaintext qemu-img: %v\n%s", err, out)
		}
		if out, err := runToolErr(t, nil, "nbdinfo", tlsURI(ts.addr, "disk", pki.CAOnlyDir)); err == nil {
			t.Errorf("nbdinfo without a client certificate got in:\n%s", out)
		}
		if out, err := runToolErr(t, nil, "nbdinfo", tlsURI(ts.addr, "disk", pki.RogueDir)); err == nil {
			t.Errorf("nbdinfo with a rogue client certificate got in:\n%s", out)
		}
		if !ts.log.contains("handshake failed") {
			t.Error("refused clients were not logged")
		}
	})

	t.Run("optional with a TLS-only export", func(t *testing.T) {
		cfg, err := LoadTLSConfig(pki.ServerCert, pki.ServerKey, "")
		if err != nil {
			t.Fatal(err)
		}
		open, _ := memExport("open", 1<<20, 512)
		secret, _ := memExport("secret", 2<<20, 512)
		secret.TLSOnly = true
		ts := startServer(t, false, []Export{open, secret}, withTLS(TLSOptional, cfg))

		runTool(t, nil, "nbdinfo", "nbd://"+ts.addr+"/open")
		runTool(t, nil, "nbdinfo", tlsURI(ts.addr, "open", pki.CAOnlyDir))
		runTool(t, nil, "nbdinfo", tlsURI(ts.addr, "secret", pki.CAOnlyDir))
		if out, err := runToolErr(t, nil, "nbdinfo", "nbd://"+ts.addr+"/secret"); err == nil {
			t.Errorf("plaintext client reached the TLS-only export:\n%s", out)
		}
		plain := runTool(t, nil, "nbdinfo", "--list", "--json", "nbd://"+ts.addr+"/")
		if strings.Contains(plain, `"secret"`) {
			t.Errorf("plaintext list shows the TLS-only export:\n%s", plain)
		}
		enc := runTool(t, nil, "nbdinfo", "--list", "--json", tlsURI(ts.addr, "", pki.CAOnlyDir))
		if !strings.Contains(enc, `"secret"`) || !strings.Contains(enc, `"open"`) {
			t.Errorf("TLS list lacks an export:\n%s", enc)
		}
	})
}
