// Command clusterprobe is the NBD client and status watcher of
// bench/cluster.sh (make bench-cluster). It talks to a served array's NBD
// front end with ddraid's own client (blockdev/nbd) and to an agent's
// control socket, and prints what it measured as one JSON object on
// stdout (and, for fill, a "marked" line first).
//
//	clusterprobe write -sock S -off O -len L [-bs 4096] [-stride BS] [-interval 2ms] [-out FILE]
//	    One write at a time (queue depth 1), a new one every interval (at
//	    once if the last took longer), cycling over [O, O+L) in steps of
//	    stride (then the next block, and so on); until SIGTERM
//	    or SIGINT. FILE gets one completion time (Unix ns) per line. The
//	    summary has the longest gap between two completions.
//	clusterprobe fill -sock S -off O -len L [-bs 1M] [-qd 8] [-region 4M]
//	    Writes [O, O+L) once, then one 4 KiB block in every region of it (so
//	    every region carries a fresh write-intent mark whatever the clear
//	    delay), prints "marked" and the summary, then goes on touching the
//	    regions round-robin until the connection fails or a signal comes.
//	clusterprobe bulk -sock S -off O -len L [-bs 64k] [-qd 8] [-start-at NS]
//	    Connects, waits until Unix time NS, writes [O, O+L) with qd writes
//	    in flight and prints when it started and ended.
//	clusterprobe watch -control SOCK [-array data] [-timeout 5m]
//	    Reads the agent's served-array status (GET /v1/arrays) every 10 ms:
//	    prints "ready" with the current count of regions resynced for
//	    takeovers, then waits for a takeover to show and to end with more
//	    regions resynced, and prints when each happened.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ddraid/ddraid/blockdev/nbd"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: clusterprobe write|fill|bulk|watch [flags] (see the package comment)")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "write":
		err = write(os.Args[2:])
	case "fill":
		err = fill(os.Args[2:])
	case "bulk":
		err = bulk(os.Args[2:])
	case "watch":
		err = watch(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (want write, fill, bulk or watch)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterprobe:", err)
		os.Exit(1)
	}
}

// size parses 4096, 64k, 4M, 1G (powers of 1024).
type size int64

func (s *size) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *size) Set(v string) error {
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "k"), strings.HasSuffix(v, "K"):
		mult = 1 << 10
	case strings.HasSuffix(v, "M"):
		mult = 1 << 20
	case strings.HasSuffix(v, "G"):
		mult = 1 << 30
	}
	n, err := strconv.ParseInt(strings.TrimRight(v, "kKMG"), 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("bad size %q", v)
	}
	*s = size(n * mult)
	return nil
}

// target are the flags every NBD mode shares.
type target struct {
	sock, export string
	off, length  size
}

func (t *target) flags(fs *flag.FlagSet) {
	fs.StringVar(&t.sock, "sock", "", "unix socket of the array's NBD front end")
	fs.StringVar(&t.export, "export", "data", "export (array) name")
	fs.Var(&t.off, "off", "first byte of the range")
	fs.Var(&t.length, "len", "length of the range")
}

