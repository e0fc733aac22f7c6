package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ddraid/ddraid/blockdev"
)

func TestClientReadWrite(t *testing.T) {
	mem := blockdev.NewMem(4<<20, 512)
	dev := &countingDevice{Device: mem}
	ts := startServer(t, false, []Export{{Name: "disk", Description: "d", Device: dev}})
	c := dial(t, ts.addr, "disk")

	info := c.Info()
	if info.Name != "disk" || info.Description != "d" || info.Size != 4<<20 || c.Size() != 4<<20 {
		t.Errorf("Info = %+v", info)
	}
	if info.MinBlockSize != 512 || info.PreferredBlockSize != 4096 || info.MaxBlockSize != 32<<20 || c.BlockSize() != 512 {
		t.Errorf("block sizes %+v, BlockSize %d", info, c.BlockSize())
	}

	data := pattern(64<<10, 3)
	if n, err := c.WriteAt(data, 4096); err != nil || n != len(data) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	got := make([]byte, len(data))
	if n, err := c.ReadAt(got, 4096); err != nil || n != len(got) || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt = %d, %v, equal %v", n, err, bytes.Equal(got, data))
	}
	if !bytes.Equal(snapshot(mem)[4096:4096+len(data)], data) {
		t.Fatal("device does not hold the written data")
	}

	// Unaligned IO is served: this client did not promise alignment.
	if _, err := c.WriteAt([]byte("xyz"), 5); err != nil {
		t.Fatalf("unaligned WriteAt: %v", err)
	}
	small := make([]byte, 3)
	if _, err := c.ReadAt(small, 5); err != nil || string(small) != "xyz" {
		t.Fatalf("unaligned ReadAt = %q, %v", small, err)
	}

	// FUA write flushes before replying.
	before := dev.flushes.Load()
	if err := c.Do(Request{Type: CmdWrite, Flags: CmdFlagFUA, Offset: 0, Length: 512}, data[:512]); err != nil {
		t.Fatalf("FUA write: %v", err)
	}
	if dev.flushes.Load() != before+1 {
		t.Errorf("FUA write did not flush")
	}
	if err := c.Flush(); err != nil || dev.flushes.Load() != before+2 {
		t.Errorf("Flush: %v, flushes %d", err, dev.flushes.Load()-before)
	}
	// FUA on zero and trim flushes too.
	if err := c.Do(Request{Type: CmdWriteZeroes, Flags: CmdFlagFUA | CmdFlagNoHole, Offset: 0, Length: 512}, nil); err != nil {
		t.Fatalf("FUA zero: %v", err)
	}
	if err := c.Do(Request{Type: CmdTrim, Flags: CmdFlagFUA, Offset: 512, Length: 512}, nil); err != nil {
		t.Fatalf("FUA trim: %v", err)
	}
	if dev.flushes.Load() != before+4 {
		t.Errorf("FUA zero/trim flushed %d times, want 2", dev.flushes.Load()-before-2)
	}

	// Zero and Trim (memory trims to zeroes).
	if err := c.Zero(4096, 8192); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(4096+8192, 8192); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshot(mem)[4096:4096+16384], make([]byte, 16384)) {
		t.Fatal("zero/trim left data behind")
	}
	if !bytes.Equal(snapshot(mem)[4096+16384:4096+len(data)], data[16384:]) {
		t.Fatal("zero/trim touched data outside its range")
	}
	if err := c.Do(Request{Type: CmdCache, Offset: 0, Length: 1 << 20}, nil); err != nil {
		t.Fatalf("CACHE: %v", err)
	}
}

