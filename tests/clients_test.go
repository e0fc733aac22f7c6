package tests

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNbdinfo(t *testing.T) {
	needTools(t, "nbdinfo")
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			a, s := l.start(t, "64MiB")
			var info struct {
				Exports []struct {
					Name      string `json:"export-name"`
					Size      int64  `json:"export-size"`
					MinBlock  int    `json:"block_size_minimum"`
					PrefBlock int    `json:"block_size_preferred"`
					MaxBlock  int    `json:"block_size_maximum"`
					ReadOnly  bool   `json:"is_read_only"`
					CanFlush  bool   `json:"can_flush"`
					CanFUA    bool   `json:"can_fua"`
					CanTrim   bool   `json:"can_trim"`
					CanZero   bool   `json:"can_zero"`
					MultiConn bool   `json:"can_multi_conn"`
				} `json:"exports"`
			}
			out := run(t, "nbdinfo", "--json", s.uri)
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatalf("nbdinfo --json: %v\n%s", err, out)
			}
			if len(info.Exports) != 1 {
				t.Fatalf("exports: %s", out)
			}
			e := info.Exports[0]
			fragment := int64(4096 / (l.members - 1))
			dataPerMember := (64<<20 - 1<<20) / fragment * fragment
			wantSize := dataPerMember / fragment * 4096
			if e.Name != a.name || e.Size != wantSize || e.MinBlock != 512 || e.PrefBlock != 4096 || e.MaxBlock < 1<<20 {
				t.Errorf("export %+v, want name %s size %d block sizes 512/4096", e, a.name, wantSize)
			}
			if e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.MultiConn {
				t.Errorf("flags %+v: want writable, flush, fua, trim, zero, multi-conn", e)
			}
			for _, c := range []string{"flush", "fua", "trim", "zero", "multi-conn"} {
				run(t, "nbdinfo", "--can", c, s.uri)
			}
		})
	}
}

func TestNbdinfoTCPAndReadOnly(t *testing.T) {
	needTools(t, "nbdinfo")
	a := newArray(t, "raid35", 5, "16MiB")
	port := freePort(t)
	s := a.serve(t, "--listen=127.0.0.1:"+port, "--read-only", "--min-block-size=array")
	out := run(t, "nbdinfo", "nbd://127.0.0.1:"+port+"/data")
	if !strings.Contains(out, "is_read_only: true") {
		t.Errorf("read-only export not reported read-only:\n%s", out)
	}
	if !strings.Contains(out, "block_size_minimum: 4096") {
		t.Errorf("--min-block-size=array does not advertise the array block size:\n%s", out)
	}
	if _, err := runErr("nbdinfo", "--can", "write", s.uri); err == nil {
		t.Error("nbdinfo --can write succeeded on a read-only export")
	}
	list := run(t, "nbdinfo", "--list", "nbd://127.0.0.1:"+port)
	if !strings.Contains(list, "export=\"data\"") {
		t.Errorf("--list does not show the export:\n%s", list)
	}
}

func TestQemuIO(t *testing.T) {
	needTools(t, "qemu-io")
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			_, s := l.start(t, "32MiB")
			q := func(cmds ...string) string {
				args := []string{"-f", "raw"}
				for _, c := range cmds {
					args = append(args, "-c", c)
				}
				out := run(t, "qemu-io", append(args, s.uri)...)
				if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed:") {
					t.Fatalf("qemu-io %v:\n%s", cmds, out)
				}
				return out
			}
			q("write -P 0xab 0 1M", "read -P 0xab 0 1M")
			q("write -f -P 0xcd 1M 64k", "read -P 0xcd 1M 64k") // FUA
			q("write -z 0 64k", "read -P 0 0 64k", "read -P 0xab 64k 960k")
			q("discard 2M 1M", "write -P 0x11 2M 4k", "read -P 0x11 2M 4k")
			// Odd sizes and offsets: partial-block read-modify-write.
			q("write -P 0x22 1536 512", "read -P 0x22 1536 512", "read -P 0 1024 512", "read -P 0 2048 2048")
			q("write -P 0x33 5000 10000", "read -P 0x33 5000 10000", "read -P 0 4096 904")
			q("aio_write -P 0x44 4M 64k", "aio_write -P 0x45 5M 64k", "aio_flush", "read -P 0x44 4M 64k", "read -P 0x45 5M 64k")
			q("flush")
			// The data is still there on a new connection.
			q("read -P 0xab 64k 960k", "read -P 0xcd 1M 64k")
		})
	}
}

