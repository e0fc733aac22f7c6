package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

// These tests attack the server the way a broken or hostile client would
// and check that it stays up, that memory stays bounded, that other
// clients are unaffected, and that each offender is logged once.

// heapInUse returns the bytes of live heap after a GC.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// goodClientWorks writes and reads back through c.
func goodClientWorks(t *testing.T, c *Client, seed byte) {
	t.Helper()
	data := pattern(64<<10, seed)
	if _, err := c.WriteAt(data, 128<<10); err != nil {
		t.Fatalf("good client write: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := c.ReadAt(got, 128<<10); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("good client read: %v (equal %v)", err, bytes.Equal(got, data))
	}
}

// waitNoConns waits until the server has no connection left.
func waitNoConns(t *testing.T, s *Server, keep int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n <= keep {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRandomBytesClients(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e})
	good := dial(t, ts.addr, "disk")
	rng := rand.New(rand.NewPCG(3, 4))

	var wg sync.WaitGroup
	for i := 0; i < 60; i++ {
		junk := make([]byte, 1+rng.IntN(4096))
		for j := range junk {
			junk[j] = byte(rng.Uint32())
		}
		stage := i % 3
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r *rawConn
			switch stage {
			case 0: // garbage instead of client flags
				r = rawDial(t, ts.addr)
				r.read(18)
			case 1: // garbage after the greeting
				r = rawDial(t, ts.addr)
				r.greet(flagCFixedNewstyle | flagCNoZeroes)
			case 2: // garbage in transmission
				r = rawGo(t, ts.addr, "disk")
			}
			r.c.Write(junk)
			// The server answers or closes; it must not hang the client.
			r.c.SetReadDeadline(time.Now().Add(testTimeout))
			io.Copy(io.Discard, r.c)
		}()
	}
	goodClientWorks(t, good, 1)
	wg.Wait()
	goodClientWorks(t, good, 2)
	waitNoConns(t, ts.Server, 1)
}

func TestDisconnectMidPayloadFreesBuffers(t *testing.T) {
	e, mem := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e}, withMaxPayload(32<<20))
	good := dial(t, ts.addr, "disk")
	before := heapInUse()
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rawGo(t, ts.addr, "disk")
			// Announce a 1 MiB write at the export's start, send a third.
			r.request(Request{Type: CmdWrite, Cookie: 1, Length: 1 << 20}, bytes.Repeat([]byte{0xee}, 300<<10))
			r.c.Close()
		}()
	}
	wg.Wait()
	waitNoConns(t, ts.Server, 1)
	goodClientWorks(t, good, 3) // writes [128K, 192K)
	if img := snapshot(mem); bytes.Contains(img[:128<<10], []byte{0xee}) || bytes.Contains(img[192<<10:], []byte{0xee}) {
		t.Fatal("a partial WRITE payload reached the device")
	}
	// The good client's last buffer goes back just after its reply.
	for deadline := time.Now().Add(testTimeout); ts.budget.available() != ts.cfg.MaxPayloadMemory; {
		if time.Now().After(deadline) {
			t.Fatalf("server payload budget %d after the clients left, want %d", ts.budget.available(), ts.cfg.MaxPayloadMemory)
		}
		time.Sleep(time.Millisecond)
	}
	if after := heapInUse(); after > before+64<<20 {
		t.Fatalf("heap grew from %d to %d bytes", before, after)
	}
	if !ts.log.contains("connection broke mid-request") {
		t.Error("broken clients were not logged")
	}
}

