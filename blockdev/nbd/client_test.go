package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// fakeServer accepts one connection and runs script on it.
func fakeServer(t *testing.T, script func(c net.Conn, br *bufio.Reader) error) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		l.Close()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(testTimeout))
		done <- script(c, bufio.NewReader(c))
	}()
	t.Cleanup(func() {
		l.Close()
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("fake server: %v", err)
		}
	})
	return l.Addr().String()
}

// fakeGreeting sends the server greeting and reads the client flags.
func fakeGreeting(c net.Conn, br *bufio.Reader) (uint32, error) {
	var g [18]byte
	binary.BigEndian.PutUint64(g[0:], magicInit)
	binary.BigEndian.PutUint64(g[8:], magicOpt)
	binary.BigEndian.PutUint16(g[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.Write(g[:]); err != nil {
		return 0, err
	}
	var f [4]byte
	_, err := io.ReadFull(br, f[:])
	return binary.BigEndian.Uint32(f[:]), err
}

func readFakeOption(br *bufio.Reader) (opt uint32, data []byte, err error) {
	var h [optHeaderLen]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	data = make([]byte, binary.BigEndian.Uint32(h[12:]))
	_, err = io.ReadFull(br, data)
	return binary.BigEndian.Uint32(h[8:]), data, err
}

func TestClientFallsBackToExportName(t *testing.T) {
	addr := fakeServer(t, func(c net.Conn, br *bufio.Reader) error {
		cflags, err := fakeGreeting(c, br)
		if err != nil {
			return err
		}
		if cflags != flagCFixedNewstyle|flagCNoZeroes {
			return errors.New("unexpected client flags")
		}
		opt, _, err := readFakeOption(br)
		if err != nil || opt != optGo {
			return errors.New("expected NBD_OPT_GO first")
		}
		var rep [optReplyHeaderLen]byte
		binary.BigEndian.PutUint64(rep[0:], magicOptReply)
		binary.BigEndian.PutUint32(rep[8:], optGo)
		binary.BigEndian.PutUint32(rep[12:], repErrUnsup)
		c.Write(rep[:])
		opt, name, err := readFakeOption(br)
		if err != nil || opt != optExportName || string(name) != "old" {
			return errors.New("expected NBD_OPT_EXPORT_NAME old")
		}
		var x [10]byte
		binary.BigEndian.PutUint64(x[0:], 1<<20)
		binary.BigEndian.PutUint16(x[8:], FlagHasFlags)
		c.Write(x[:])
		// Serve one READ, then expect DISC.
		var h [requestHeaderLen]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return err
		}
		req, err := parseRequest(&h)
		if err != nil || req.Type != CmdRead {
			return errors.New("expected READ")
		}
		var r [replyHeaderLen]byte
		putSimpleReply(&r, 0, req.Cookie)
		c.Write(append(r[:], bytes.Repeat([]byte{7}, int(req.Length))...))
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return err
		}
		if req, err := parseRequest(&h); err != nil || req.Type != CmdDisc {
			return errors.New("expected DISC")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, "old")
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 1<<20 || c.BlockSize() != 512 || c.Info().Flags != FlagHasFlags {
		t.Errorf("info %+v", c.Info())
	}
	buf := make([]byte, 100)
	if _, err := c.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{7}, 100)) {
		t.Fatalf("ReadAt = %v", err)
	}
	// No flush, trim or zero support advertised: handled locally.
	if err := c.Flush(); err != nil {
		t.Error(err)
	}
	if err := c.Trim(0, 512); err != nil {
		t.Error(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestClientProtocolErrors(t *testing.T) {
	addr := fakeServer(t, func(c net.Conn, br *bufio.Reader) error {
		if _, err := fakeGreeting(c, br); err != nil {
			return err
		}
		if _, _, err := readFakeOption(br); err != nil {
			return err
		}
		var rep [optReplyHeaderLen + 12]byte
		binary.BigEndian.PutUint64(rep[0:], magicOptReply)
		binary.BigEndian.PutUint32(rep[8:], optGo)
		binary.BigEndian.PutUint32(rep[12:], repInfo)
		binary.BigEndian.PutUint32(rep[16:], 12)
		binary.BigEndian.PutUint16(rep[20:], infoExport)
		binary.BigEndian.PutUint64(rep[22:], 1<<20)
		binary.BigEndian.PutUint16(rep[30:], FlagHasFlags|FlagSendFlush)
		c.Write(rep[:])
		binary.BigEndian.PutUint32(rep[12:], repAck)
		binary.BigEndian.PutUint32(rep[16:], 0)
		c.Write(rep[:optReplyHeaderLen])
		var h [requestHeaderLen]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return err
		}
		// Reply to a cookie nobody sent.
		var r [replyHeaderLen]byte
		putSimpleReply(&r, 0, 0xdead)
		c.Write(r[:])
		io.Copy(io.Discard, br)
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Flush(); err == nil {
		t.Fatal("Flush succeeded against a server replying to a wrong cookie")
	}
	if err := c.Flush(); err == nil {
		t.Fatal("a broken client still works")
	}
}

func TestDialContextCancel(t *testing.T) {
	// A server that accepts and then says nothing.
	addr := fakeServer(t, func(c net.Conn, br *bufio.Reader) error {
		io.Copy(io.Discard, br)
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, "tcp", addr, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial against a silent server = %v, want DeadlineExceeded", err)
	}
}

// TestClientAgainstNbdkit checks the client against nbdkit, a reference
// server.
func TestClientAgainstNbdkit(t *testing.T) {
	path := requireTool(t, "nbdkit")
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "kit.sock")
	cmd := exec.Command(path, "-f", "--exit-with-parent", "-U", sock, "memory", "4M")
	var log bytes.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("nbdkit log:\n%s", log.String())
		}
	})
	// nbdkit creates the socket file when it binds, a moment before it
	// listens: retry until it accepts.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var c *Client
	for {
		var err error
		if c, err = Dial(ctx, "unix", sock, ""); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("nbdkit did not start: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer c.Close()
	if c.Size() != 4<<20 {
		t.Fatalf("size %d", c.Size())
	}
	data := pattern(1<<20, 5)
	if _, err := c.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt([]byte("odd"), 3); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.Zero(4096, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(1<<20, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := c.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	copy(data[:4096], make([]byte, 4096))
	if !bytes.Equal(got[:1<<20-4096], data[:1<<20-4096]) {
		t.Fatal("data read back from nbdkit differs")
	}
	small := make([]byte, 3)
	if _, err := c.ReadAt(small, 3); err != nil || string(small) != "odd" {
		t.Fatalf("unaligned read %q, %v", small, err)
	}
	if err := c.Do(Request{Type: CmdRead, Offset: 4 << 20, Length: 512}, make([]byte, 512)); err != EINVAL {
		t.Errorf("nbdkit read past end = %v, want EINVAL", err)
	}
}