func TestFioVerify(t *testing.T) {
	needTools(t, "fio")
	for _, l := range layouts {
		for _, bs := range []string{"4k", "1M"} {
			t.Run(l.name+"/"+bs, func(t *testing.T) {
				_, s := l.start(t, "48MiB")
				out := run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+s.uri,
					"--rw=randwrite", "--bs="+bs, "--size=96M", "--iodepth=32",
					"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
				if strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
					t.Fatalf("fio verify reported errors:\n%s", out)
				}
			})
		}
	}
}

func TestNbdcopyRoundTrip(t *testing.T) {
	needTools(t, "nbdcopy", "cmp")
	src := filepath.Join(t.TempDir(), "in.img")
	buf := make([]byte, 200<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			a, s := l.start(t, "128MiB")
			run(t, "nbdcopy", "--flush", src, s.uri)
			out := filepath.Join(t.TempDir(), "out.img")
			run(t, "nbdcopy", s.uri, out)
			run(t, "cmp", "-n", fmt.Sprint(200<<20), src, out)
			if l.degraded {
				return
			}
			// Lose a member after the data was written: the degraded array
			// must return the same bytes.
			s.stop(t)
			if err := os.Remove(a.members[l.members-2]); err != nil {
				t.Fatal(err)
			}
			s2 := a.serve(t)
			out2 := filepath.Join(t.TempDir(), "out2.img")
			run(t, "nbdcopy", s2.uri, out2)
			run(t, "cmp", "-n", fmt.Sprint(200<<20), src, out2)
			st := ddraid(t, a.stateDir, "status", a.name)
			if !strings.Contains(st, "degraded") || !strings.Contains(st, "missing") {
				t.Errorf("status after losing a member:\n%s", st)
			}
		})
	}
}

func TestExt4OnNbdfuse(t *testing.T) {
	needTools(t, "nbdfuse", "fusermount3", "mkfs.ext4", "e2fsck", "mount", "umount", "diff")
	cases := []struct {
		l       layout
		mkfsArg []string
	}{
		{layouts[0], nil},
		{layouts[1], []string{"-b", "1024"}}, // 1 KiB blocks: partial-block writes
		{layouts[2], nil},
	}
	for _, c := range cases {
		t.Run(c.l.name, func(t *testing.T) {
			_, s := c.l.start(t, "96MiB")
			dir := t.TempDir()
			fuseDir, mnt := filepath.Join(dir, "fuse"), filepath.Join(dir, "mnt")
			os.Mkdir(fuseDir, 0o755)
			os.Mkdir(mnt, 0o755)
			pidFile := filepath.Join(dir, "nbdfuse.pid")
			fuse := exec.Command("nbdfuse", "-P", pidFile, fuseDir, s.uri)
			fuseOut := &strings.Builder{}
			fuse.Stdout, fuse.Stderr = fuseOut, fuseOut
			if err := fuse.Start(); err != nil {
				t.Fatal(err)
			}
			fuseDone := make(chan error, 1)
			go func() { fuseDone <- fuse.Wait() }()
			t.Cleanup(func() {
				runErr("umount", mnt)
				runErr("fusermount3", "-u", fuseDir)
				select {
				case <-fuseDone:
				case <-time.After(20 * time.Second):
					fuse.Process.Kill()
				}
			})
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, err := os.Stat(pidFile); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("nbdfuse not ready:\n%s", fuseOut)
				}
				time.Sleep(50 * time.Millisecond)
			}
			img := filepath.Join(fuseDir, "nbd")
			run(t, "mkfs.ext4", append(append([]string{"-q", "-F"}, c.mkfsArg...), img)...)
			run(t, "mount", "-o", "loop", img, mnt)
			tree := "/usr/local/go/src/encoding"
			run(t, "cp", "-a", tree, mnt)
			run(t, "sync")
			run(t, "umount", mnt)
			run(t, "e2fsck", "-fn", img)
			run(t, "mount", "-o", "loop,ro", img, mnt)
			run(t, "diff", "-r", tree, filepath.Join(mnt, "encoding"))
			run(t, "umount", mnt)
		})
	}
}