func TestHugeRequestsAnnounced(t *testing.T) {
	const size = 1 << 20
	e, _ := memExport("disk", size, 512)
	ts := startServer(t, false, []Export{e})
	good := dial(t, ts.addr, "disk")
	before := heapInUse()

	// A 4 GiB WRITE: closed at once, nothing allocated for it.
	r := rawGo(t, ts.addr, "disk")
	r.request(Request{Type: CmdWrite, Cookie: 1, Length: 0xffffffff}, []byte("only a little"))
	r.expectEOF()
	if after := heapInUse(); after > before+16<<20 {
		t.Fatalf("heap grew from %d to %d bytes for an announced 4 GiB write", before, after)
	}
	if !ts.log.contains("WRITE payload exceeds the maximum") {
		t.Error("the 4 GiB write was not logged")
	}

	// Requests without payload may announce anything: they are refused
	// with the right error and the connection goes on.
	r = structuredGo(t, ts.addr, "disk", true)
	for i, tc := range []struct {
		req  Request
		want Errno
	}{
		{Request{Type: CmdRead, Length: 0xffffffff}, EINVAL},
		{Request{Type: CmdWriteZeroes, Length: 0xffffffff}, ENOSPC},
		{Request{Type: CmdTrim, Length: 0xffffffff}, EINVAL},
		{Request{Type: CmdCache, Length: 0xffffffff}, EINVAL},
		{Request{Type: CmdBlockStatus, Length: 0xffffffff}, EINVAL},
		{Request{Type: CmdRead, Offset: 1<<64 - 1, Length: 0xffffffff}, EINVAL},
	} {
		tc.req.Cookie = uint64(10 + i)
		r.request(tc.req, nil)
		if errno, _ := chunkErrno(r.readChunk()); errno != tc.want {
			t.Errorf("%v of 4 GiB: errno %v, want %v", tc.req.Type, errno, tc.want)
		}
	}
	// BLOCK_STATUS within the export may ask for far more than it is.
	r.request(Request{Type: CmdBlockStatus, Cookie: 20, Length: size}, nil)
	if es := statusDescs(t, r.readChunk()); len(es) == 0 {
		t.Error("no descriptors")
	}
	goodClientWorks(t, good, 4)
}

func TestThousandConnections(t *testing.T) {
	const n = 1000
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e}, withMaxConns(n+1))
	good := dial(t, ts.addr, "disk")
	before := heapInUse()

	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", ts.addr, testTimeout)
			if err != nil {
				errs <- err
				return
			}
			c.SetDeadline(time.Now().Add(2 * testTimeout))
			conns[i] = c
			// Handshake, GO, one READ: a live, idle client.
			var greet [18]byte
			if _, err := io.ReadFull(c, greet[:]); err != nil {
				errs <- err
				return
			}
			var msg []byte
			msg = binary.BigEndian.AppendUint32(msg, flagCFixedNewstyle|flagCNoZeroes)
			msg = append(msg, optBytes(optGo, goData("disk"))...)
			var h [requestHeaderLen]byte
			(&Request{Type: CmdRead, Cookie: uint64(i), Length: 512}).encode(&h)
			msg = append(msg, h[:]...)
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			// Skip the option replies: read until the READ reply (16 +
			// 512 bytes) has arrived after the ACK.
			if err := skipToReadReply(c, uint64(i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("one of %d clients failed: %v", n, err)
	}
	ts.mu.Lock()
	open := len(ts.conns)
	ts.mu.Unlock()
	if open != n+1 {
		t.Fatalf("%d connections open, want %d", open, n+1)
	}
	goodClientWorks(t, good, 5)
	if grown := heapInUse() - before; grown > 256<<20 {
		t.Fatalf("%d idle connections hold %d MiB of heap", n, grown>>20)
	}
	for _, c := range conns {
		c.Close()
	}
	waitNoConns(t, ts.Server, 1)
	goodClientWorks(t, good, 6)
}

