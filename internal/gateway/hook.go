package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/topic"
)

// errWillRefused ends a connection whose CONNECT carried a Will; mochi
// ends a connection only for an ErrRejectPacket from OnPacketRead.
var errWillRefused = fmt.Errorf("CONNECT carries a Will: %w", packets.ErrRejectPacket)

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
	// mochi sets the read deadline from this after CONNACK; 0 would be
	// none at all [MQTT-3.1.2-23], held open by a client that never
	// sends again (for X.509, whose connections have no token expiry).
	if limit := capKeepAlive(h.s.cfg.MaxKeepAlive); cl.State.Keepalive == 0 || cl.State.Keepalive > limit {
		c.log.Debug("keepalive capped", "asked", cl.State.Keepalive, "given", limit)
		cl.State.Keepalive = limit
	}
	return nil
}

// capKeepAlive is limit in MQTT's whole seconds, 1 to 65535.
func capKeepAlive(limit time.Duration) uint16 {
	return uint16(max(1, min(65535, int64(limit/time.Second))))
}

// screenConnect runs on CONNECT before mochi validates it. It refuses a
// Will with CONNACK 5 (not authorized): a Will is a message mochi would
// publish for the client when its connection drops, to whoever
// subscribed, and devices publish only through the gateway. The Azure IoT
// SDKs send none. Refusing here, not in OnConnect, answers every Will
// (with retain, at QoS 2) with a 3.1.1 code, where mochi would answer
// some with v5 codes; other protocol levels are refused for the version.
func (h *hook) screenConnect(cl *mqtt.Client, pk packets.Packet) error {
	c := h.s.connOfNet(cl)
	if c == nil {
		return nil // OnConnect refuses it
	}
	c.cl.Store(cl) // so finish forgets cl
	if !pk.Connect.WillFlag || pk.ProtocolVersion != 4 {
		return nil
	}
	c.log.Warn("refusing client: CONNECT carries a Will, which IoT Hub devices may not set",
		"client", truncate(pk.Connect.ClientIdentifier), "will_topic", truncate(pk.Connect.WillTopic))
	_ = h.s.mochi.SendConnack(cl, packets.Err3NotAuthorized, false, nil)
	return errWillRefused
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
// and the gateway must instead drop the connection.
//
// mochi asks the read side for two things it does not tell apart: a
// SUBSCRIBE's filter, and a topic name it is about to route to this
// client. The first is allowed only when OnSubscribe just granted that
// filter in this SUBSCRIBE. The second is always refused: mochi would be
// routing what another client made it publish (a Will, a retained
// message), and nothing from another client reaches a device. Everything
// a device receives is written by the gateway (conn.send), past the one
// check deliverable.
func (h *hook) OnACLCheck(cl *mqtt.Client, topicOrFilter string, write bool) bool {
	if write {
		return true
	}
	c := h.s.connOf(cl)
	if c == nil {
		return false
	}
	if granted, refused := c.takeGranted(topicOrFilter); granted || refused {
		return granted
	}
	c.log.Warn("refusing a message the mqtt engine would route to this client", "topic", truncate(topicOrFilter))
	return false
}

// OnPacketRead refuses what the IoT Hub protocol does not allow before
// mochi processes it; returning ErrRejectPacket here ends the connection.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Connect {
		return pk, h.screenConnect(cl, pk)
	}
	c := h.s.connOf(cl)
	if c == nil {
		return pk, nil
	}
	c.shape(pk)
	switch pk.FixedHeader.Type {
	case packets.Publish:
		// A name with wildcards is no topic [MQTT-3.3.2-2]. mochi's own
		// validation drops the client too; refusing here says why, and
		// holds whatever mochi does.
		if !topic.ValidTopicName(pk.TopicName) {
			c.refuse("publish to an invalid topic name (empty, too long, or has + # or NUL)", "topic", truncate(pk.TopicName))
			return pk, packets.ErrRejectPacket
		}
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
		if len(pk.Payload) > h.s.cfg.MaxMessageSize && !c.takesRefusals(pk) {
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
// SDK has no use for a partial subscription. An edge that takes refusals
// (edgeproto) instead gets 0x80 in SUBACK for a filter of an identity no
// longer in its scope: it subscribes for the local clients it knows,
// before its next identity sync may have dropped a removed one, and
// would otherwise lose the link over it at every reconnect.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.s.connOf(cl)
	if c == nil {
		pk.Filters = nil
		return pk
	}
	granted := make(packets.Subscriptions, 0, len(pk.Filters))
	var refused []string
	for _, f := range pk.Filters {
		ok, err := c.allowSubscribe(f.Filter)
		switch {
		case ok:
			granted = append(granted, f)
		case errors.Is(err, errNotInScope) && c.refusals():
			c.log.Warn("subscription refused in SUBACK", "filter", truncate(f.Filter), "error", err)
			refused = append(refused, f.Filter)
		default:
			c.refuse("subscription not allowed", "filter", f.Filter, "error", err)
			pk.Filters = nil
			return pk
		}
	}
	c.grant(granted, refused)
	return pk
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	c := h.s.connOf(cl)
	if c == nil {
		return
	}
	c.grant(nil, nil) // mochi skips its check for a SUBSCRIBE it refuses whole
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] <= 1 {
			c.subscribed(f.Filter)
		}
	}
}
