package gateway

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/edgeproto"
	"outpost/internal/topic"
)

// A victim is a client subscribed to every filter it may hold, with a
// twin GET whose answer is the one PUBLISH it should receive.
type victim struct {
	cid      string
	filters  []string
	get, res string // twin GET topic, and the response topic it yields
}

// victims are the clients of the two ways the gateway serves: a device
// and a module, as on the edge (children) and the hub; and an edge
// identity holding on-behalf-of filters for its child, as on the hub.
func victims() []victim {
	return []victim{
		{cid: "victim", filters: append(topic.Filters("victim", ""), edgeproto.ResFilter),
			get: topic.TwinGet("barrier"), res: topic.TwinResponse(200, "barrier", 0)},
		{cid: "victim/mod", filters: topic.Filters("victim", "mod"),
			get: topic.TwinGet("barrier"), res: topic.TwinResponse(200, "barrier", 0)},
		{cid: "edge1", filters: []string{
			topic.OBOMethodFilter("child"), topic.OBOTwinDesiredFilter("child"),
			topic.OBOTwinResponseFilter("child"), topic.C2DFilter("child"), edgeproto.ResFilter,
		}, get: topic.OBOTwinGet("child", "barrier"), res: topic.OBOTwinResponse("child", 200, "barrier", 0)},
	}
}

// forbiddenWills are Will topics no client may set: every victim's filter
// taken as a name, valid names of pushes the gateway alone makes, other
// clients' telemetry, the attacker's own telemetry, and $outpost topics.
func forbiddenWills() []string {
	ts := []string{
		topic.MethodRequest("reboot", "1"),
		topic.TwinDesiredPatch(7),
		topic.TwinResponse(200, "1", 3),
		topic.C2D("victim", nil),
		topic.OBOMethodRequest("child", "reboot", "1"),
		"devices/victim/messages/events/",
		"devices/child/messages/events/",
		"devices/attacker/messages/events/",
		"$outpost/req/presence/?$rid=1",
		"$outpost/res/200/?$rid=1",
	}
	for _, v := range victims() {
		ts = append(ts, v.filters...)
	}
	return ts
}

// attackers are the identities that try: a device, a module, and an edge
// whose scope holds the edge victim's child.
var attackers = []string{"attacker", "attacker/m1", "edge2"}

func newWillEnv(t *testing.T) *testEnv {
	e := newEnv(t)
	for _, cid := range []string{"victim", "victim/mod", "child", "attacker", "attacker/m1"} {
		e.be.addDevice(cid, device{})
	}
	e.be.addDevice("edge1", device{edge: true, scope: []string{"child"}})
	e.be.addDevice("edge2", device{edge: true, scope: []string{"child"}})
	return e
}

// subscribeVictim connects v on a raw connection and subscribes it.
func (e *testEnv) subscribeVictim(t *testing.T, v victim) *rawClient {
	t.Helper()
	rc := e.dialRaw(t)
	rc.mustConnect(e, v.cid)
	rc.subscribe(1, v.filters...)
	pk, err := rc.read(10 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("%s: got %v %v, want SUBACK", v.cid, pk.FixedHeader, err)
	}
	for i, c := range pk.ReasonCodes {
		if c > 1 {
			t.Fatalf("%s: filter %q refused (%#x)", v.cid, v.filters[i], c)
		}
	}
	return rc
}

// receivesNothingBut makes v ask for its twin and fails on any PUBLISH
// read before the answer: whatever else was routed to v came first.
func (rc *rawClient) receivesNothingBut(v victim) {
	rc.t.Helper()
	rc.publish(v.get, nil, 0, 0)
	for {
		pk, err := rc.read(10 * time.Second)
		if err != nil {
			rc.t.Fatalf("%s: waiting for the twin response: %v", v.cid, err)
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		if pk.TopicName == v.res {
			return
		}
		rc.t.Errorf("%s received %q %q", v.cid, pk.TopicName, pk.Payload)
	}
}

// disconnects counts the Disconnected calls the backend saw for cid.
func (f *fakeBackend) disconnects(cid string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, ev := range f.events {
		if ev == "-"+cid {
			n++
		}
	}
	return n
}

// tryWill connects cid with a Will and wants CONNACK 5 and the
// connection closed. Should the server accept, it drops the TCP
// connection without DISCONNECT, which is what makes a broker publish
// the Will, and waits until the server is done with it.
func (e *testEnv) tryWill(t *testing.T, cid string, mod func(*packets.ConnectParams)) {
	t.Helper()
	before := e.be.disconnects(cid)
	rc := e.dialRaw(t)
	code := rc.connectWith(cid, username(cid), e.token(cid, time.Hour), false, mod)
	if code != packets.Err3NotAuthorized.Code {
		t.Errorf("%s: CONNACK %d, want %d (not authorized)", cid, code, packets.Err3NotAuthorized.Code)
	}
	if code != 0 {
		rc.expectClosed()
		return
	}
	rc.nc.Close()
	checkFor(t, 10*time.Second, func() error {
		if e.be.disconnects(cid) == before {
			return fmt.Errorf("%s: server not done with the connection", cid)
		}
		return nil
	})
}

func will(name string, qos byte, retain bool) func(*packets.ConnectParams) {
	return func(p *packets.ConnectParams) {
		p.WillFlag = true
		p.WillTopic = name
		p.WillPayload = []byte(`{"forged":true}`)
		p.WillQos = qos
		p.WillRetain = retain
	}
}

// TestWillRefused: a CONNECT with a Will is refused with CONNACK 5, on
// any topic, from any kind of client, so no subscriber ever receives it
// (as a forged method call, desired patch, C2D or twin response).
func TestWillRefused(t *testing.T) {
	e := newWillEnv(t)
	var rcs []*rawClient
	for _, v := range victims() {
		rcs = append(rcs, e.subscribeVictim(t, v))
	}
	for _, a := range attackers {
		for i, name := range forbiddenWills() {
			e.tryWill(t, a, will(name, byte(i%2), false))
		}
	}
	for i, v := range victims() {
		rcs[i].receivesNothingBut(v)
	}
}

// TestWillRefusedWithAnyFlags: a Will with retain, or at QoS 2, gets the
// same 3.1.1 refusal; mochi alone would answer those with v5 codes.
func TestWillRefusedWithAnyFlags(t *testing.T) {
	e := newWillEnv(t)
	for _, tc := range []struct {
		name   string
		qos    byte
		retain bool
	}{
		{"retain", 1, true},
		{"qos2", 2, false},
		{"empty topic", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := topic.FilterMethods
			if tc.name == "empty topic" {
				name = ""
			}
			e.tryWill(t, "attacker", will(name, tc.qos, tc.retain))
		})
	}
	// The refusal ends the connection before authentication.
	if n := e.be.disconnects("attacker"); n != 0 {
		t.Fatalf("attacker had %d sessions", n)
	}
}