func (t *target) dial() (*nbd.Client, error) {
	if t.sock == "" || t.length <= 0 {
		return nil, errors.New("-sock and -len are required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, "unix", t.sock, t.export)
	if err != nil {
		return nil, err
	}
	if int64(t.off)+int64(t.length) > c.Size() {
		c.Close()
		return nil, fmt.Errorf("range [%d, %d) beyond the array's %d bytes", t.off, t.off+t.length, c.Size())
	}
	return c, nil
}

// pattern is a buffer of n pseudo-random bytes (never all zero).
func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64() | 1
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func printJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func signalled() <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	return ch
}

// write: queue depth 1, one write every interval, completion times kept.
func write(args []string) error {
	fs := flag.NewFlagSet("write", flag.ExitOnError)
	var t target
	t.flags(fs)
	bs := size(4096)
	fs.Var(&bs, "bs", "write size")
	var stride size
	fs.Var(&stride, "stride", "step between two writes (default: the write size)")
	interval := fs.Duration("interval", 2*time.Millisecond, "time between the starts of two writes")
	out := fs.String("out", "", "file for the completion times (Unix ns, one a line)")
	fs.Parse(args)
	if stride < bs {
		stride = bs
	}
	c, err := t.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	stop := signalled()
	buf := pattern(int(bs), 1)
	type result struct {
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	issue := func(off int64) {
		go func() {
			_, err := c.WriteAt(buf, off)
			done <- result{time.Now(), err}
		}()
	}
	var (
		times    = make([]int64, 0, 1<<16)
		errs     int
		firstErr string
		off      = int64(t.off)
		lap      int64 // offset within the stride of this lap
		next     = time.Now()
		started  = time.Now()
		inflight = true
		stopping bool
	)
	issue(off)
	for inflight {
		var r result
		select {
		case r = <-done:
		case <-stop:
			stopping = true
			select {
			case r = <-done:
			case <-time.After(30 * time.Second):
				r = result{time.Now(), errors.New("write still in flight 30s after the stop")}
			}
		}
		inflight = false
		if r.err != nil {
			errs++
			if firstErr == "" {
				firstErr = r.err.Error()
			}
		} else {
			times = append(times, r.at.UnixNano())
		}
		if stopping || errs > 100 {
			break
		}
		if off += int64(stride); off+int64(bs) > int64(t.off+t.length) {
			lap += int64(bs)
			if lap+int64(bs) > int64(stride) {
				lap = 0
			}
			off = int64(t.off) + lap
		}
		next = next.Add(*interval)
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(d):
			case <-stop:
				stopping = true
			}
		} else {
			next = time.Now()
		}
		if !stopping {
			issue(off)
			inflight = true
		}
	}
	var maxGap, gapEnd int64
	for i := 1; i < len(times); i++ {
		if g := times[i] - times[i-1]; g > maxGap {
			maxGap, gapEnd = g, times[i]
		}
	}
	if *out != "" {
		var b strings.Builder
		for _, ts := range times {
			b.WriteString(strconv.FormatInt(ts, 10))
			b.WriteByte('\n')
		}
		if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	printJSON(map[string]any{"writes": len(times), "errors": errs, "first_error": firstErr,
		"started_ns": started.UnixNano(), "max_gap_ns": maxGap, "max_gap_end_ns": gapEnd})
	return nil
}

// parallel runs qd workers taking chunks of [off, off+length) of bs
// bytes in order until the range is done or a write fails.
func parallel(c *nbd.Client, off, length, bs int64, qd int) (int64, error) {
	var next, written atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for w := range qd {
		buf := pattern(int(bs), uint64(w)+7)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				o := off + i*bs
				if o >= off+length {
					return
				}
				n := min(bs, off+length-o)
				if _, err := c.WriteAt(buf[:n], o); err != nil {
					once.Do(func() { first = fmt.Errorf("write %d+%d: %w", o, n, err) })
					next.Store(1 << 62)
					return
				}
				written.Add(n)
			}
		}()
	}
	wg.Wait()
	return written.Load(), first
}

// fill: the range once, then a fresh mark on every region, then keep
// touching them.
func fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	var t target
	t.flags(fs)
	bs, region := size(1<<20), size(4<<20)
	fs.Var(&bs, "bs", "write size")
	fs.Var(&region, "region", "bitmap region size of the array")
	qd := fs.Int("qd", 8, "writes in flight")
	fs.Parse(args)
	c, err := t.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	n, err := parallel(c, int64(t.off), int64(t.length), int64(bs), *qd)
	if err != nil {
		return err
	}
	filled := time.Since(start)
	// One 4 KiB block per region, qd at a time: regions the bitmap
	// cleared during a long fill are marked again.
	touch := func(round int) error {
		var wg sync.WaitGroup
		var first atomic.Value
		sem := make(chan struct{}, *qd)
		blk := pattern(4096, uint64(round)+100)
		for o := int64(t.off); o < int64(t.off+t.length); o += int64(region) {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				p := o + int64(round%int(int64(region)/4096))*4096
				if _, err := c.WriteAt(blk, min(p, int64(t.off+t.length)-4096)); err != nil {
					first.CompareAndSwap(nil, err)
				}
			}()
		}
		wg.Wait()
		if e, ok := first.Load().(error); ok {
			return e
		}
		return nil
	}
	tstart := time.Now()
	if err := touch(0); err != nil {
		return err
	}
	regions := (int64(t.length) + int64(region) - 1) / int64(region)
	fmt.Println("marked")
	printJSON(map[string]any{"bytes": n, "fill_s": filled.Seconds(), "regions": regions,
		"touch_s": time.Since(tstart).Seconds(), "mib_s": float64(n) / (1 << 20) / filled.Seconds()})
	os.Stdout.Sync()
	stop := signalled()
	for round := 1; ; round++ {
		select {
		case <-stop:
			return nil
		default:
		}
		if err := touch(round); err != nil {
			return nil // the server went away: expected, it is killed
		}
	}
}

