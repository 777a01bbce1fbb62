package gateway

import (
	"context"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"
)

// Defaults of the rates a Config leaves zero. They are far above what a
// device of IoT Hub sends (an S1 hub takes 100 messages a second from all
// its devices together), and bound what one client can take of the
// server, so that a flood does not starve the others.
const (
	// DefaultClientPackets is how many MQTT packets a second one device
	// or module connection may send.
	DefaultClientPackets = 10_000
	// DefaultClientBytes is how many bytes a second one device or module
	// connection may send.
	DefaultClientBytes = 16 << 20
	// DefaultConnectRate is how many connections a second the endpoint
	// starts (IoT Hub S1: 100 a second for the whole hub).
	DefaultConnectRate = 500
)

// Rates are Config's ClientPackets, ClientBytes and ConnectRate as the
// hub's and the edge's configurations carry them (their flags set them):
// zero takes the default, negative means none.
type Rates struct {
	ClientPackets float64
	ClientBytes   float64
	ConnectRate   float64
}

// Apply puts r into cfg.
func (r Rates) Apply(cfg *Config) {
	cfg.ClientPackets, cfg.ClientBytes, cfg.ConnectRate = r.ClientPackets, r.ClientBytes, r.ConnectRate
}

// newLimiter is a limiter of perSecond with a tenth of a second's worth
// of burst, at least minBurst; nil (no limit) for a negative rate. A
// short burst keeps a flood from taking the CPU in spikes.
func newLimiter(perSecond float64, minBurst int) *rate.Limiter {
	if perSecond < 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(int(perSecond/10), minBurst, 1))
}

// take takes n tokens from l (nil: no limit), waiting for them as long as
// ctx lets it; more than the burst waits for the burst.
func take(ctx context.Context, l *rate.Limiter, n int) error {
	if l == nil {
		return nil
	}
	return l.WaitN(ctx, min(n, l.Burst()))
}

// subscribeWeight is what a filter of a SUBSCRIBE or UNSUBSCRIBE counts
// for against Config.ClientPackets: the server's work for it (the topic
// index, a SUBACK written on its own) is that of tens of PUBLISHes, and
// a device subscribes a handful of filters once a connection.
const subscribeWeight = 16

// shape holds the client to its rates before its next packet is read
// (see Config.ClientPackets): the read loop waits, and TCP pushes back.
func (c *conn) shape(pk packets.Packet) {
	if c.pkts == nil {
		return
	}
	n := 1
	switch pk.FixedHeader.Type {
	case packets.Subscribe, packets.Unsubscribe:
		n = subscribeWeight * max(len(pk.Filters), 1)
	}
	if take(c.ctx, c.pkts, n) == nil {
		_ = take(c.ctx, c.bytes, pk.FixedHeader.Remaining+2)
	}
}