// skipToReadReply reads option replies up to GO's ACK, then the simple
// reply to a 512-byte READ with the given cookie.
func skipToReadReply(c net.Conn, cookie uint64) error {
	var h [optReplyHeaderLen]byte
	for {
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(h[16:])
		if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(h[12:]) == repAck {
			break
		}
	}
	var rep [replyHeaderLen + 512]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(rep[4:]) != 0 || binary.BigEndian.Uint64(rep[8:]) != cookie {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func TestConnectionLimitFloodIsRateLimited(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e}, withMaxConns(10))
	good := dial(t, ts.addr, "disk")
	var held []*rawConn
	for i := 0; i < 9; i++ {
		held = append(held, rawGo(t, ts.addr, "disk"))
	}
	// 500 more are refused at accept.
	var wg sync.WaitGroup
	for i := 0; i < 500; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", ts.addr, testTimeout)
			if err != nil {
				return
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(testTimeout))
			if n, _ := io.Copy(io.Discard, c); n != 0 {
				t.Errorf("a refused connection got %d bytes", n)
			}
		}()
	}
	wg.Wait()
	goodClientWorks(t, good, 7)
	for _, r := range held {
		r.request(Request{Type: CmdFlush, Cookie: 1}, nil)
		if errno, _, _ := r.simpleReply(0); errno != 0 {
			t.Fatalf("held connection: %v", errno)
		}
	}
	if lines := strings.Count(ts.log.String(), "too many connections"); lines < 1 || lines > logBurst+logRate*int(testTimeout/time.Second) {
		t.Errorf("%d log lines for 500 refused connections", lines)
	}
}

func TestOneLogLinePerMisbehavingClient(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	lb := &logBuffer{}
	// Info level: the per-request Debug lines stay out.
	s, err := NewServer(Config{Logger: newTestLogger(lb, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(e); err != nil {
		t.Fatal(err)
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	}()
	for i := 0; i < 3; i++ {
		r := rawGo(t, l.Addr().String(), "disk")
		for j := 0; j < 20; j++ {
			r.request(Request{Type: CmdRead, Cookie: uint64(j), Offset: 1 << 30, Length: 512}, nil)
			if errno, _, _ := r.simpleReply(0); errno != EINVAL {
				t.Fatalf("errno %v", errno)
			}
		}
		r.request(Request{Type: CmdDisc}, nil)
		r.expectEOF()
	}
	if n := strings.Count(lb.String(), "invalid request refused"); n != 3 {
		t.Fatalf("%d log lines for 3 misbehaving clients, want 3:\n%s", n, lb.String())
	}
}

func TestLogLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLogLimiter(func() time.Time { return now })
	for i := 0; i < logBurst; i++ {
		if ok, dropped := l.allow(); !ok || dropped != 0 {
			t.Fatalf("line %d of the burst: %v, %d", i, ok, dropped)
		}
	}
	for i := 0; i < 5; i++ {
		if ok, _ := l.allow(); ok {
			t.Fatal("line beyond the burst allowed")
		}
	}
	now = now.Add(time.Second / logRate)
	if ok, dropped := l.allow(); !ok || dropped != 5 {
		t.Fatalf("after refill: %v, dropped %d, want true, 5", ok, dropped)
	}
	if ok, _ := l.allow(); ok {
		t.Fatal("more than the refill allowed")
	}
	now = now.Add(time.Hour)
	for i := 0; i < logBurst; i++ {
		if ok, _ := l.allow(); !ok {
			t.Fatalf("after an hour, line %d refused: the bucket must refill to the burst", i)
		}
	}
	if ok, _ := l.allow(); ok {
		t.Fatal("bucket holds more than the burst")
	}
}

func TestServerPayloadBudget(t *testing.T) {
	const payload = 1 << 20
	mem := blockdev.NewMem(8<<20, 512)
	g := newGateDevice(mem)
	g.armed.Store(true)
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}}, withMaxPayload(payload),
		func(c *Config) { c.MaxPayloadMemory = 4 * payload })
	// Two connections, eight 1 MiB READs each: only four buffers exist.
	done := make(chan error, 16)
	for k := 0; k < 2; k++ {
		c := dial(t, ts.addr, "disk")
		for i := 0; i < 8; i++ {
			go func() {
				done <- c.Do(Request{Type: CmdRead, Offset: uint64(i) * payload, Length: payload}, make([]byte, payload))
			}()
		}
	}
	for i := 0; i < 4; i++ {
		g.awaitEntered(t)
	}
	select {
	case s := <-g.entered:
		t.Fatalf("%s reached the device beyond the server's 4-buffer budget", s)
	case <-time.After(100 * time.Millisecond):
	}
	g.armed.Store(false)
	close(g.release)
	for i := 0; i < 16; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
