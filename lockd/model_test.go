package lockd

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// refLock / refResource / refModel: the DLM rules for one node written the plain way — one
// list of locks per resource in arrival order, every decision a scan over it. No messages,
// masters, sequence numbers or queues as data structures. The core, driven as a one-node
// cluster, must produce exactly the same completions and blocking callbacks for any history.
type refLock struct {
	h          uint64
	res        string
	gr, rq     Mode   // noMode when none
	state      string // "granted", "converting", "waiting"
	order      int    // when it entered its current state
	flags      Flags
	bast       Mode
	wlvb       []byte
	tok        Token
	unlockFlag Flags
}

type refResource struct {
	lvb   []byte
	seq   uint64
	valid bool
}

type refModel struct {
	locks  []*refLock // arrival order
	res    map[string]*refResource
	clock  int
	tokens uint64 // one grant counter for the node's epoch
	events []string
}

func (m *refModel) resource(name string) *refResource {
	r := m.res[name]
	if r == nil {
		r = &refResource{lvb: make([]byte, LVBSize), valid: true}
		m.res[name] = r
	}
	return r
}

func (m *refModel) find(h uint64) *refLock {
	for _, l := range m.locks {
		if l.h == h {
			return l
		}
	}
	return nil
}

func (m *refModel) on(res, state string) []*refLock {
	var out []*refLock
	for _, l := range m.locks {
		if l.res == res && l.state == state {
			out = append(out, l)
		}
	}
	slices.SortStableFunc(out, func(a, b *refLock) int { return a.order - b.order })
	return out
}

// blockedBy: does any other lock on the resource hold a granted mode incompatible with mode?
func (m *refModel) blockedBy(l *refLock, mode Mode) bool {
	for _, o := range m.locks {
		if o != l && o.res == l.res && o.gr != noMode && !Compatible(o.gr, mode) {
			return true
		}
	}
	return false
}

func (m *refModel) completion(l *refLock, op Op, st Status) {
	s := fmt.Sprintf("%d %v %v", l.h, op, st)
	if l.gr != noMode && st != StatusUnlocked {
		s += fmt.Sprintf(" %v %v", l.gr, l.tok)
	}
	if l.flags&ValBlk != 0 && (st == StatusGranted || st == StatusUnlocked) {
		r := m.resource(l.res)
		s += fmt.Sprintf(" lvb=%s/%d/%v", lvbText(r.lvb), r.seq, r.valid)
	}
	m.events = append(m.events, s)
}

func (m *refModel) write(l *refLock, from Mode, flags Flags, w []byte) {
	if from == noMode || from < PW {
		return
	}
	r := m.resource(l.res)
	if flags&IvValBlk != 0 {
		r.valid = false
	} else if flags&ValBlk != 0 && w != nil {
		r.lvb = make([]byte, LVBSize)
		copy(r.lvb, w)
		r.seq++
		r.valid = true
	}
}

func (m *refModel) grant(l *refLock, op Op) {
	if l.rq < l.gr {
		m.write(l, l.gr, l.flags, l.wlvb)
	}
	m.tokens++
	l.gr, l.rq, l.state, l.bast, l.wlvb = l.rq, noMode, "granted", noMode, nil
	l.tok = Token{Epoch: 1, Seq: m.tokens}
	m.clock++
	l.order = m.clock
	m.completion(l, op, StatusGranted)
}

func (m *refModel) deadlocks(l *refLock) bool {
	for _, o := range m.on(l.res, "converting") {
		if o != l && !Compatible(o.gr, l.rq) && !Compatible(l.gr, o.rq) {
			return true
		}
	}
	return false
}

func (m *refModel) settle(res string) {
	for {
		progressed := false
		for _, l := range m.on(res, "converting") {
			if !m.blockedBy(l, l.rq) {
				m.grant(l, OpConvert)
				progressed = true
			}
		}
		if progressed {
			continue
		}
		for _, l := range m.on(res, "converting") {
			if m.deadlocks(l) {
				l.rq, l.wlvb, l.state = noMode, nil, "granted"
				m.clock++
				l.order = m.clock
				m.completion(l, OpConvert, StatusDeadlock)
				progressed = true
				break
			}
		}
		if !progressed {
			break
		}
	}
	for {
		w := m.on(res, "waiting")
		if len(w) == 0 || len(m.on(res, "converting")) > 0 || m.blockedBy(w[0], w[0].rq) {
			break
		}
		m.grant(w[0], OpLock)
	}
}

