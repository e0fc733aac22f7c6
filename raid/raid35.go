package raid

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/ddraid/ddraid/blockdev"
)

// maxRunBytes bounds the logical bytes one member IO round covers. Larger
// requests are served as consecutive runs of at most this size, which
// bounds the scratch memory of one request.
const maxRunBytes = 4 << 20

// zeroBlock is a read-only block of zeroes for partial-block Zero.
var zeroBlock [MaxBlockSize]byte

// Raid35 is a Raid 3.5 array: every logical block is a full stripe of 2^k
// data fragments and one XOR parity fragment over M = 2^k+1 members (see
// [Geometry]). It tolerates one lost member. All methods are safe for
// concurrent use.
type Raid35 struct {
	g       Geometry
	m       int    // members
	b, f    int    // block and fragment size
	maxRun  int    // blocks per member IO round
	all     uint64 // mask of every member slot
	blocks  int64
	members []blockdev.Device
	set     memberSet
	fan     fanout // member requests of reads and writes
	locks   rangeLock
	closed  atomic.Bool

	// Read balancing (see readAround).
	queue   [maxMembers]atomic.Int32 // member requests in flight, counted while trusted
	trusted atomic.Bool              // TrustRedundancy
	around  atomic.Int64             // runs read around a busy member
}

var _ blockdev.Device = (*Raid35)(nil)

// NewRaid35 builds a Raid 3.5 array over members, the data areas of the
// member disks in role order (offset 0 of each is the first fragment).
// members[i] == nil marks member i missing; at most one may be. Zero fields
// of g take their defaults. memberDataSize is the usable size of each data
// area; every present member must be at least that large, and it must hold
// at least one fragment. The array owns the members: Close closes them.
func NewRaid35(g Geometry, members []blockdev.Device, memberDataSize int64, cfg Config) (*Raid35, error) {
	g = g.WithDefaults()
	if err := g.Validate(); err != nil {
		return nil, fmt.Errorf("raid35: %w", err)
	}
	if len(members) != g.Members {
		return nil, fmt.Errorf("raid35: geometry has %d members but %d devices were given", g.Members, len(members))
	}
	missing := 0
	for i, d := range members {
		if d == nil {
			missing++
			continue
		}
		if d.Size() < memberDataSize {
			return nil, fmt.Errorf("raid35: member %d is %d bytes, smaller than the %d-byte data area", i, d.Size(), memberDataSize)
		}
	}
	if missing > 1 {
		return nil, fmt.Errorf("raid35: %d of %d members missing, at most 1 can be", missing, g.Members)
	}
	blocks := g.Blocks(memberDataSize)
	if blocks < 1 {
		return nil, fmt.Errorf("raid35: member data area of %d bytes holds no %d-byte fragment", memberDataSize, g.FragmentSize())
	}
	r := &Raid35{
		g:       g,
		m:       g.Members,
		b:       g.BlockSize,
		f:       g.FragmentSize(),
		maxRun:  max(1, maxRunBytes/g.BlockSize),
		all:     1<<g.Members - 1,
		blocks:  blocks,
		members: append([]blockdev.Device(nil), members...),
	}
	r.set.init(r.members, cfg)
	r.fan.init(cfg.OnSpread)
	return r, nil
}

// Geometry returns the array's geometry, defaults applied.
func (r *Raid35) Geometry() Geometry { return r.g }

// Blocks returns the number of logical blocks.
func (r *Raid35) Blocks() int64 { return r.blocks }

// Size implements blockdev.Device: Blocks * BlockSize.
func (r *Raid35) Size() int64 { return r.blocks * int64(r.b) }

// BlockSize implements blockdev.Device: the logical block size B. Smaller
// or unaligned writes are served by read-modify-write.
func (r *Raid35) BlockSize() int { return r.b }

