package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/edgeproto"
)

// refusalUser is an edge's user name asking for refusal notices.
func refusalUser(cid string) string {
	return username(cid) + "&" + edgeproto.CapParam + "=" + edgeproto.CapRefusals
}

// refusalEdge connects edge1 (scope: child1) as a raw client that takes
// refusal notices and holds the $outpost/res/# subscription.
func refusalEdge(t *testing.T, e *testEnv, user string, subscribe bool) *rawClient {
	t.Helper()
	rc := e.dialRaw(t)
	if code := rc.connect("edge1", user, e.token("edge1", time.Hour), false); code != 0 {
		t.Fatalf("CONNACK %d", code)
	}
	if subscribe {
		rc.subscribe(1, edgeproto.ResFilter)
		if pk, err := rc.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Suback {
			t.Fatalf("SUBACK: %v %v", pk.FixedHeader.Type, err)
		}
	}
	return rc
}

func refusalEnv(t *testing.T, mods ...func(*Config)) *testEnv {
	e := newEnv(t, mods...)
	e.be.addDevice("edge1", device{edge: true, scope: []string{"child1"}})
	e.be.addDevice("child1", device{})
	e.be.addDevice("dev2", device{})
	return e
}

// readAcks reads until it has the PUBACKs of pids, returning the
// refusal notices seen on the way, each with how many PUBACKs preceded it.
func readAcks(t *testing.T, rc *rawClient, pids ...uint16) map[uint16]edgeproto.Refusal {
	t.Helper()
	notices := map[uint16]edgeproto.Refusal{}
	acked := 0
	for acked < len(pids) {
		pk, err := rc.read(5 * time.Second)
		if err != nil {
			t.Fatalf("after %d PUBACKs: %v", acked, err)
		}
		switch pk.FixedHeader.Type {
		case packets.Puback:
			if pk.PacketID != pids[acked] {
				t.Fatalf("PUBACK %d, want %d (PUBLISH order)", pk.PacketID, pids[acked])
			}
			acked++
		case packets.Publish:
			if pk.TopicName != edgeproto.TopicRefusal {
				t.Fatalf("unexpected publish on %q", pk.TopicName)
			}
			var r edgeproto.Refusal
			if err := json.Unmarshal(pk.Payload, &r); err != nil {
				t.Fatalf("notice %q: %v", pk.Payload, err)
			}
			for _, p := range pids[:acked] {
				if p == r.PacketID {
					t.Fatalf("notice for %d after its PUBACK", p)
				}
			}
			notices[r.PacketID] = r
		}
	}
	return notices
}

func TestRefusedForGoodIsToldThenAcked(t *testing.T) {
	e := refusalEnv(t, func(c *Config) { c.MaxMessageSize = 1024 })
	rc := refusalEdge(t, e, refusalUser("edge1"), true)
	rc.publish("devices/child1/messages/events/seq=1", []byte("a"), 1, 10)
	rc.publish("devices/gone/messages/events/seq=2", []byte("b"), 1, 11)
	rc.publish("devices/child1/messages/events/seq=3", make([]byte, 2000), 1, 12)
	rc.publish("devices/child1/messages/events/seq=4", []byte("d"), 1, 13)
	notices := readAcks(t, rc, 10, 11, 12, 13)
	if r := notices[11]; r.Reason != edgeproto.RefusedNotInScope || !strings.Contains(r.Message, "gone") {
		t.Errorf("notice for the out-of-scope message: %+v", r)
	}
	if r := notices[12]; r.Reason != edgeproto.RefusedTooLarge {
		t.Errorf("notice for the oversized message: %+v", r)
	}
	if len(notices) != 2 {
		t.Errorf("notices %+v, want 2", notices)
	}
	msgs := e.be.storedMessages()
	if len(msgs) != 2 || msgs[0].Properties["seq"] != "1" || msgs[1].Properties["seq"] != "4" {
		t.Fatalf("stored %d messages, want seq 1 and 4", len(msgs))
	}
	// The connection lives on.
	rc.publish("devices/child1/messages/events/seq=5", []byte("e"), 1, 14)
	readAcks(t, rc, 14)
}

