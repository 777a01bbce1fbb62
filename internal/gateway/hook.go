package gateway

import (
	"bytes"
	"errors"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook plugs the gateway into mochi. It is the only hook: there is no
// allow-all auth hook, so anything this one does not allow is refused.
type hook struct {
	mqtt.HookBase
	s *Server
}

func (h *hook) ID() string { return "outpost-gateway" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnSessionEstablished,
		mqtt.OnACLCheck,
		mqtt.OnPacketRead,
		mqtt.OnPublish,
		mqtt.OnSubscribe,
		mqtt.OnSubscribed,
	}, []byte{b})
}

// OnConnect authenticates. It runs before mochi looks for an existing
// session with the same client id, so a client can only take over a
// session after proving it is that identity. It sends the refusing
// CONNACK itself, because mochi's auth hook can only say yes or no and
// the SDK should tell "server unavailable" (3, retry) from "not
// authorized" (5).
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	c := h.s.connOfNet(cl)
	if c == nil {
		return packets.ErrServerUnavailable
	}
	code, err := c.connect(cl, pk)
	if err != nil {
		_ = h.s.mochi.SendConnack(cl, code, false, nil)
		return code
	}
	return nil
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	c := h.s.connOf(cl)
	return c != nil && c.auth.Load() != nil
}

// OnSessionEstablished runs after CONNACK with the session's inherited
// subscriptions in place, so pushes from Presence.Connected can go out.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if c := h.s.connOf(cl); c != nil {
		c.established()
	}
}

// OnACLCheck allows every publish through to OnPublish, which is the one
// gate for publishes: mochi would silently drop a refused QoS 0 publish,
// and the gateway must instead drop the connection. Subscriptions are
// checked in OnSubscribe; this repeats the check so no path skips it.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write {
		return true
	}
	c := h.s.connOf(cl)
	if c == nil {
		return false
	}
	ok, _ := c.allowSubscribe(topic)
	return ok
}

// OnPacketRead refuses what the IoT Hub protocol does not allow before
// mochi processes it; returning ErrRejectPacket here ends the connection.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	c := h.s.connOf(cl)
	if c == nil {
		return pk, nil // CONNECT: not yet attached
	}
	switch pk.FixedHeader.Type {
	case packets.Publish:
		// mochi ignores $SYS publishes without a word; here they are
		// refused like any other topic a device may not use.
		if len(pk.TopicName) >= 4 && strings.EqualFold(pk.TopicName[:4], "$SYS") {
			c.refuse("publish not allowed", "topic", pk.TopicName)
			return pk, packets.ErrRejectPacket
		}
		if pk.FixedHeader.Qos > 1 {
			c.refuse("QoS 2 publish (IoT Hub supports QoS 0 and 1)", "topic", pk.TopicName)
			return pk, packets.ErrRejectPacket
		}
		if len(pk.Payload) > h.s.cfg.MaxMessageSize {
			if o := h.s.cfg.Observer; o != nil {
				o.ObserveRefused(RefusedTooLarge, 1)
			}
			c.refuse("message too large", "topic", pk.TopicName, "size", len(pk.Payload), "limit", h.s.cfg.MaxMessageSize)
			return pk, packets.ErrRejectPacket
		}
	case packets.Puback:
		c.puback(pk.PacketID)
	}
	return pk, nil
}

// OnPublish serves every publish and returns ErrRejectPacket, so mochi
// neither routes it to subscribers nor acknowledges it: the gateway
// writes the PUBACK itself once the request is durable.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	c := h.s.connOf(cl)
	if c == nil {
		cl.Stop(errors.New("publish on unknown connection"))
		return pk, packets.ErrRejectPacket
	}
	c.publish(pk)
	return pk, packets.ErrRejectPacket
}

// OnSubscribe drops a client that asks for a filter it may not have.
// IoT Hub closes the connection rather than refusing in SUBACK, and the
// SDK has no use for a partial subscription.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.s.connOf(cl)
	if c == nil {
		pk.Filters = nil
		return pk
	}
	for _, f := range pk.Filters {
		if ok, err := c.allowSubscribe(f.Filter); !ok {
			c.refuse("subscription not allowed", "filter", f.Filter, "error", err)
			pk.Filters = nil
			return pk
		}
	}
	return pk
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	c := h.s.connOf(cl)
	if c == nil {
		return
	}
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] <= 1 {
			c.subscribed(f.Filter)
		}
	}
}