func TestRequestErrors(t *testing.T) {
	const size = 1 << 20
	e, mem := memExport("disk", size, 512)
	copy(mem.Bytes(), "still here")
	ts := startServer(t, false, []Export{e}, withMaxPayload(128<<10))
	c := dial(t, ts.addr, "disk")

	tests := []struct {
		name string
		req  Request
		want error
	}{
		{"read past end", Request{Type: CmdRead, Offset: size - 512, Length: 1024}, EINVAL},
		{"read at end+1", Request{Type: CmdRead, Offset: size + 512, Length: 512}, EINVAL},
		{"read offset overflow", Request{Type: CmdRead, Offset: 1<<64 - 512, Length: 1024}, EINVAL},
		{"write past end", Request{Type: CmdWrite, Offset: size, Length: 512}, ENOSPC},
		{"trim past end", Request{Type: CmdTrim, Offset: size - 512, Length: 1024}, EINVAL},
		{"zero past end", Request{Type: CmdWriteZeroes, Offset: size - 512, Length: 1024}, ENOSPC},
		{"cache past end", Request{Type: CmdCache, Offset: size, Length: 512}, EINVAL},
		{"read over max payload", Request{Type: CmdRead, Length: 128<<10 + 512}, EINVAL},
		{"unknown command", Request{Type: 99}, EINVAL},
		{"block status", Request{Type: CmdBlockStatus, Length: 512}, EINVAL},
		{"resize", Request{Type: 8}, EINVAL},
		{"read with NO_HOLE", Request{Type: CmdRead, Flags: CmdFlagNoHole, Length: 512}, EINVAL},
		{"read with DF", Request{Type: CmdRead, Flags: CmdFlagDF, Length: 512}, EINVAL},
		{"read with unknown flag", Request{Type: CmdRead, Flags: 1 << 9, Length: 512}, EINVAL},
		{"trim with NO_HOLE", Request{Type: CmdTrim, Flags: CmdFlagNoHole, Length: 512}, EINVAL},
		{"zero with FAST_ZERO", Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Offset: 4096, Length: 512}, nil},
		{"zero with FAST_ZERO|NO_HOLE", Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero | CmdFlagNoHole, Offset: 4096, Length: 512}, nil},
		{"block status with REQ_ONE", Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Length: 512}, EINVAL},
		{"write with DF", Request{Type: CmdWrite, Flags: CmdFlagDF, Offset: 4096, Length: 512}, EINVAL},
		{"zero with REQ_ONE", Request{Type: CmdWriteZeroes, Flags: CmdFlagReqOne, Length: 512}, EINVAL},
		{"flush with length", Request{Type: CmdFlush, Length: 512}, EINVAL},
		{"flush with offset", Request{Type: CmdFlush, Offset: 512}, EINVAL},
		{"cache with NO_HOLE", Request{Type: CmdCache, Flags: CmdFlagNoHole, Length: 512}, EINVAL},
		{"read with FUA", Request{Type: CmdRead, Flags: CmdFlagFUA, Length: 512}, nil},
		{"flush with FUA", Request{Type: CmdFlush, Flags: CmdFlagFUA}, nil},
		{"cache with FUA", Request{Type: CmdCache, Flags: CmdFlagFUA, Length: 512}, nil},
		{"zero-length read", Request{Type: CmdRead, Offset: 4096}, nil},
		{"zero-length read past end", Request{Type: CmdRead, Offset: size * 2}, nil},
		{"zero-length write", Request{Type: CmdWrite, Offset: 4096}, nil},
		{"zero-length trim", Request{Type: CmdTrim, Offset: 4096}, nil},
		{"zero-length zero", Request{Type: CmdWriteZeroes, Offset: size}, nil},
		{"zero-length cache", Request{Type: CmdCache}, nil},
		{"read ending at end", Request{Type: CmdRead, Offset: size - 512, Length: 512}, nil},
		{"read of max payload", Request{Type: CmdRead, Length: 128 << 10}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var data []byte
			if tc.req.Type == CmdRead || tc.req.Type == CmdWrite {
				data = make([]byte, tc.req.Length)
			}
			err := c.Do(tc.req, data)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Do(%+v) = %v, want %v", tc.req, err, tc.want)
			}
			// The connection stays usable.
			buf := make([]byte, 10)
			if _, err := c.ReadAt(buf, 0); err != nil || string(buf) != "still here" {
				t.Fatalf("ReadAt afterwards = %q, %v", buf, err)
			}
		})
	}
}