func (m *refModel) basts(res string) {
	queued := append(m.on(res, "converting"), m.on(res, "waiting")...)
	holders := append(m.on(res, "granted"), m.on(res, "converting")...)
	for _, b := range queued {
		for _, g := range holders {
			if g == b || g.flags&Blocking == 0 || Compatible(g.gr, b.rq) || (g.bast != noMode && g.bast >= b.rq) {
				continue
			}
			g.bast = b.rq
			m.events = append(m.events, fmt.Sprintf("%d blocking %v", g.h, b.rq))
		}
	}
}

func (m *refModel) remove(l *refLock) {
	m.locks = slices.DeleteFunc(m.locks, func(x *refLock) bool { return x == l })
}

func (m *refModel) lock(h uint64, res string, mode Mode, fl Flags) {
	l := &refLock{h: h, res: res, gr: noMode, rq: mode, flags: fl, bast: noMode}
	m.locks = append(m.locks, l)
	free := !m.blockedBy(l, mode) && len(m.on(res, "converting")) == 0 && len(m.on(res, "waiting")) == 0
	switch {
	case free:
		m.grant(l, OpLock)
	case fl&NoQueue != 0:
		m.completion(l, OpLock, StatusAgain)
		m.remove(l)
	default:
		m.clock++
		l.state, l.order = "waiting", m.clock
	}
	m.basts(res)
}

func (m *refModel) convert(l *refLock, mode Mode, fl Flags, w []byte) error {
	if l.state != "granted" {
		return ErrBusy
	}
	l.rq, l.flags, l.wlvb = mode, fl|Convert, w
	switch {
	case !m.blockedBy(l, mode):
		m.grant(l, OpConvert)
		m.settle(l.res)
	case fl&NoQueue != 0:
		l.rq, l.wlvb = noMode, nil
		m.completion(l, OpConvert, StatusAgain)
	case m.deadlocks(l):
		l.rq, l.wlvb = noMode, nil
		m.completion(l, OpConvert, StatusDeadlock)
	default:
		m.clock++
		l.state, l.order = "converting", m.clock
	}
	m.basts(l.res)
	return nil
}

func (m *refModel) unlock(l *refLock, fl Flags, w []byte) error {
	if l.state != "granted" {
		return ErrBusy
	}
	l.flags = fl | (l.flags & (ValBlk | Blocking))
	if fl&ValBlk == 0 {
		l.flags &^= ValBlk
		w = nil
	}
	m.write(l, l.gr, l.flags, w)
	l.gr = noMode
	m.completion(l, OpUnlock, StatusUnlocked)
	m.remove(l)
	m.settle(l.res)
	m.basts(l.res)
	return nil
}

func (m *refModel) cancel(l *refLock) error {
	switch l.state {
	case "waiting":
		l.rq = noMode
		m.completion(l, OpLock, StatusCanceled)
		m.remove(l)
	case "converting":
		l.rq, l.wlvb, l.state = noMode, nil, "granted"
		m.clock++
		l.order = m.clock
		m.completion(l, OpConvert, StatusCanceled)
	default:
		return ErrInvalid
	}
	m.settle(l.res)
	m.basts(l.res)
	return nil
}

func describe(cp Completion) string {
	s := fmt.Sprintf("%d %v %v", cp.Lock, cp.Op, cp.Status)
	if cp.Mode.Valid() {
		s += fmt.Sprintf(" %v %v", cp.Mode, cp.Token)
	}
	if cp.LVB != nil {
		s += fmt.Sprintf(" lvb=%s/%d/%v", lvbText(cp.LVB), cp.LVBSeq, cp.LVBValid)
	}
	return s
}

