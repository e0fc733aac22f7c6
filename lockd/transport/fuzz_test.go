package transport

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrames decodes arbitrary bytes as a stream of frames with a small
// limit. It must never panic, never return a frame over the limit, and the
// frames it returns, encoded again, must be exactly the bytes it consumed.
func FuzzReadFrames(f *testing.F) {
	f.Add([]byte{})
	f.Add(frameBytes([]byte("hello")))
	f.Add(append(frameBytes([]byte("a")), frameBytes(nil)...))
	f.Add([]byte{0, 0, 0, 200, 1, 2})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(helloFrame("n1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 64
		r := bytes.NewReader(data)
		br := bufio.NewReaderSize(r, 16)
		var re []byte
		for {
			fr, err := readFrame(br, limit)
			if err != nil {
				if errors.Is(err, io.EOF) && len(re) != len(data) {
					t.Fatalf("clean EOF after %d of %d bytes", len(re), len(data))
				}
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if len(fr) > limit {
				t.Fatalf("frame of %d bytes over limit %d", len(fr), limit)
			}
			re = append(re, frameBytes(fr)...)
		}
		if !bytes.HasPrefix(data, re) {
			t.Fatalf("re-encoded frames are not a prefix of the input")
		}
	})
}

// FuzzParseHello parses arbitrary hello payloads: no panics, and whatever
// parses encodes back to the same bytes.
func FuzzParseHello(f *testing.F) {
	f.Add(helloFrame("n1")[frameHeaderLen:])
	f.Add([]byte("DDLK\x01\x00"))
	f.Add([]byte("DDLK\x02\x01a"))
	f.Add([]byte("DDL"))
	f.Fuzz(func(t *testing.T, p []byte) {
		name, err := parseHello(p)
		if err != nil {
			if !errors.Is(err, ErrBadHello) {
				t.Fatalf("error %v does not wrap ErrBadHello", err)
			}
			return
		}
		if ValidName(name) != nil {
			t.Fatalf("parsed invalid name %q", name)
		}
		if !bytes.Equal(helloFrame(name)[frameHeaderLen:], p) {
			t.Fatalf("hello %q does not re-encode to its input", p)
		}
	})
}