func TestClientLocalChecks(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ro, _ := memExport("ro", 1<<20, 512)
	ro.ReadOnly = true
	ts := startServer(t, false, []Export{e, ro})
	c := dial(t, ts.addr, "disk")
	if _, err := c.ReadAt(make([]byte, 512), 1<<20); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("ReadAt past end = %v", err)
	}
	if _, err := c.WriteAt(make([]byte, 512), -1); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("WriteAt at -1 = %v", err)
	}
	if err := c.Zero(1<<20-512, 1024); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("Zero past end = %v", err)
	}
	if err := c.Do(Request{Type: CmdDisc}, nil); err == nil {
		t.Error("Do(DISC) succeeded")
	}
	if err := c.Do(Request{Type: CmdRead, Length: 10}, make([]byte, 5)); err == nil {
		t.Error("Do with a short buffer succeeded")
	}
	r := dial(t, ts.addr, "ro")
	if _, err := r.WriteAt(make([]byte, 512), 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Errorf("WriteAt on read-only = %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := Dial(ctx, "tcp", ts.addr, "nope"); !errors.Is(err, ErrUnknownExport) {
		t.Errorf("Dial unknown export = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrClientClosed) {
		t.Errorf("ReadAt after Close = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestReadOnlyExport(t *testing.T) {
	e, mem := memExport("ro", 1<<20, 512)
	e.ReadOnly = true
	copy(mem.Bytes(), "data")
	ts := startServer(t, false, []Export{e})
	c := dial(t, ts.addr, "ro")
	if c.Info().Flags&FlagReadOnly == 0 {
		t.Fatal("READ_ONLY not advertised")
	}
	for _, req := range []Request{
		{Type: CmdWrite, Length: 512},
		{Type: CmdWrite, Flags: CmdFlagFUA, Length: 512},
		{Type: CmdTrim, Length: 512},
		{Type: CmdWriteZeroes, Length: 512},
		{Type: CmdWrite, Offset: 1 << 30, Length: 512},
	} {
		var data []byte
		if req.Type == CmdWrite {
			data = make([]byte, req.Length)
		}
		if err := c.Do(req, data); err != EPERM {
			t.Errorf("%s on read-only = %v, want EPERM", req.Type, err)
		}
		if !errors.Is(EPERM, blockdev.ErrReadOnly) {
			t.Errorf("EPERM does not match ErrReadOnly")
		}
	}
	buf := make([]byte, 4)
	if _, err := c.ReadAt(buf, 0); err != nil || string(buf) != "data" {
		t.Fatalf("ReadAt = %q, %v", buf, err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("Flush on read-only: %v", err)
	}
	if !bytes.Equal(snapshot(mem)[:4], []byte("data")) {
		t.Fatal("read-only export changed")
	}
}

func TestDeviceErrorMapping(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Errno
	}{
		{"out of range", fmt.Errorf("wrapped: %w", blockdev.ErrOutOfRange), EINVAL},
		{"read-only", fmt.Errorf("wrapped: %w", blockdev.ErrReadOnly), EPERM},
		{"enospc", fmt.Errorf("wrapped: %w", syscall.ENOSPC), ENOSPC},
		{"edquot", syscall.EDQUOT, ENOSPC},
		{"other", errors.New("disk on fire"), EIO},
		{"closed", blockdev.ErrClosed, EIO},
	}
	var exps []Export
	for _, tc := range tests {
		exps = append(exps, Export{Name: tc.name, Device: errDevice{Device: blockdev.NewMem(1<<20, 512), err: tc.err}})
	}
	ts := startServer(t, false, exps)
	ts.flushMayFail = true
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts.addr, tc.name)
			for _, req := range []Request{
				{Type: CmdRead, Length: 512},
				{Type: CmdWrite, Length: 512},
				{Type: CmdWrite, Flags: CmdFlagFUA, Length: 512},
				{Type: CmdFlush},
				{Type: CmdTrim, Length: 512},
				{Type: CmdWriteZeroes, Length: 512},
			} {
				var data []byte
				if req.Type == CmdRead || req.Type == CmdWrite {
					data = make([]byte, req.Length)
				}
				if err := c.Do(req, data); err != tc.want {
					t.Errorf("%s = %v, want %v", req.Type, err, tc.want)
				}
			}
		})
	}
	if !errors.Is(ENOSPC, syscall.ENOSPC) || errors.Is(EIO, syscall.ENOSPC) {
		t.Error("Errno.Is does not match syscall errnos")
	}
}