// TrustRedundancy says whether a read may go around a busy data member,
// reading the parity member in its place and rebuilding that member's
// fragments (see readAround). The array's owner turns it on only while every block's
// parity matches its data wherever no write is in flight: after a clean
// stop, a finished resync or a finished repair, and never while others
// write the members (cluster mode). It is off until then, and the owner
// turns it off when that stops being true (a check found mismatches).
func (r *Raid35) TrustRedundancy(on bool) { r.trusted.Store(on) }

// RedundancyTrusted reports the last TrustRedundancy.
func (r *Raid35) RedundancyTrusted() bool { return r.trusted.Load() }

// ReadsAround returns how many read runs went around a busy member.
func (r *Raid35) ReadsAround() int64 { return r.around.Load() }

// MemberStates returns a copy of the member states in role order.
func (r *Raid35) MemberStates() []MemberState { return r.set.snapshot() }

// Fail marks member failed: it is no longer read or written. Failing a
// member that is already failed or missing does nothing; otherwise
// Config.OnFail is called with err before Fail returns.
func (r *Raid35) Fail(member int, err error) { r.set.fail(member, err) }

// ReadAt implements blockdev.Device. Any offset and length are allowed;
// blocks not fully covered are read into a scratch buffer and copied out.
// With one member lost the data is reconstructed from the others.
func (r *Raid35) ReadAt(p []byte, off int64) (int, error) {
	if err := r.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	b := int64(r.b)
	for done := 0; done < len(p); {
		pos := off + int64(done)
		n, in := pos/b, int(pos%b)
		want := len(p) - done
		cnt := min((in+want+r.b-1)/r.b, r.maxRun)
		if in == 0 && want >= cnt*r.b {
			if err := r.readRun(p[done:done+cnt*r.b], n, true); err != nil {
				return done, err
			}
			done += cnt * r.b
			continue
		}
		bp := getBuf(cnt * r.b)
		err := r.readRun(*bp, n, true)
		if err == nil {
			done += copy(p[done:], (*bp)[in:])
		}
		putBuf(bp)
		if err != nil {
			return done, err
		}
	}
	return len(p), nil
}

// WriteAt implements blockdev.Device. Whole aligned blocks are written
// without reading anything; blocks only partly covered by p are read,
// patched and written whole (read-modify-write). Writes are serialised
// against overlapping writes, zeroes and trims of this array.
func (r *Raid35) WriteAt(p []byte, off int64) (int, error) {
	if err := r.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	h := r.locks.lock(r.blockSpan(off, int64(len(p))))
	defer r.locks.unlock(h)
	return r.writeLocked(p, off)
}

// writeLocked is WriteAt once the blocks are locked.
func (r *Raid35) writeLocked(p []byte, off int64) (int, error) {
	b := int64(r.b)
	for done := 0; done < len(p); {
		pos := off + int64(done)
		n, in := pos/b, int(pos%b)
		want := len(p) - done
		cnt := min((in+want+r.b-1)/r.b, r.maxRun)
		if in == 0 && want >= cnt*r.b {
			if err := r.writeRun(p[done:done+cnt*r.b], n); err != nil {
				return done, err
			}
			done += cnt * r.b
			continue
		}
		c, err := r.rmw(p[done:], n, in, cnt)
		if err != nil {
			return done, err
		}
		done += c
	}
	return len(p), nil
}

// rmw writes the start of p at byte in of block n, over cnt blocks of which
// the first and/or last are only partly covered, and returns the bytes of p
// consumed.
func (r *Raid35) rmw(p []byte, n int64, in, cnt int) (int, error) {
	bp := getBuf(cnt * r.b)
	defer putBuf(bp)
	buf := *bp
	end := min(in+len(p), cnt*r.b) // end of p's bytes within buf
	headPartial := in != 0
	tailPartial := end < cnt*r.b
	var err error
	switch {
	case cnt <= 2 && (headPartial || tailPartial):
		// Reading both blocks costs the same member IOs as reading one.
		err = r.readRun(buf, n, false)
	default:
		if headPartial {
			err = r.readRun(buf[:r.b], n, false)
		}
		if err == nil && tailPartial {
			err = r.readRun(buf[(cnt-1)*r.b:], n+int64(cnt-1), false)
		}
	}
	if err != nil {
		return 0, err
	}
	c := copy(buf[in:end], p)
	return c, r.writeRun(buf, n)
}

