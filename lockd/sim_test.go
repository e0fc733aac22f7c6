package lockd

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// sim drives a set of cores over a simulated network, deterministically: in FIFO order with
// no loss (transcripts), or under a seeded random schedule with loss, delay, partitions and
// crashes (randomized tests). Every message goes through Marshal/UnmarshalMessage.
type sim struct {
	t      testing.TB
	voters []NodeID
	cores  map[NodeID]*Core
	inc    map[NodeID]uint64
	cfg    Config
	now    uint64
	flight []flight
	cut    map[[2]NodeID]bool
	hard   map[NodeID]HardState // what each node saved; survives crashes

	rng      *rand.Rand // nil: FIFO, lossless, no delay
	dropPct  int
	maxDelay int

	trace        bool
	onCompletion func(n NodeID, cp Completion)
	onBlocking   func(n NodeID, b BlockingEvent)
	delivered    int
}

type flight struct {
	to, from NodeID
	frame    []byte
	due      uint64
}

func newSim(t testing.TB, cfg Config, names ...string) *sim {
	s := &sim{t: t, cores: map[NodeID]*Core{}, inc: map[NodeID]uint64{}, cut: map[[2]NodeID]bool{}, hard: map[NodeID]HardState{}, cfg: cfg}
	for _, n := range names {
		s.voters = append(s.voters, NodeID(n))
	}
	for _, n := range s.voters {
		s.start(n)
	}
	return s
}

func (s *sim) start(n NodeID) {
	s.inc[n]++
	cfg := s.cfg
	cfg.ID, cfg.Incarnation, cfg.Voters = n, s.inc[n], slices.Clone(s.voters)
	cfg.HardState = s.hard[n]
	c, err := NewCore(cfg)
	if err != nil {
		s.t.Fatalf("new core %s: %v", n, err)
	}
	s.cores[n] = c
}

func (s *sim) crash(n NodeID) { delete(s.cores, n) }

func (s *sim) live() []NodeID {
	var out []NodeID
	for _, n := range s.voters {
		if s.cores[n] != nil {
			out = append(out, n)
		}
	}
	return out
}

func (s *sim) blocked(a, b NodeID) bool { return s.cut[[2]NodeID{a, b}] }

// partition cuts every link between the groups.
func (s *sim) partition(groups ...[]NodeID) {
	for i, g := range groups {
		for j, h := range groups {
			if i == j {
				continue
			}
			for _, a := range g {
				for _, b := range h {
					s.cut[[2]NodeID{a, b}] = true
				}
			}
		}
	}
}

func (s *sim) heal() { s.cut = map[[2]NodeID]bool{} }

// collect takes every live core's Ready.
func (s *sim) collect() {
	for _, n := range s.live() {
		c := s.cores[n]
		if !c.HasReady() {
			continue
		}
		rd := c.Ready()
		c.Advance()
		if rd.HardState != nil {
			s.hard[n] = *rd.HardState // "durably", before anything is sent
		}
		for _, m := range rd.Messages {
			if m.From != n {
				s.t.Fatalf("%s sent a message from %s", n, m.From)
			}
			if s.rng != nil && s.rng.IntN(100) < s.dropPct {
				continue
			}
			due := s.now
			if s.rng != nil && s.maxDelay > 0 {
				due += uint64(s.rng.IntN(s.maxDelay + 1))
			}
			s.flight = append(s.flight, flight{to: m.To, from: n, frame: m.Marshal(), due: due})
		}
		for _, cp := range rd.Completions {
			if s.onCompletion != nil {
				s.onCompletion(n, cp)
			}
		}
		for _, b := range rd.Blocking {
			if s.onBlocking != nil {
				s.onBlocking(n, b)
			}
		}
	}
}

// deliverOne delivers one due message (the first, or a random one); false if none is due.
func (s *sim) deliverOne() bool {
	s.collect()
	var due []int
	for i, f := range s.flight {
		if f.due <= s.now {
			due = append(due, i)
		}
	}
	if len(due) == 0 {
		return false
	}
	i := due[0]
	if s.rng != nil {
		i = due[s.rng.IntN(len(due))]
	}
	f := s.flight[i]
	s.flight = append(s.flight[:i], s.flight[i+1:]...)
	c := s.cores[f.to]
	if c == nil || s.blocked(f.from, f.to) {
		return true
	}
	m, err := UnmarshalMessage(f.frame)
	if err != nil {
		s.t.Fatalf("unmarshal a frame we made: %v", err)
	}
	if s.trace && m.Type != MsgHeartbeat && m.Type != MsgHeartbeatAck {
		s.t.Logf("t%d %s->%s %v ep=%d op=%v %s/%s lock=%v seq=%d mode=%v st=%v tok=%v ballot=%v view=%v recs=%d", s.now, m.From, m.To, m.Type, m.Epoch, m.Op, m.Space, m.Resource, m.Lock, m.Seq, m.Mode, m.Status, m.Token, m.Ballot, m.View, len(m.Records))
	}
	c.Step(m)
	s.delivered++
	s.collect()
	return true
}