func TestOutOfOrderReplies(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	copy(mem.Bytes()[8192:], "second")
	copy(mem.Bytes(), "first")
	g := &selectiveGate{Device: mem, blockOff: 0, entered: make(chan struct{}, 1), release: make(chan struct{})}
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}})
	c := dial(t, ts.addr, "disk")

	slow := make(chan error, 1)
	slowBuf := make([]byte, 5)
	go func() {
		_, err := c.ReadAt(slowBuf, 0)
		slow <- err
	}()
	select {
	case <-g.entered:
	case <-time.After(testTimeout):
		t.Fatal("slow read never reached the device")
	}
	// A later request completes while the first is still blocked.
	fast := make([]byte, 6)
	if _, err := c.ReadAt(fast, 8192); err != nil || string(fast) != "second" {
		t.Fatalf("fast read = %q, %v", fast, err)
	}
	select {
	case err := <-slow:
		t.Fatalf("slow read finished before release: %v", err)
	default:
	}
	close(g.release)
	if err := <-slow; err != nil || string(slowBuf) != "first" {
		t.Fatalf("slow read = %q, %v", slowBuf, err)
	}
}

// delayDevice sleeps in some calls so that requests complete out of order.
type delayDevice struct {
	blockdev.Device
	mu  sync.Mutex
	rng *rand.Rand
}

func (d *delayDevice) pause() {
	d.mu.Lock()
	n := d.rng.IntN(4)
	d.mu.Unlock()
	if n == 0 {
		time.Sleep(200 * time.Microsecond)
	}
}

func (d *delayDevice) ReadAt(p []byte, off int64) (int, error) {
	d.pause()
	return d.Device.ReadAt(p, off)
}

func (d *delayDevice) WriteAt(p []byte, off int64) (int, error) {
	d.pause()
	return d.Device.WriteAt(p, off)
}

func TestManyConcurrentRequests(t *testing.T) {
	const (
		workers = 64
		rounds  = 40
		region  = 8192
	)
	mem := blockdev.NewMem(workers*region, 512)
	g := newGateDevice(&delayDevice{Device: mem, rng: rand.New(rand.NewPCG(1, 2))})
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}}, withMaxInFlight(16))
	clients := []*Client{dial(t, ts.addr, "disk"), dial(t, ts.addr, "disk")}

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[w%2]
			base := int64(w * region)
			for i := 0; i < rounds; i++ {
				n := 512 * (1 + (w+i)%(region/512))
				data := pattern(n, byte(w*31+i))
				if _, err := c.WriteAt(data, base); err != nil {
					errs <- fmt.Errorf("worker %d write: %w", w, err)
					return
				}
				got := make([]byte, n)
				if _, err := clients[(w+i)%2].ReadAt(got, base); err != nil {
					errs <- fmt.Errorf("worker %d read: %w", w, err)
					return
				}
				if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("worker %d round %d: read back differs", w, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := g.maxSeen.Load(); m < 2 || m > 2*16 {
		t.Errorf("device saw at most %d concurrent calls, want 2..32", m)
	}
}

func TestMaxInFlightBound(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	g := newGateDevice(mem)
	g.armed.Store(true)
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}}, withMaxInFlight(4))
	c := dial(t, ts.addr, "disk")
	const n = 10
	done := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, err := c.ReadAt(make([]byte, 512), int64(i)*512)
			done <- err
		}()
	}
	for i := 0; i < 4; i++ {
		g.awaitEntered(t)
	}
	if a := g.active.Load(); a != 4 {
		t.Errorf("%d device calls active, want 4", a)
	}
	g.armed.Store(false)
	close(g.release)
	for i := 0; i < n; i++ {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if m := g.maxSeen.Load(); m > 4 {
		t.Errorf("%d concurrent device calls, MaxInFlight is 4", m)
	}
}

