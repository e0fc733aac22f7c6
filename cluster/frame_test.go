package cluster

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Frame
	}{
		{"request", Frame{ID: 7, Timeout: 1500 * time.Millisecond, Msg: Message{Type: "metadata-updated", Array: "aa01", Body: []byte("x")}}},
		{"request without array or body", Frame{ID: 1 << 40, Msg: Message{Type: "ping", Body: []byte{}}}},
		{"reply ok", Frame{Reply: true, ID: 9, Code: codeOK, Text: "", Body: []byte("ack")}},
		{"reply error", Frame{Reply: true, ID: 2, Code: codeHandlerErr, Text: "disk on fire", Body: []byte{}}},
		{"reply unknown type", Frame{Reply: true, ID: 3, Code: codeUnknownType, Text: "unknown message type x", Body: []byte{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.f.Marshal(nil)
			got, err := UnmarshalFrame(p)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.f) {
				t.Fatalf("got %+v, want %+v", got, tc.f)
			}
		})
	}
}

func TestFrameRejects(t *testing.T) {
	req := (&Frame{ID: 1, Msg: Message{Type: "t", Body: []byte("b")}}).Marshal(nil)
	long := (&Frame{ID: 1, Msg: Message{Type: string(bytes.Repeat([]byte("t"), 256))}}).Marshal(nil)
	for _, tc := range []struct {
		name string
		p    []byte
	}{
		{"empty", nil},
		{"unknown kind", []byte{9, 1}},
		{"truncated", req[:len(req)-1]},
		{"trailing", append(append([]byte(nil), req...), 0)},
		{"empty type", (&Frame{ID: 1}).Marshal(nil)},
		{"type too long", long},
		{"bad reply code", []byte{kindReply, 1, numCodes, 0, 0}},
		{"huge length", []byte{kindReply, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"bad varint", []byte{kindRequest, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"huge timeout", []byte{kindRequest, 1, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 't', 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := UnmarshalFrame(tc.p); !errors.Is(err, ErrBadFrame) {
				t.Fatalf("UnmarshalFrame(%x) = %v, want ErrBadFrame", tc.p, err)
			}
		})
	}
}

func FuzzUnmarshalFrame(f *testing.F) {
	f.Add((&Frame{ID: 7, Timeout: time.Second, Msg: Message{Type: "a", Array: "b", Body: []byte("c")}}).Marshal(nil))
	f.Add((&Frame{Reply: true, ID: 7, Code: codeHandlerErr, Text: "e", Body: []byte("r")}).Marshal(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		fr, err := UnmarshalFrame(p)
		if err != nil {
			return
		}
		// Whatever decodes survives a round trip unchanged.
		again, err := UnmarshalFrame(fr.Marshal(nil))
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", fr, err)
		}
		if !reflect.DeepEqual(fr, again) {
			t.Fatalf("round trip changed %+v into %+v", fr, again)
		}
	})
}
