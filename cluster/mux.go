package cluster

import (
	"log/slog"
	"sync"

	"github.com/ddraid/ddraid/lockd"
)

// Mux shares one frame transport between lockd and a Courier: every frame
// it sends starts with its channel byte, and Deliver routes inbound frames
// by that byte.
type Mux struct {
	send    func(to lockd.NodeID, frame []byte) error
	courier *Courier
	log     *slog.Logger
	rx      chan lockd.Frame
	stop    chan struct{}
	once    sync.Once
}

// LockdQueue is how many inbound lockd frames wait for the lockd node
// before Deliver blocks (which back-pressures the sending peer only).
const LockdQueue = 4096

// NewMux returns a Mux over send, the transport's Send. Call SetCourier
// before frames arrive.
func NewMux(send func(to lockd.NodeID, frame []byte) error, log *slog.Logger) *Mux {
	if log == nil {
		log = slog.Default()
	}
	return &Mux{send: send, log: log, rx: make(chan lockd.Frame, LockdQueue), stop: make(chan struct{})}
}

// SetCourier sets the courier messenger frames go to.
func (m *Mux) SetCourier(c *Courier) { m.courier = c }

// Lockd returns the lockd side of the mux, a lockd.Transport.
func (m *Mux) Lockd() lockd.Transport { return lockdSide{m} }

// SendMessenger sends a messenger frame; a Courier's send function.
func (m *Mux) SendMessenger(to lockd.NodeID, frame []byte) error {
	return m.send(to, prefixed(ChannelMessenger, frame))
}

func prefixed(ch byte, frame []byte) []byte {
	p := make([]byte, 1+len(frame))
	p[0] = ch
	copy(p[1:], frame)
	return p
}

// Deliver routes an inbound frame from node from; it is the transport's
// handler. A lockd frame waits for room in the lockd queue until Close.
func (m *Mux) Deliver(from lockd.NodeID, frame []byte) {
	if len(frame) == 0 {
		m.log.Warn("cluster: dropping empty frame", "from", from)
		return
	}
	switch frame[0] {
	case ChannelLockd:
		select {
		case m.rx <- lockd.Frame{From: from, Data: frame[1:]}:
		case <-m.stop:
		}
	case ChannelMessenger:
		if m.courier != nil {
			m.courier.Deliver(from, frame[1:])
		}
	default:
		m.log.Warn("cluster: dropping frame on unknown channel", "from", from, "channel", frame[0])
	}
}

// Close makes Deliver stop waiting for the lockd node.
func (m *Mux) Close() { m.once.Do(func() { close(m.stop) }) }

type lockdSide struct{ m *Mux }

func (l lockdSide) Send(to lockd.NodeID, frame []byte) error {
	return l.m.send(to, prefixed(ChannelLockd, frame))
}

func (l lockdSide) Receive() <-chan lockd.Frame { return l.m.rx }