func TestOversizeWriteClosesOnlyThatConnection(t *testing.T) {
	e, mem := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e}, withMaxPayload(64<<10))
	good := dial(t, ts.addr, "disk")
	if good.Info().MaxBlockSize != 64<<10 {
		t.Fatalf("max block size %d", good.Info().MaxBlockSize)
	}

	r := rawGo(t, ts.addr, "disk")
	r.request(Request{Type: CmdWrite, Cookie: 1, Length: 64<<10 + 512}, bytes.Repeat([]byte{1}, 4096))
	r.expectEOF()
	if !ts.log.contains("WRITE payload exceeds the maximum") {
		t.Error("oversize write not logged")
	}

	// The other connection still works, and the client splits long IO.
	data := pattern(200<<10, 9)
	if _, err := good.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := good.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt: %v, equal %v", err, bytes.Equal(got, data))
	}
	if !bytes.Equal(snapshot(mem)[:len(data)], data) {
		t.Fatal("device content differs")
	}
}

func TestGarbageAndBrokenClients(t *testing.T) {
	e, mem := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e})
	good := dial(t, ts.addr, "disk")

	t.Run("garbage request", func(t *testing.T) {
		r := rawGo(t, ts.addr, "disk")
		r.write(bytes.Repeat([]byte("garbage!"), 8))
		r.expectEOF()
	})
	t.Run("garbage after a good request", func(t *testing.T) {
		r := rawGo(t, ts.addr, "disk")
		r.request(Request{Type: CmdFlush, Cookie: 9}, nil)
		r.write([]byte("\x25\x60\x95\x14 almost the magic, not quite"))
		if errno, cookie, _ := r.simpleReply(0); errno != 0 || cookie != 9 {
			t.Fatalf("FLUSH reply errno %v cookie %d", errno, cookie)
		}
		r.expectEOF()
	})
	t.Run("garbage handshake", func(t *testing.T) {
		r := rawDial(t, ts.addr)
		r.read(18)
		r.write(bytes.Repeat([]byte{0xff}, 100))
		r.expectEOF()
	})
	t.Run("disconnect mid payload", func(t *testing.T) {
		r := rawGo(t, ts.addr, "disk")
		r.request(Request{Type: CmdWrite, Cookie: 2, Offset: 0, Length: 64 << 10}, bytes.Repeat([]byte{0xee}, 1000))
		r.c.Close()
	})
	t.Run("disconnect mid header", func(t *testing.T) {
		r := rawGo(t, ts.addr, "disk")
		var h [requestHeaderLen]byte
		(&Request{Type: CmdRead, Length: 512}).encode(&h)
		r.write(h[:10])
		r.c.Close()
	})
	t.Run("disconnect with reads in flight", func(t *testing.T) {
		r := rawGo(t, ts.addr, "disk")
		for i := 0; i < 50; i++ {
			r.request(Request{Type: CmdRead, Cookie: uint64(i), Length: 64 << 10}, nil)
		}
		r.c.Close()
	})

	if _, err := good.WriteAt([]byte("fine"), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := good.ReadAt(buf, 0); err != nil || string(buf) != "fine" {
		t.Fatalf("good client ReadAt = %q, %v", buf, err)
	}
	if bytes.Contains(snapshot(mem), []byte{0xee}) {
		t.Fatal("a partial WRITE payload reached the device")
	}
}

