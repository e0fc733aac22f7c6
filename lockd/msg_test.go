package lockd

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	lid := LockID{Node: "n2", Inc: 7, ID: 42}
	cases := []Message{
		{Type: MsgHeartbeat, From: "a", To: "b", Tick: 9, Epoch: 3, Accepted: 4, Normal: true},
		{Type: MsgRequest, From: "n2", To: "n1", Inc: 7, Epoch: 3, Space: "ls", Resource: "r", Lock: lid, Op: OpConvert, Mode: EX, Flags: ValBlk | NoQueue, Seq: 5, Low: 40, LVB: []byte("hi")},
		{Type: MsgReply, From: "n1", To: "n2", Lock: lid, Op: OpLock, Status: StatusGranted, Mode: PR, Token: Token{3, 8}, LVB: make([]byte, LVBSize), LVBSeq: 2, LVBValid: true},
		{Type: MsgReply, From: "n1", To: "n2", Lock: lid, Op: OpUnlock, Status: StatusUnlocked, Mode: noMode},
		{Type: MsgStop, From: "a", To: "b", Ballot: Ballot{N: 3, Node: "a"}, View: []NodeID{"a", "b", "c"}},
		{Type: MsgRebuildLocks, From: "a", To: "b", Ballot: Ballot{N: 3, Node: "a", Inc: 9}, Epoch: 2, Part: 1, Parts: 2,
			Records: []LockRecord{{Space: "ls", Resource: "r", Lock: lid, Granted: PR, Op: OpConvert, Mode: EX, Flags: Convert, Seq: 3, Cancel: true, LVB: []byte{}, LVBSeq: 1, LVBValid: true, Write: []byte("w")},
				{Space: "ls", Resource: "q", Lock: lid, Granted: noMode, Op: OpLock, Mode: CR}},
			Masters: []MasterRecord{{Space: "ls", Resource: "r", LVB: []byte("v"), LVBSeq: 9, Big: []LockID{lid}}}},
	}
	for _, m := range cases {
		b := m.Marshal()
		got, err := UnmarshalMessage(b)
		if err != nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%v: round trip\n got %+v\nwant %+v", m.Type, got, m)
		}
		// Every strict prefix is rejected, never accepted or panicking.
		for i := 0; i < len(b); i++ {
			if _, err := UnmarshalMessage(b[:i]); err == nil {
				t.Errorf("%v: prefix of %d/%d bytes accepted", m.Type, i, len(b))
			}
		}
	}
}

func TestUnmarshalRejects(t *testing.T) {
	good := (&Message{Type: MsgReply, From: "a", To: "b", Mode: EX}).Marshal()
	for name, b := range map[string][]byte{
		"empty":    nil,
		"version":  append([]byte{9}, good[1:]...),
		"type 0":   append([]byte{msgVersion, 0}, good[2:]...),
		"type big": append([]byte{msgVersion, byte(numMsgTypes)}, good[2:]...),
		"trailing": append(bytes.Clone(good), 0),
	} {
		if _, err := UnmarshalMessage(b); !errors.Is(err, ErrBadFrame) {
			t.Errorf("%s: err %v, want ErrBadFrame", name, err)
		}
	}
}

func FuzzUnmarshalMessage(f *testing.F) {
	f.Add((&Message{Type: MsgRequest, From: "a", To: "b", Space: "ls", Resource: "r", Mode: PR}).Marshal())
	f.Add((&Message{Type: MsgRebuildLocks, Records: []LockRecord{{Granted: EX, LVB: []byte("x")}}, Masters: []MasterRecord{{Big: []LockID{{Node: "a"}}}}}).Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := UnmarshalMessage(b)
		if err != nil {
			return
		}
		// What decodes survives a re-encoding unchanged.
		again, err := UnmarshalMessage(m.Marshal())
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encoding changed the message:\n%+v\n%+v", again, m)
		}
	})
}

func TestCompatibilityMatrix(t *testing.T) {
	// The DLM table (research/dlm-serf.md), row by row: which modes each mode admits.
	want := map[Mode][]Mode{
		NL: {NL, CR, CW, PR, PW, EX},
		CR: {NL, CR, CW, PR, PW},
		CW: {NL, CR, CW},
		PR: {NL, CR, PR},
		PW: {NL, CR},
		EX: {NL},
	}
	for a := range numModes {
		for b := range numModes {
			ok := false
			for _, x := range want[a] {
				ok = ok || x == b
			}
			if Compatible(a, b) != ok || Compatible(b, a) != ok {
				t.Errorf("Compatible(%v, %v) = %v, want %v (symmetric)", a, b, Compatible(a, b), ok)
			}
		}
	}
	for _, s := range []string{"nl", "CR", "cw", "PR", "pw", "Ex"} {
		if _, err := ParseMode(s); err != nil {
			t.Error(err)
		}
	}
	if _, err := ParseMode("XX"); err == nil {
		t.Error("ParseMode(XX) accepted")
	}
}

// FuzzCoreStep feeds whatever decodes as a message (from a voter) to a running core: it must
// never panic, whatever peers say.
func FuzzCoreStep(f *testing.F) {
	lid := LockID{Node: "n2", Inc: 1, ID: 1}
	for _, m := range []Message{
		{Type: MsgRequest, Epoch: 1, Space: "ls", Resource: "r", Lock: lid, Op: OpLock, Mode: EX, Seq: 1},
		{Type: MsgRequest, Epoch: 1, Space: "ls", Resource: "r", Lock: lid, Op: OpConvert, Mode: noMode, Seq: 2},
		{Type: MsgStop, Ballot: Ballot{N: 9, Node: "n2"}, View: []NodeID{"n1", "n2", "n3"}},
		{Type: MsgRebuild, Ballot: Ballot{N: 9, Node: "n2"}, Epoch: 2, View: []NodeID{"n1", "n2", "n3"}},
		{Type: MsgRebuildLocks, Ballot: Ballot{N: 9, Node: "n2"}, Parts: 1, Records: []LockRecord{{Space: "ls", Resource: "r", Lock: lid, Granted: PR, Op: OpConvert, Mode: noMode}}},
		{Type: MsgDone, Ballot: Ballot{N: 9, Node: "n2"}, Epoch: 2},
	} {
		m.To = "n1"
		f.Add(m.Marshal(), (&Message{Type: MsgHeartbeat, To: "n1", Tick: 1}).Marshal())
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		c, err := NewCore(Config{ID: "n1", Incarnation: 1, Voters: []NodeID{"n1", "n2", "n3"}})
		if err != nil {
			t.Fatal(err)
		}
		c.SetMembers([]NodeID{"n1", "n2", "n3"})
		if _, err := c.Lock("ls", "r", PR, ValBlk|Blocking); err != nil {
			t.Fatal(err)
		}
		for i, frame := range [][]byte{a, b, a} {
			m, err := UnmarshalMessage(frame)
			if err != nil {
				continue
			}
			m.To = "n1"
			m.From = []NodeID{"n2", "n3"}[i%2]
			c.Step(m)
			c.Tick()
			c.Advance()
		}
	})
}