// bulk: one timed write of the range.
func bulk(args []string) error {
	fs := flag.NewFlagSet("bulk", flag.ExitOnError)
	var t target
	t.flags(fs)
	bs := size(64 << 10)
	fs.Var(&bs, "bs", "write size")
	qd := fs.Int("qd", 8, "writes in flight")
	startAt := fs.Int64("start-at", 0, "Unix time (ns) to start at (0: at once)")
	fs.Parse(args)
	c, err := t.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if d := time.Until(time.Unix(0, *startAt)); *startAt > 0 && d > 0 {
		time.Sleep(d)
	}
	start := time.Now()
	n, err := parallel(c, int64(t.off), int64(t.length), int64(bs), *qd)
	if err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return err
	}
	end := time.Now()
	printJSON(map[string]any{"bytes": n, "start_ns": start.UnixNano(), "end_ns": end.UnixNano()})
	return nil
}

// arrayStatus is the part of a served array's status (cluster/serve's
// ArrayStatus, GET /v1/arrays) the watch reads. Decoded here rather than
// imported, so the probe depends on the control API's JSON only.
type arrayStatus struct {
	Name            string `json:"name"`
	ResyncedRegions int64  `json:"resynced_regions"`
	ResyncedBytes   int64  `json:"resynced_bytes"`
	Coord           *struct {
		Epoch     uint64   `json:"epoch"`
		Takeovers []uint32 `json:"takeovers"`
	} `json:"coord"`
}

// watch: when a takeover shows on the agent and when it has ended.
func watch(args []string) error {
	fs := flag.NewFlagSet("watch", flag.ExitOnError)
	control := fs.String("control", "", "the agent's control socket")
	name := fs.String("array", "data", "served array")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	fs.Parse(args)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *control)
		}}}
	get := func() (arrayStatus, error) {
		resp, err := hc.Get("http://agent/v1/arrays")
		if err != nil {
			return arrayStatus{}, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return arrayStatus{}, fmt.Errorf("GET /v1/arrays at %s: %s", *control, resp.Status)
		}
		var arrays []arrayStatus
		if err := json.NewDecoder(resp.Body).Decode(&arrays); err != nil {
			return arrayStatus{}, err
		}
		for _, a := range arrays {
			if a.Name == *name {
				return a, nil
			}
		}
		return arrayStatus{}, fmt.Errorf("agent at %s does not serve %s", *control, *name)
	}
	st, err := get()
	if err != nil {
		return err
	}
	base, baseBytes := st.ResyncedRegions, st.ResyncedBytes
	fmt.Printf("ready %d\n", base)
	os.Stdout.Sync()
	var seen time.Time
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		st, err := get()
		if err != nil {
			continue // a busy agent: try again
		}
		now := time.Now()
		busy := st.Coord != nil && len(st.Coord.Takeovers) > 0
		if busy && seen.IsZero() {
			seen = now
		}
		if !busy && st.ResyncedRegions > base && st.Coord != nil {
			if seen.IsZero() {
				seen = now // the whole takeover fell between two polls
			}
			printJSON(map[string]any{"takeover_seen_ns": seen.UnixNano(), "done_ns": now.UnixNano(),
				"regions": st.ResyncedRegions - base, "bytes": st.ResyncedBytes - baseBytes, "epoch": st.Coord.Epoch})
			return nil
		}
	}
	return fmt.Errorf("no takeover finished within %v", *timeout)
}