func TestPipelinedRawRequests(t *testing.T) {
	e, mem := memExport("disk", 1<<20, 512)
	copy(mem.Bytes(), pattern(1<<20, 1))
	ts := startServer(t, false, []Export{e})
	r := rawGo(t, ts.addr, "disk")
	// Many requests in one write; cookies need not be sequential or unique
	// across time.
	var batch []byte
	const n = 200
	for i := 0; i < n; i++ {
		var h [requestHeaderLen]byte
		(&Request{Type: CmdRead, Cookie: uint64(i) * 1000003, Offset: uint64(i) * 512, Length: 512}).encode(&h)
		batch = append(batch, h[:]...)
	}
	r.write(batch)
	want := snapshot(mem)
	seen := map[uint64]bool{}
	for i := 0; i < n; i++ {
		errno, cookie, data := r.simpleReply(512)
		if errno != 0 {
			t.Fatalf("errno %v", errno)
		}
		idx := cookie / 1000003
		if cookie%1000003 != 0 || idx >= n || seen[cookie] {
			t.Fatalf("unexpected cookie %d", cookie)
		}
		seen[cookie] = true
		if !bytes.Equal(data, want[idx*512:idx*512+512]) {
			t.Fatalf("data for cookie %d differs", cookie)
		}
	}
	// DISC: the server closes without a reply.
	r.request(Request{Type: CmdDisc}, nil)
	r.expectEOF()
}

func TestDiscFinishesInFlight(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	copy(mem.Bytes(), "pending")
	g := &selectiveGate{Device: mem, blockOff: 0, entered: make(chan struct{}, 1), release: make(chan struct{})}
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}})
	r := rawGo(t, ts.addr, "disk")
	r.request(Request{Type: CmdRead, Cookie: 42, Length: 7}, nil)
	<-g.entered
	r.request(Request{Type: CmdDisc}, nil)
	close(g.release)
	errno, cookie, data := r.simpleReply(7)
	if errno != 0 || cookie != 42 || string(data) != "pending" {
		t.Fatalf("reply after DISC: errno %v cookie %d data %q", errno, cookie, data)
	}
	r.expectEOF()
}

func TestClientCloseWaitsForInFlight(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	g := &selectiveGate{Device: mem, blockOff: 4096, entered: make(chan struct{}, 1), release: make(chan struct{})}
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}})
	c := dial(t, ts.addr, "disk")
	res := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 512), 4096)
		res <- err
	}()
	<-g.entered
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	close(g.release)
	if err := <-res; err != nil {
		t.Fatalf("in-flight read across Close: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

func TestShutdownFinishesInFlight(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	g := newGateDevice(mem)
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}})
	c := dial(t, ts.addr, "disk")
	idle := dial(t, ts.addr, "disk")
	if err := idle.Flush(); err != nil {
		t.Fatal(err)
	}

	g.armed.Store(true)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.WriteAt([]byte("survives shutdown"), 0)
		wrote <- err
	}()
	g.awaitEntered(t)
	flushesBefore := g.flushes.Load()

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		shut <- ts.Shutdown(ctx)
	}()
	// Once Shutdown has begun, the idle connection stops serving while the
	// write still waits.
	for !ts.isShutdown() {
		runtime.Gosched()
	}
	// A request whose header raced with the shutdown may still be served;
	// the one after it cannot be.
	if err := idle.Flush(); err == nil {
		if err := idle.Flush(); err == nil {
			t.Error("idle connection still serving after Shutdown began")
		}
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	g.armed.Store(false)
	close(g.release)
	if err := <-wrote; err != nil {
		t.Fatalf("in-flight write: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if string(snapshot(mem)[:17]) != "survives shutdown" {
		t.Fatal("in-flight write lost")
	}
	if g.flushes.Load() <= flushesBefore {
		t.Error("Shutdown did not flush the device")
	}
	if _, err := c.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("connection still serving after Shutdown")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := Dial(ctx, "tcp", ts.addr, "disk"); err == nil {
		t.Error("Dial succeeded after Shutdown")
	}
}

func TestShutdownContextExpires(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512)
	g := newGateDevice(mem)
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}})
	c := dial(t, ts.addr, "disk")
	g.armed.Store(true)
	res := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 512), 0)
		res <- err
	}()
	g.awaitEntered(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if err := <-res; err == nil {
		t.Error("request succeeded on a force-closed connection")
	}
	g.armed.Store(false)
	close(g.release)
}