// TestNoRetainedDelivery: whatever sits in mochi's retained store (IoT
// Hub has none, but mochi keeps $SYS there, and a bug could plant more)
// is not routed to a client that subscribes, whether its topic looks like
// the filter or is a valid name under it.
func TestNoRetainedDelivery(t *testing.T) {
	e := newWillEnv(t)
	for _, name := range forbiddenWills() {
		e.srv.mochi.Topics.RetainMessage(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName:   name,
			Payload:     []byte(`{"forged":true}`),
		})
	}
	for _, v := range victims() {
		e.subscribeVictim(t, v).receivesNothingBut(v)
	}
}

// TestRetainFlagPlantsNothing: a device's retained telemetry is served as
// telemetry (acknowledged, stored) and mochi retains nothing.
func TestRetainFlagPlantsNothing(t *testing.T) {
	e := newWillEnv(t)
	rc := e.dialRaw(t)
	rc.mustConnect(e, "attacker")
	rc.write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "devices/attacker/messages/events/",
		Payload:     []byte("retained?"),
		PacketID:    1,
	})
	pk, err := rc.read(10 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Puback {
		t.Fatalf("got %v %v, want PUBACK", pk.FixedHeader, err)
	}
	if n := len(e.be.storedMessages()); n != 1 {
		t.Fatalf("%d messages stored, want 1", n)
	}
	for name := range e.srv.mochi.Topics.Retained.GetAll() {
		if !strings.HasPrefix(name, "$SYS") {
			t.Errorf("mochi retained %q", name)
		}
	}
}

// TestPublishWildcardNameRefused: a PUBLISH whose topic name has a
// wildcard is no topic; the client is dropped, nothing is stored, and no
// subscriber receives it.
func TestPublishWildcardNameRefused(t *testing.T) {
	e := newWillEnv(t)
	v := victims()[0]
	vc := e.subscribeVictim(t, v)
	for i, name := range []string{
		topic.FilterMethods,
		topic.C2DFilter("victim"),
		"devices/attacker/messages/events/#",
		"devices/attacker/messages/events/+",
		"devices/+/messages/events/",
	} {
		rc := e.dialRaw(t)
		rc.mustConnect(e, "attacker")
		rc.publish(name, []byte("x"), 1, uint16(i+1))
		rc.expectClosed()
	}
	if n := len(e.be.storedMessages()); n != 0 {
		t.Fatalf("%d messages stored, want 0", n)
	}
	vc.receivesNothingBut(v)
}

// TestSendChecksTopicName: the gateway's own push path refuses a topic
// name with wildcards, even one equal to a filter the client holds.
func TestSendChecksTopicName(t *testing.T) {
	e := newWillEnv(t)
	v := victims()[0]
	vc := e.subscribeVictim(t, v)
	e.be.session(t, v.cid)
	e.srv.mu.Lock()
	c := e.srv.direct[v.cid]
	e.srv.mu.Unlock()
	for _, name := range v.filters {
		if _, err := c.send(name, []byte("x"), 1); !errors.Is(err, errBadTopicName) {
			t.Errorf("send(%q): %v, want %v", name, err, errBadTopicName)
		}
	}
	if _, err := c.send(topic.MethodRequest("ok", "1"), []byte("{}"), 0); err != nil {
		t.Fatalf("send to a granted topic: %v", err)
	}
	pk, err := vc.read(10 * time.Second)
	if err != nil || pk.TopicName != topic.MethodRequest("ok", "1") {
		t.Fatalf("got %q %v, want the method request", pk.TopicName, err)
	}
	vc.receivesNothingBut(v)
}