func (s *sim) deliverAll() {
	for i := 0; s.deliverOne(); i++ {
		if i > 1_000_000 {
			s.t.Fatal("messages never stop")
		}
	}
}

func (s *sim) tick() {
	s.now++
	for _, n := range s.live() {
		s.cores[n].Tick()
	}
	s.collect()
}

// stabilize runs rounds of "deliver everything, tick".
func (s *sim) stabilize(rounds int) {
	for range rounds {
		s.deliverAll()
		s.tick()
	}
	s.deliverAll()
}

func (s *sim) setMembers(on []NodeID, members []NodeID) {
	for _, n := range on {
		if c := s.cores[n]; c != nil {
			c.SetMembers(members)
		}
	}
	s.collect()
}

// ---- invariants ----

type heldLock struct {
	node NodeID
	li   LockInfo
}

// checkInvariants: no two incompatible valid grants anywhere (a grant is valid while its
// node holds the quorum lease), no valid grant on a node outside a quorum, masters hold an
// LVB no older than any holder's copy of it.
func (s *sim) checkInvariants() error {
	held := map[resKey][]heldLock{}
	for _, n := range s.live() {
		c := s.cores[n]
		if !c.HasQuorum() {
			continue
		}
		for _, li := range c.Locks() {
			li.Granted = effectiveMode(li)
			if li.Granted.Valid() {
				k := resKey{li.Space, li.Resource}
				held[k] = append(held[k], heldLock{n, li})
			}
		}
	}
	for k, hs := range held {
		for i := range hs {
			for j := i + 1; j < len(hs); j++ {
				if !Compatible(hs[i].li.Granted, hs[j].li.Granted) {
					return fmt.Errorf("%s/%s: %s holds %v (token %v) and %s holds %v (token %v) at tick %d",
						k.space, k.name, hs[i].node, hs[i].li.Granted, hs[i].li.Token, hs[j].node, hs[j].li.Granted, hs[j].li.Token, s.now)
				}
			}
		}
	}
	for _, n := range s.live() {
		c := s.cores[n]
		if !c.Normal() || !c.HasQuorum() {
			continue
		}
		for k, res := range c.masters {
			for _, m := range s.live() {
				d := s.cores[m]
				if d.epoch != c.epoch || !d.Normal() {
					continue
				}
				for _, li := range d.Locks() {
					if li.Space == k.space && li.Resource == k.name && li.LVB != nil && li.LVBSeq > res.lvbSeq {
						return fmt.Errorf("%s/%s: holder %s saw LVB seq %d, master %s has %d", k.space, k.name, m, li.LVBSeq, n, res.lvbSeq)
					}
				}
			}
		}
	}
	return nil
}

// effectiveMode is the mode a holder may rely on: none once it asked to unlock; the new mode
// as soon as it asked to convert down; the old one while converting up; NL while converting
// sideways (PR <-> CW), since the master may grant either side's neighbours meanwhile.
func effectiveMode(li LockInfo) Mode {
	switch {
	case li.Pending == OpUnlock:
		return noMode
	case li.Pending != OpConvert || !li.Granted.Valid():
		return li.Granted
	case weaker(li.Requested, li.Granted):
		return li.Requested
	case weaker(li.Granted, li.Requested):
		return li.Granted
	}
	return NL
}

// dump prints cluster state for transcripts.
func (s *sim) dump(names map[NodeID]map[uint64]string) string {
	var b strings.Builder
	for _, n := range s.voters {
		c := s.cores[n]
		if c == nil {
			fmt.Fprintf(&b, "%s: down\n", n)
			continue
		}
		q := "no-quorum"
		if c.HasQuorum() {
			q = "quorum"
		}
		fmt.Fprintf(&b, "%s: epoch=%d %s %s members=%v\n", n, c.epoch, c.phase, q, c.view)
		for _, k := range c.masterKeys() {
			r := c.masters[k]
			fmt.Fprintf(&b, "  master %s/%s lvb=%s seq=%d valid=%v\n", k.space, k.name, lvbText(r.lvb), r.lvbSeq, r.lvbValid)
			for _, q := range []struct {
				n string
				l []*lkb
			}{{"granted", r.granted}, {"convert", r.converting}, {"wait", r.waiting}} {
				if len(q.l) == 0 {
					continue
				}
				var parts []string
				for _, lk := range q.l {
					nm := names[lk.id.Node][lk.id.ID]
					if nm == "" {
						nm = lk.id.String()
					}
					switch q.n {
					case "granted":
						parts = append(parts, fmt.Sprintf("%s:%v", nm, lk.gr))
					case "convert":
						parts = append(parts, fmt.Sprintf("%s:%v->%v", nm, lk.gr, lk.rq))
					default:
						parts = append(parts, fmt.Sprintf("%s:%v", nm, lk.rq))
					}
				}
				fmt.Fprintf(&b, "    %s: %s\n", q.n, strings.Join(parts, " "))
			}
		}
	}
	return b.String()
}

func lvbText(b []byte) string {
	if b == nil {
		return "-"
	}
	t := strings.TrimRight(string(b), "\x00")
	if t == "" {
		return `""`
	}
	return fmt.Sprintf("%q", t)
}
