package nbd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// serverStream builds what a server sends a client: the greeting, an
// acknowledgement of NBD_OPT_DDRAID_WRITER when writer is set, the
// replies to NBD_OPT_GO (the export's size and flags, and a block size
// info when min is not 0), then a simple reply for each of cookies 0 to
// replies-1 with a payload of payload bytes.
func serverStream(writer bool, size uint64, flags uint16, min, max uint32, replies, payload int) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicInit)
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	reply := func(opt, typ uint32, data []byte) {
		b = binary.BigEndian.AppendUint64(b, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	if writer {
		reply(OptWriter, repAck, nil)
	}
	optReply := func(typ uint32, data []byte) { reply(optGo, typ, data) }
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, size)
	optReply(repInfo, binary.BigEndian.AppendUint16(info, flags))
	if min != 0 {
		bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
		bs = binary.BigEndian.AppendUint32(bs, min)
		bs = binary.BigEndian.AppendUint32(bs, 4096)
		optReply(repInfo, binary.BigEndian.AppendUint32(bs, max))
	}
	optReply(repAck, nil)
	for cookie := range replies {
		b = binary.BigEndian.AppendUint32(b, magicSimpleReply)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint64(b, uint64(cookie))
		b = append(b, make([]byte, payload)...)
	}
	return b
}

// FuzzClient feeds the client arbitrary server bytes: greeting, option
// replies and transmission replies, as a broken or hostile nbd:// member
// could send. The client must fail with an error or work; it must not
// panic, hang or read past what it asked for. blockSizes asks for
// NBD_INFO_BLOCK_SIZE (the client then keeps to the minimum itself);
// writer sends a writer identity first, as a ddraid writer does to an
// agent.
func FuzzClient(f *testing.F) {
	const flags = FlagHasFlags | FlagSendFlush | FlagSendTrim | FlagSendWriteZeroes
	for _, w := range []bool{false, true} {
		for _, s := range [][]byte{
			serverStream(w, 1<<20, flags, 0, 0, 3, 512),
			serverStream(w, 1<<20, flags, 512, 32<<20, 3, 512),
			serverStream(w, 1<<20, flags, 4096, 32<<20, 4, 4096),
			serverStream(w, 1<<20, flags|FlagReadOnly, 1, 1, 2, 1),
			serverStream(w, 0, 0, 0, 0, 0, 0),
			serverStream(w, 1<<20, flags, 3, 32<<20, 0, 0), // a minimum that is not a power of two
		} {
			f.Add(s, false, w)
			f.Add(s, true, w)
		}
	}
	f.Fuzz(func(t *testing.T, server []byte, blockSizes, writer bool) {
		// A hang would stall the fuzzer without a report; this makes it
		// one (every wait below ends within 10 s of the stream's end).
		wd := time.AfterFunc(30*time.Second, func() {
			panic(fmt.Sprintf("client still busy after 30 s on server bytes %x (blockSizes %v, writer %v)", server, blockSizes, writer))
		})
		defer wd.Stop()
		cc, sc := net.Pipe()
		drained := make(chan struct{})
		go func() { defer close(drained); io.Copy(io.Discard, sc) }()
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			sc.Write(server)
			sc.Close() // then the client reads EOF
		}()
		defer func() {
			cc.Close()
			<-sent
			<-drained
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		o := ClientOptions{Export: "disk", BlockSizes: blockSizes}
		if writer {
			o.Writer = &Writer{Array: [16]byte{1}, Slot: 1, Epoch: 2, RegionSize: 1 << 20}
		}
		c, err := NewClientWith(ctx, cc, o)
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1000)
		if _, err := c.ReadAt(buf, 100); err == nil && c.Size() < 1100 {
			t.Fatalf("read of 100+1000 succeeded on an export of %d bytes", c.Size())
		}
		c.WriteAt(buf, 100)
		c.Flush()
	})
}