func TestOneNodeMatchesReference(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c, err := NewCore(Config{ID: "n1", Incarnation: 1, Voters: []NodeID{"n1"}})
		if err != nil {
			t.Fatal(err)
		}
		c.SetMembers([]NodeID{"n1"})
		if !c.Normal() || !c.HasQuorum() {
			t.Fatal("a one-node cluster is not up after SetMembers")
		}
		c.Advance()
		ref := &refModel{res: map[string]*refResource{}}
		var handles []uint64
		mode := rapid.SampledFrom([]Mode{NL, CR, CW, PR, PW, EX})
		flags := func(t *rapid.T, allowed Flags) Flags {
			var f Flags
			for _, x := range []Flags{NoQueue, ValBlk, IvValBlk, Blocking} {
				if allowed&x != 0 && rapid.Bool().Draw(t, "flag") {
					f |= x
				}
			}
			return f
		}
		// pick draws a handle the history used, or one never issued (the
		// core must refuse it as the reference does: ErrUnknownLock).
		pick := func(t *rapid.T) (uint64, *refLock) {
			if len(handles) == 0 || rapid.IntRange(0, 9).Draw(t, "unknown") == 0 {
				return 1 << 62, nil
			}
			h := rapid.SampledFrom(handles).Draw(t, "lock")
			return h, ref.find(h)
		}
		check := func(t *rapid.T, what string, gotErr, wantErr error) {
			if (gotErr == nil) != (wantErr == nil) || (wantErr != nil && !errors.Is(gotErr, wantErr)) {
				t.Fatalf("%s: core error %v, reference %v", what, gotErr, wantErr)
			}
			rd := c.Ready()
			c.Advance()
			if len(rd.Messages) != 0 {
				t.Fatalf("%s: a one-node cluster sent %d messages", what, len(rd.Messages))
			}
			var got []string
			for _, cp := range rd.Completions {
				got = append(got, describe(cp))
			}
			for _, b := range rd.Blocking {
				got = append(got, fmt.Sprintf("%d blocking %v", b.Lock, b.Mode))
			}
			want := ref.events
			ref.events = nil
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("%s:\n core %q\n  ref %q", what, got, want)
			}
		}
		t.Repeat(map[string]func(*rapid.T){
			"lock": func(t *rapid.T) {
				res := rapid.SampledFrom([]string{"a", "b"}).Draw(t, "res")
				md, fl := mode.Draw(t, "mode"), flags(t, NoQueue|ValBlk|Blocking)
				h, err := c.Lock("ls", res, md, fl)
				if err != nil {
					t.Fatal(err)
				}
				handles = append(handles, h)
				ref.lock(h, res, md, fl)
				check(t, fmt.Sprintf("lock %d %s %v %v", h, res, md, fl), nil, nil)
			},
			"convert": func(t *rapid.T) {
				h, l := pick(t)
				md, fl := mode.Draw(t, "mode"), flags(t, NoQueue|ValBlk|Blocking)
				w := []byte(fmt.Sprintf("v%d", rapid.IntRange(0, 9).Draw(t, "v")))
				err := c.Convert(h, md, fl, w)
				var want error = ErrUnknownLock
				if l != nil {
					want = ref.convert(l, md, fl, w)
				}
				check(t, fmt.Sprintf("convert %d %v %v", h, md, fl), err, want)
			},
			"unlock": func(t *rapid.T) {
				h, l := pick(t)
				fl := flags(t, ValBlk|IvValBlk)
				w := []byte(fmt.Sprintf("u%d", rapid.IntRange(0, 9).Draw(t, "v")))
				err := c.Unlock(h, fl, w)
				var want error = ErrUnknownLock
				if l != nil {
					want = ref.unlock(l, fl, w)
				}
				check(t, fmt.Sprintf("unlock %d %v", h, fl), err, want)
			},
			"cancel": func(t *rapid.T) {
				h, l := pick(t)
				err := c.Cancel(h)
				var want error = ErrUnknownLock
				if l != nil {
					want = ref.cancel(l)
				}
				check(t, fmt.Sprintf("cancel %d", h), err, want)
			},
		})
	})
}