// Everything else that cannot be told ends the connection, unacked, as
// before: an edge that did not ask, one that cannot hear the notice, a
// device that is no edge, a QoS 0 publish — and a scope check that
// failed, which a retry may mend: nothing may be set aside for it.
func TestRefusalsNotToldDropTheConnection(t *testing.T) {
	cases := []struct {
		name      string
		user      string
		cid       string
		subscribe bool
		topic     string
		qos       byte
		inScope   func(context.Context, Identity, string, string) (bool, error)
	}{
		{name: "edge without the capability", user: username("edge1"), cid: "edge1", subscribe: true, topic: "devices/gone/messages/events/", qos: 1},
		{name: "edge not subscribed for the notice", user: refusalUser("edge1"), cid: "edge1", topic: "devices/gone/messages/events/", qos: 1},
		{name: "device that is no edge", user: refusalUser("dev2"), cid: "dev2", subscribe: true, topic: "devices/child1/messages/events/", qos: 1},
		{name: "qos 0", user: refusalUser("edge1"), cid: "edge1", subscribe: true, topic: "devices/gone/messages/events/", qos: 0},
		{name: "scope check failed", user: refusalUser("edge1"), cid: "edge1", subscribe: true, topic: "devices/child1/messages/events/", qos: 1,
			inScope: func(context.Context, Identity, string, string) (bool, error) {
				return false, errors.New("registry unavailable")
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := refusalEnv(t)
			e.be.inScope = tc.inScope
			rc := e.dialRaw(t)
			if code := rc.connect(tc.cid, tc.user, e.token(tc.cid, time.Hour), false); code != 0 {
				t.Fatalf("CONNACK %d", code)
			}
			if tc.subscribe {
				rc.subscribe(1, edgeproto.ResFilter)
				if pk, err := rc.read(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Suback {
					t.Fatalf("SUBACK: %v %v", pk.FixedHeader.Type, err)
				}
			}
			rc.publish(tc.topic, []byte("x"), tc.qos, 7)
			for {
				pk, err := rc.read(5 * time.Second)
				if err != nil {
					var ne interface{ Timeout() bool }
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatal("connection still open")
					}
					break
				}
				if pk.FixedHeader.Type == packets.Puback || pk.FixedHeader.Type == packets.Publish {
					t.Fatalf("got %v (topic %q) on a refused publish", pk.FixedHeader.Type, pk.TopicName)
				}
			}
			if n := len(e.be.storedMessages()); n != 0 {
				t.Errorf("%d messages stored", n)
			}
		})
	}
}

// An edge that takes refusals subscribing for an identity no longer in
// its scope gets 0x80 for that filter alone and keeps its connection;
// one that does not is dropped, as IoT Hub does.
func TestSubscriptionOutOfScopeRefusedInSuback(t *testing.T) {
	e := refusalEnv(t)
	rc := refusalEdge(t, e, refusalUser("edge1"), false)
	rc.subscribe(2, "$iothub/child1/methods/post/#", "$iothub/gone/methods/post/#")
	pk, err := rc.read(5 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK: %v %v", pk.FixedHeader.Type, err)
	}
	if len(pk.ReasonCodes) != 2 || pk.ReasonCodes[0] != 1 || pk.ReasonCodes[1] != 0x80 {
		t.Fatalf("SUBACK codes %v, want [1 128]", pk.ReasonCodes)
	}
	rc.publish("devices/child1/messages/events/", []byte("x"), 1, 3)
	readAcks(t, rc, 3)

	old := e.dialRaw(t)
	if code := old.connect("edge1", username("edge1"), e.token("edge1", time.Hour), false); code != 0 {
		t.Fatalf("CONNACK %d", code)
	}
	old.subscribe(2, "$iothub/gone/methods/post/#")
	old.expectClosed()
}