// Zero implements blockdev.Device. Whole blocks are zeroed with member
// Zero on every member (zeroes are parity-consistent: the XOR of zero
// fragments is zero); partly covered blocks by read-modify-write.
func (r *Raid35) Zero(off, length int64) error {
	if err := r.check("zero", off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	h := r.locks.lock(r.blockSpan(off, length))
	defer r.locks.unlock(h)
	b, end := int64(r.b), off+length
	zf, zl := (off+b-1)/b, end/b // whole blocks [zf, zl)
	if zf > zl {
		return r.zeroPartial(off, end)
	}
	if off < zf*b {
		if err := r.zeroPartial(off, zf*b); err != nil {
			return err
		}
	}
	if zf < zl {
		if err := r.zeroBlocks("zero", zf, zl); err != nil {
			return err
		}
	}
	if zl*b < end {
		return r.zeroPartial(zl*b, end)
	}
	return nil
}

// Trim implements blockdev.Device. The whole blocks inside the range are
// zeroed on every member (a member trim could leave stale fragments and
// break parity); partly covered blocks are left alone.
func (r *Raid35) Trim(off, length int64) error {
	if err := r.check("trim", off, length); err != nil {
		return err
	}
	b := int64(r.b)
	zf, zl := (off+b-1)/b, (off+length)/b
	if zf >= zl {
		return nil
	}
	h := r.locks.lock(zf, zl)
	defer r.locks.unlock(h)
	return r.zeroBlocks("trim", zf, zl)
}

// zeroPartial zeroes [from, to), which lies within one block, by
// read-modify-write. The block must be locked.
func (r *Raid35) zeroPartial(from, to int64) error {
	_, err := r.writeLocked(zeroBlock[:to-from], from)
	return err
}

// zeroBlocks zeroes blocks [n0, n1) with member Zero on every live member.
// The blocks must be locked.
func (r *Raid35) zeroBlocks(op string, n0, n1 int64) error {
	lost := r.set.lostMask()
	if bits.OnesCount64(lost) > 1 {
		return r.failedErr(op, n0, n1, nil)
	}
	var errs [maxMembers]error
	f := int64(r.f)
	forEachMember(r.set.writeMask(r.all), errs[:], func(m int) error {
		if err := r.members[m].Zero(n0*f, (n1-n0)*f); err != nil {
			return &MemberError{Level: LevelRaid35, Op: "zero", Member: m, Block: n0, Err: err}
		}
		return nil
	})
	return r.settle(op, n0, n1, errs[:])
}

// Flush implements blockdev.Device: it flushes every live member in
// parallel. A member whose flush fails is marked failed; Flush fails only
// when that leaves too few members.
func (r *Raid35) Flush() error {
	if r.closed.Load() {
		return fmt.Errorf("raid35: flush: %w", blockdev.ErrClosed)
	}
	lost := r.set.lostMask()
	if bits.OnesCount64(lost) > 1 {
		return r.failedErr("flush", -1, -1, nil)
	}
	var errs [maxMembers]error
	forEachMember(r.set.writeMask(r.all), errs[:], func(m int) error {
		if err := r.members[m].Flush(); err != nil {
			return &MemberError{Level: LevelRaid35, Op: "flush", Member: m, Block: -1, Err: err}
		}
		return nil
	})
	return r.settle("flush", -1, -1, errs[:])
}

// Close implements blockdev.Device: it closes every present member. Later
// calls fail with blockdev.ErrClosed.
func (r *Raid35) Close() error {
	if r.closed.Swap(true) {
		return fmt.Errorf("raid35: close: %w", blockdev.ErrClosed)
	}
	var errs []error
	for i, d := range r.members {
		if d == nil {
			continue
		}
		if err := d.Close(); err != nil {
			errs = append(errs, &MemberError{Level: LevelRaid35, Op: "close", Member: i, Block: -1, Err: err})
		}
	}
	return errors.Join(errs...)
}

// check validates a request before any work is done.
func (r *Raid35) check(op string, off, length int64) error {
	if r.closed.Load() {
		return fmt.Errorf("raid35: %s: %w", op, blockdev.ErrClosed)
	}
	if err := blockdev.CheckRange(off, length, r.Size()); err != nil {
		return fmt.Errorf("raid35: %s: %w", op, err)
	}
	return nil
}

// blockSpan returns the blocks [from, to) that bytes [off, off+length)
// touch.
func (r *Raid35) blockSpan(off, length int64) (from, to int64) {
	b := int64(r.b)
	return off / b, (off + length + b - 1) / b
}

// settle marks the members with an error in errs failed. It returns nil
// when the array can still serve data, or an error wrapping ErrArrayFailed
// and the member errors of op on blocks [n0, n1) (n0 < 0: no range).
func (r *Raid35) settle(op string, n0, n1 int64, errs []error) error {
	var seen []error
	for m, err := range errs {
		if err != nil {
			r.set.fail(m, err)
			seen = append(seen, err)
		}
	}
	if len(seen) == 0 || bits.OnesCount64(r.set.lostMask()) <= 1 {
		return nil
	}
	return r.failedErr(op, n0, n1, seen)
}

// failedErr returns the error of op on blocks [n0, n1) (n0 < 0: no range)
// given up because too many members are lost; errs are the member errors
// seen.
func (r *Raid35) failedErr(op string, n0, n1 int64, errs []error) error {
	e := &arrayError{level: LevelRaid35, op: op, a: n0, b: n1, lost: r.set.lostMask(), errs: errs}
	if n0 >= 0 {
		e.span = spanBlocks
	}
	return e
}

// writeRun writes whole blocks p (at most maxRun of them) starting at block
// n0: one WriteAt per live member covering fragments [n0*F, (n0+len)*F).
// The blocks must be locked.
func (r *Raid35) writeRun(p []byte, n0 int64) error {
	n1 := n0 + int64(len(p)/r.b)
	lost := r.set.lostMask()
	if bits.OnesCount64(lost) > 1 {
		return r.failedErr("write", n0, n1, nil)
	}
	var errs [maxMembers]error
	r.fan.run(r.set.writeMask(r.all), len(p)/r.b*r.f, errs[:], func(m int) error { return r.writeMember(m, p, n0) })
	return r.settle("write", n0, n1, errs[:])
}

// writeMember writes member m's fragments of the whole blocks p that start
// at block n0, with one member request: its data fragments straight from p
// and its parity fragments from a scratch buffer, gathered by
// blockdev.WriteV (pwritev on a file; one copy into a single buffer on a
// device that cannot gather).
func (r *Raid35) writeMember(m int, p []byte, n0 int64) error {
	if r.trusted.Load() { // only readAround reads the queues
		r.queue[m].Add(1)
		defer r.queue[m].Add(-1)
	}
	off := n0 * int64(r.f)
	var err error
	switch role := r.g.Role(n0, m); {
	case r.m == 2:
		// F == B: the data fragment is the block and parity is its copy.
		err = writeFull(r.members[m], p, off)
	case len(p) == r.b && role < r.m-1:
		// One block: the data fragment is contiguous in p.
		err = writeFull(r.members[m], p[role*r.f:(role+1)*r.f], off)
	default:
		err = r.writeGathered(m, p, n0, off)
	}
	if err != nil {
		return &MemberError{Level: LevelRaid35, Op: "write", Member: m, Block: n0, Err: err}
	}
	return nil
}

// vecPool holds the buffer lists of writeGathered and readStretch.
var vecPool = sync.Pool{New: func() any { v := make([][]byte, 0, maxRunBytes/MinFragmentSize); return &v }}

// writeGathered is writeMember for runs that are not one contiguous piece
// of p. Neighbouring pieces that are contiguous in memory (parity fragments
// of consecutive blocks; the last fragment of a block and the first of the
// next) travel as one buffer.
func (r *Raid35) writeGathered(m int, p []byte, n0, off int64) error {
	b, f, d := r.b, r.f, r.m-1
	nb := len(p) / b
	np := r.parityBlocks(m, n0, nb)
	var par []byte
	if np > 0 {
		bp := getBuf(np * f)
		defer putBuf(bp)
		par = *bp
	}
	vp := vecPool.Get().(*[][]byte)
	v := (*vp)[:0]
	defer func() {
		clear(v) // drop the references to p
		*vp = v[:0]
		vecPool.Put(vp)
	}()
	var srcs [maxMembers - 1][]byte
	pi := 0          // parity fragments computed so far
	lastEnd := -1    // end in p of the last buffer when it came from p
	lastPar := false // the last buffer came from par
	for i := range nb {
		blk := p[i*b : (i+1)*b]
		role := r.g.Role(n0+int64(i), m)
		if role < d {
			at := i*b + role*f
			if k := len(v); k > 0 && !lastPar && lastEnd == at {
				v[k-1] = v[k-1][:len(v[k-1])+f]
			} else {
				v = append(v, p[at:at+f])
			}
			lastEnd, lastPar = at+f, false
			continue
		}
		for j := range d {
			srcs[j] = blk[j*f : (j+1)*f]
		}
		out := par[pi*f : (pi+1)*f]
		xorBlocks(out, srcs[:d])
		if k := len(v); k > 0 && lastPar {
			v[k-1] = v[k-1][:len(v[k-1])+f]
		} else {
			v = append(v, out)
		}
		pi++
		lastEnd, lastPar = -1, true
	}
	n, err := blockdev.WriteV(r.members[m], v, off)
	if err == nil && n < nb*f {
		err = io.ErrShortWrite
	}
	return err
}

// parityBlocks returns how many of the nb blocks from n0 have their parity
// on member m.
func (r *Raid35) parityBlocks(m int, n0 int64, nb int) int {
	if r.g.Parity == ParityDedicated {
		if m == r.m-1 {
			return nb
		}
		return 0
	}
	c := int64(r.g.ParityChunk)
	cnt := 0
	for n, end := n0, n0+int64(nb); n < end; {
		next := min((n/c+1)*c, end) // end of n's parity chunk within the run
		if r.g.ParityMember(n) == m {
			cnt += int(next - n)
		}
		n = next
	}
	return cnt
}

// readRun reads whole blocks p (at most maxRun of them) starting at block
// n0. A member that fails is marked failed and the run is read again
// without it while at most one member is lost. balance lets a healthy
// array read around a busy member (readAround); callers that hold the
// run's blocks locked must not set it.
func (r *Raid35) readRun(p []byte, n0 int64, balance bool) error {
	var prior []error
	for {
		lost := r.set.lostMask()
		if bits.OnesCount64(lost) > 1 {
			return r.failedErr("read", n0, n0+int64(len(p)/r.b), prior)
		}
		var errs [maxMembers]error
		if r.m == 2 {
			r.readRun2(p, n0, lost, balance, errs[:])
		} else if lost != 0 || !balance || !r.readAround(p, n0, errs[:]) {
			r.readRunN(p, n0, lost, errs[:])
		}
		failed := false
		for m, err := range errs {
			if err != nil {
				r.set.fail(m, err)
				prior = append(prior, err)
				failed = true
			}
		}
		if !failed {
			return nil
		}
	}
}

// readRun2 reads a run from a two-member array, where each member holds
// every block whole: block n is read from its data member, or from the
// other one when the data member is lost, or, with parity trusted, when
// the data member has at least two more requests in flight than the other
// (balance). No lock is needed for that: the other member's copy is the
// block whole, as the data member's is.
func (r *Raid35) readRun2(p []byte, n0 int64, lost uint64, balance bool, errs []error) {
	src := func(n int64) int {
		m := r.g.DataMember(n, 0)
		if lost&(1<<m) != 0 {
			return 1 - m
		}
		return m
	}
	nb := len(p) / r.b
	live := r.all &^ lost
	if lost == 0 && r.oneParity(n0, nb) {
		m := src(n0) // the whole run comes from one member
		if balance && r.trusted.Load() && r.queue[1-m].Load()+2 <= r.queue[m].Load() {
			m = 1 - m
			r.around.Add(1)
		}
		src = func(int64) int { return m }
		live = 1 << m
	}
	r.fan.run(live, len(p), errs, func(m int) error {
		if r.trusted.Load() { // only balancing reads the queues
			r.queue[m].Add(1)
			defer r.queue[m].Add(-1)
		}
		for i := 0; i < nb; {
			if src(n0+int64(i)) != m {
				i++
				continue
			}
			j := i + 1
			for j < nb && src(n0+int64(j)) == m {
				j++
			}
			if err := readFull(r.members[m], p[i*r.b:j*r.b], (n0+int64(i))*int64(r.f)); err != nil {
				return &MemberError{Level: LevelRaid35, Op: "read", Member: m, Block: n0 + int64(i), Err: err}
			}
			i = j
		}
		return nil
	})
}

// readRunN reads a run from an array of three or more members. Healthy,
// each member reads the stretches of blocks where it holds data. With
// member L lost, every survivor reads all its fragments, parity included,
// and L's data fragments are rebuilt as the XOR of the other fragments.
func (r *Raid35) readRunN(p []byte, n0 int64, lost uint64, errs []error) {
	nb := len(p) / r.b
	var par []byte // parity fragments of the run, degraded only
	if lost != 0 {
		bp := getBuf(nb * r.f)
		defer putBuf(bp)
		par = *bp
	}
	live := r.all &^ lost
	if lost == 0 && r.oneParity(n0, nb) {
		live &^= 1 << r.g.ParityMember(n0) // it holds no data of the run
	}
	r.fan.run(live, nb*r.f, errs, func(m int) error { return r.readMember(m, p, par, n0, lost != 0) })
	if lost == 0 {
		return
	}
	for _, err := range errs {
		if err != nil {
			return
		}
	}
	r.rebuild(p, par, n0, bits.TrailingZeros64(lost))
}

// balanceMaxBlocks bounds the runs readAround considers: small random
// reads, where every data member of a block is one request of the read.
// Larger runs stay on the data members, whose requests are already large.
const balanceMaxBlocks = 16

// readAround reads a run of a healthy array without its busiest data
// member when that member has at least two more requests in flight than
// the member holding the run's parity: it reads the others and parity and
// rebuilds the busy member's fragments, as for a lost member. With
// dedicated parity this puts the otherwise idle parity member to work on
// random reads; with rotating parity it evens out the queues. It holds the
// run's blocks locked meanwhile, so that no write of this array is half
// done on them, and only runs while TrustRedundancy is on. It returns false,
// having read nothing, when the run is to be read as usual.
func (r *Raid35) readAround(p []byte, n0 int64, errs []error) bool {
	nb := len(p) / r.b
	if !r.trusted.Load() || nb > balanceMaxBlocks || !r.oneParity(n0, nb) {
		return false
	}
	pm := r.g.ParityMember(n0)
	busy, most := -1, r.queue[pm].Load()+1
	for m := range r.m {
		if q := r.queue[m].Load(); m != pm && q > most {
			busy, most = m, q
		}
	}
	if busy < 0 {
		return false
	}
	h := r.locks.lock(n0, n0+int64(nb))
	defer r.locks.unlock(h)
	if r.set.lostMask() != 0 || !r.trusted.Load() {
		return false // changed while the lock was awaited
	}
	r.around.Add(1)
	r.readRunN(p, n0, 1<<busy, errs)
	return true
}

// readMember reads member m's part of a run: its data fragments into p and,
// when all is set (degraded), its parity fragments into par.
func (r *Raid35) readMember(m int, p, par []byte, n0 int64, all bool) error {
	nb, d := len(p)/r.b, r.m-1
	for i := 0; i < nb; {
		if !all && r.g.Role(n0+int64(i), m) == d {
			i++
			continue
		}
		j := i + 1
		for j < nb && (all || r.g.Role(n0+int64(j), m) != d) {
			j++
		}
		if err := r.readStretch(m, p, par, n0, i, j); err != nil {
			return &MemberError{Level: LevelRaid35, Op: "read", Member: m, Block: n0 + int64(i), Err: err}
		}
		i = j
	}
	return nil
}

// readStretch reads member m's fragments of blocks n0+i .. n0+j-1 as one
// request, scattered straight to where each belongs (blockdev.ReadV: one
// preadv on a file).
func (r *Raid35) readStretch(m int, p, par []byte, n0 int64, i, j int) error {
	if r.trusted.Load() { // only readAround reads the queues
		r.queue[m].Add(1)
		defer r.queue[m].Add(-1)
	}
	off := (n0 + int64(i)) * int64(r.f)
	if j-i == 1 {
		return readFull(r.members[m], r.fragSlot(p, par, i, r.g.Role(n0+int64(i), m)), off)
	}
	vp := vecPool.Get().(*[][]byte)
	bufs := (*vp)[:0]
	defer func() {
		clear(bufs) // drop the references to p
		*vp = bufs[:0]
		vecPool.Put(vp)
	}()
	for x := i; x < j; x++ {
		bufs = append(bufs, r.fragSlot(p, par, x, r.g.Role(n0+int64(x), m)))
	}
	n, err := blockdev.ReadV(r.members[m], bufs, off)
	if err == nil && n < (j-i)*r.f {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// oneParity reports whether one member holds the parity of every block of
// the run of nb blocks from n0.
func (r *Raid35) oneParity(n0 int64, nb int) bool {
	if r.g.Parity == ParityDedicated {
		return true
	}
	c := int64(r.g.ParityChunk)
	return n0/c == (n0+int64(nb)-1)/c
}

// fragSlot returns where fragment role of the i-th block of a run goes: its
// place in p for data, its slot in par for parity.
func (r *Raid35) fragSlot(p, par []byte, i, role int) []byte {
	if role < r.m-1 {
		at := i*r.b + role*r.f
		return p[at : at+r.f]
	}
	return par[i*r.f : (i+1)*r.f]
}

// rebuild fills in the data fragments of lost member L in a degraded run:
// each is the XOR of the block's other data fragments and its parity.
func (r *Raid35) rebuild(p, par []byte, n0 int64, lostMember int) {
	var srcs [maxMembers - 1][]byte
	b, f, d := r.b, r.f, r.m-1
	for i := 0; i*b < len(p); i++ {
		n := n0 + int64(i)
		role := r.g.Role(n, lostMember)
		if role == d {
			continue // L held the parity: all data was read
		}
		blk := p[i*b : (i+1)*b]
		k := 0
		for j := range d {
			if j != role {
				srcs[k] = blk[j*f : (j+1)*f]
				k++
			}
		}
		srcs[k] = par[i*f : (i+1)*f]
		xorBlocks(blk[role*f:(role+1)*f], srcs[:k+1])
	}
}