func TestMaxConnections(t *testing.T) {
	e, _ := memExport("disk", 1<<20, 512)
	ts := startServer(t, false, []Export{e}, withMaxConns(1))
	c := dial(t, ts.addr, "disk")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if extra, err := Dial(ctx, "tcp", ts.addr, "disk"); err == nil {
		extra.Close()
		t.Fatal("second connection accepted with MaxConnections 1")
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("first connection broken: %v", err)
	}
	if !ts.log.contains("too many connections") {
		t.Error("refused connection not logged")
	}
}

func TestUnixSocketAndListen(t *testing.T) {
	e, mem := memExport("disk", 1<<20, 512)
	ts := startServer(t, true, []Export{e})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, "unix", ts.sock, "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteAt([]byte("unix"), 0); err != nil {
		t.Fatal(err)
	}
	if string(snapshot(mem)[:4]) != "unix" {
		t.Fatal("write over unix socket lost")
	}
	// A live socket is refused.
	if l, err := Listen("unix:" + ts.sock); err == nil {
		l.Close()
		t.Fatal("Listen took over a live socket")
	}
}

func TestListenStaleSocket(t *testing.T) {
	dir := shortTempDir(t)
	path := dir + "/s.sock"
	l, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	// Leave the socket file behind, as a crashed server would.
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen("unix:" + path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l2.Close()

	if _, err := Listen("unix:" + dir); err == nil {
		t.Error("Listen on a directory succeeded")
	}
	if _, err := Listen("unix:"); err == nil {
		t.Error("Listen on an empty path succeeded")
	}
	if _, err := Listen("256.0.0.1:0"); err == nil {
		t.Error("Listen on a bad TCP address succeeded")
	}
}

func TestServeAfterShutdown(t *testing.T) {
	s, err := NewServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v", err)
	}
}

func TestConnectionBufferBudget(t *testing.T) {
	const payload = 1 << 20
	mem := blockdev.NewMem(8<<20, 512)
	g := newGateDevice(mem)
	g.armed.Store(true)
	ts := startServer(t, false, []Export{{Name: "disk", Device: g}}, withMaxPayload(payload))
	c := dial(t, ts.addr, "disk")
	// 128 READs of 1 MiB would hold 128 MiB; the budget is 64 MiB.
	const n = 128
	budget := minConnBudget / payload
	done := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			done <- c.Do(Request{Type: CmdRead, Offset: uint64(i%8) * payload, Length: payload}, make([]byte, payload))
		}()
	}
	for i := 0; i < budget; i++ {
		g.awaitEntered(t)
	}
	// Correct code never lets another READ reach the device while the
	// budget is exhausted; give a broken one a moment to show itself.
	select {
	case s := <-g.entered:
		t.Fatalf("%s reached the device beyond the %d-buffer budget", s, budget)
	case <-time.After(100 * time.Millisecond):
	}
	g.armed.Store(false)
	close(g.release)
	for i := 0; i < n; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
