package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/gateway/transporttest"
	"outpost/internal/message"
	"outpost/internal/mqttwire"
	"outpost/internal/poll"
	"outpost/internal/sas"
	"outpost/internal/topic"
)

// The openings FuzzMQTTConn writes before the fuzzed bytes.
const (
	openNone    = iota // the bytes alone: no identity can be proven in them
	openDevice         // a valid CONNECT of device "fuzzer"
	openEdge           // a valid CONNECT of edge "fuzzedge", whose scope holds "fuzzchild"
	openWill           // fuzzer's valid credentials, with a Will on the fuzzed topic
	openBadKey         // fuzzer, with a token signed by a key it does not have
	openUnknown        // an identity the backend does not know
	numOpenings
)

// authenticated reports whether the opening proves an identity.
func authenticated(open int) bool { return open == openDevice || open == openEdge }

// fuzzGateway is a real gateway on 127.0.0.1 with the fake backend, and
// the clients that watch it between inputs: a victim subscribed to all
// its filters for the whole run, and a fresh probe after each input.
type fuzzGateway struct {
	e      *testEnv
	plain  string // plain-TCP MQTT address (no TLS handshake per input)
	victim *rawClient
	open   [numOpenings][]byte // the CONNECT of each opening but openWill
	tokens map[string]string   // SAS tokens, signed before fuzzing (e.token may not run in it)
	runs   int
}

func newFuzzGateway(f *testing.F) *fuzzGateway {
	e := newEnv(f, func(c *Config) { c.AllowPlainTCP = true })
	for _, cid := range []string{"fuzzer", "fuzzchild", "victim", "probe"} {
		e.be.addDevice(cid, device{})
	}
	e.be.addDevice("fuzzedge", device{edge: true, scope: []string{"fuzzchild"}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go e.srv.ServeMQTT(l) //nolint:errcheck // ends with the Shutdown newEnv registered
	g := &fuzzGateway{e: e, plain: l.Addr().String(), tokens: map[string]string{}}
	for _, cid := range []string{"fuzzer", "fuzzedge", "victim", "probe"} {
		g.tokens[cid] = e.token(cid, 24*time.Hour)
	}

	otherKey := sas.GenerateKey()
	forged, err := sas.Sign(sas.DeviceResource(testHost, "fuzzer", ""), otherKey, "", time.Now().Add(24*time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	for open, p := range map[int]packets.ConnectParams{
		openDevice:  connectParams("fuzzer", username("fuzzer"), g.tokens["fuzzer"], false),
		openEdge:    connectParams("fuzzedge", username("fuzzedge"), g.tokens["fuzzedge"], false),
		openBadKey:  connectParams("fuzzer", username("fuzzer"), forged, false),
		openUnknown: connectParams("nobody", username("nobody"), forged, true),
	} {
		if g.open[open], err = transporttest.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: p}); err != nil {
			f.Fatal(err)
		}
	}

	// The victim never sends keepalives between inputs, so it asks for
	// none: a long minimisation must not look like a dropped victim.
	nc, err := net.Dial("tcp", g.plain)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { nc.Close() })
	g.victim = newRawClient(f, nc)
	v := victims()[0]
	if code := g.victim.connectWith(v.cid, username(v.cid), g.tokens[v.cid], true,
		func(p *packets.ConnectParams) { p.Keepalive = 0 }); code != 0 {
		f.Fatalf("victim: CONNACK %d", code)
	}
	g.victim.subscribe(1, v.filters...)
	if pk, err := g.victim.read(10 * time.Second); err != nil || pk.FixedHeader.Type != packets.Suback {
		f.Fatalf("victim: got %v %v, want SUBACK", pk.FixedHeader, err)
	}
	e.be.take() // each input is judged by what it alone made the backend see
	return g
}

// willConnect is fuzzer's CONNECT with a Will on willTopic; bits picks
// the Will's QoS and retain flag.
func (g *fuzzGateway) willConnect(willTopic string, bits byte) []byte {
	p := connectParams("fuzzer", username("fuzzer"), g.tokens["fuzzer"], false)
	p.WillFlag, p.WillTopic, p.WillPayload = true, willTopic, []byte(`{"forged":true}`)
	p.WillQos, p.WillRetain = bits>>3&3, bits&0x20 != 0
	b, err := transporttest.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: p})
	if err != nil {
		return nil // mochi will not encode it; nor would a client
	}
	return b
}

// exchange writes in on a fresh connection and returns everything the
// server wrote until it closed its end. It half-closes once the server
// has answered wantAcks PUBACKs, or after a moment without them: a
// client's EOF ends the connection, and the acknowledgements still in
// the server's pipeline with it, which would leave nothing to check.
func (g *fuzzGateway) exchange(t *testing.T, in []byte, wantAcks int) []byte {
	nc, err := net.Dial("tcp", g.plain)
	if err != nil {
		t.Fatalf("server down: %v", err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	chunks := make(chan []byte, 16)
	var readErr error
	go func() {
		defer close(chunks)
		for {
			b := make([]byte, 4096)
			n, err := nc.Read(b)
			if n > 0 {
				chunks <- b[:n]
			}
			if err != nil {
				readErr = err // EOF, or a reset after a refusal: an end either way
				return
			}
		}
	}()
	_, _ = nc.Write(in) // the server may close before reading it all
	var out []byte
	settle := time.NewTimer(20 * time.Millisecond)
	defer settle.Stop()
	halfClosed := false
	halfClose := func() {
		if !halfClosed {
			halfClosed = true
			_ = nc.(*net.TCPConn).CloseWrite()
		}
	}
	if wantAcks == 0 {
		halfClose()
	}
	for {
		select {
		case b, ok := <-chunks:
			if !ok {
				var ne net.Error
				if errors.As(readErr, &ne) && ne.Timeout() {
					t.Fatalf("server still holds the connection after 10 s (half-closed: %v)", halfClosed)
				}
				return out
			}
			out = append(out, b...)
			if pubacks(frames(out)) >= wantAcks {
				halfClose()
			}
		case <-settle.C:
			halfClose()
		}
	}
}

func pubacks(fs []frame) int {
	n := 0
	for _, f := range fs {
		if f.typ == packets.Puback {
			n++
		}
	}
	return n
}

// serverDone waits until the server holds no connection but the victim's.
func (g *fuzzGateway) serverDone(t *testing.T) {
	poll.Check(t, 10*time.Second, 200*time.Microsecond, func() error {
		g.e.srv.mu.Lock()
		defer g.e.srv.mu.Unlock()
		if n := len(g.e.srv.conns); n != 1 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})
}

// take returns and forgets what the backend stored and saw connect.
func (f *fakeBackend) take() (stored []*message.Message, events []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	stored, events = f.stored, f.events
	f.stored, f.events = nil, nil
	return stored, events
}

// frame is one packet of a byte stream.
type frame struct {
	typ, flags byte
	body       []byte
}

// frames splits b into packets, as far as they are well framed.
func frames(b []byte) []frame {
	r := bufio.NewReader(bytes.NewReader(b))
	var fs []frame
	for {
		// No frame of b is longer than b; a larger limit would have
		// ReadFrame allocate what a fuzzed length claims.
		typ, flags, body, err := mqttwire.ReadFrame(r, nil, len(b))
		if err != nil {
			return fs
		}
		fs = append(fs, frame{typ, flags, body})
	}
}

// qos1 lists the QoS 1 PUBLISHes of a client's stream in order, up to the
// first PUBLISH that does not decode: the server answers them with
// PUBACKs in this order [MQTT-4.6.0-2], telemetry once it is stored.
func qos1(in []byte) (pubs []mqttwire.Packet) {
	for _, f := range frames(in) {
		if f.typ != mqttwire.TypePublish {
			continue
		}
		var p mqttwire.Packet
		if p.Decode(f.typ, f.flags, f.body) != nil {
			return pubs
		}
		if p.QoS == 1 {
			pubs = append(pubs, p)
		}
	}
	return pubs
}

func isTelemetry(name string) bool {
	tp, err := topic.Parse(name)
	return err == nil && tp.Kind == topic.KindTelemetry
}

// check holds the server to the input's outcome: out is what it wrote,
// stored and events what reached the backend.
func (g *fuzzGateway) check(t *testing.T, open int, in, out []byte, stored []*message.Message, events []string) {
	fs := frames(out)
	if !authenticated(open) {
		// A refusal: at most a CONNACK that is not 0, and nothing kept.
		for i, f := range fs {
			switch {
			case f.typ == packets.Connack && i == 0 && len(f.body) >= 2 && f.body[1] != 0:
			case f.typ == packets.Disconnect:
			default:
				t.Fatalf("opening %d: unauthenticated client got packet type %d (% x)", open, f.typ, f.body)
			}
		}
		if len(stored) > 0 || len(events) > 0 {
			t.Fatalf("opening %d: unauthenticated client stored %d messages, connected %v", open, len(stored), events)
		}
		return
	}
	if len(fs) > 0 && (fs[0].typ != packets.Connack || len(fs[0].body) != 2 || fs[0].body[1] != 0) {
		t.Fatalf("valid CONNECT answered with type %d % x", fs[0].typ, fs[0].body)
	}
	allowed := []string{"fuzzer"}
	if open == openEdge {
		allowed = []string{"fuzzedge", "fuzzchild"}
	}
	for _, m := range stored {
		cid := message.ClientID(m.DeviceID, m.ModuleID)
		if !slices.Contains(allowed, cid) || m.System.ConnDeviceID != m.DeviceID || m.System.ConnModuleID != m.ModuleID {
			t.Fatalf("stored a message of %q (connection %q/%q) from %v", cid, m.System.ConnDeviceID, m.System.ConnModuleID, allowed)
		}
	}
	// Every acknowledged telemetry message is stored, in order.
	acks := pubacks(fs)
	pubs := qos1(in)
	next := 0
	for i, p := range pubs[:min(acks, len(pubs))] {
		if !isTelemetry(p.Topic) {
			continue
		}
		for next < len(stored) && !bytes.Equal(stored[next].Body, p.Payload) {
			next++
		}
		if next == len(stored) {
			t.Fatalf("PUBACK %d (of %d) for telemetry %q %q, which is not stored in order", i+1, acks, p.Topic, p.Payload)
		}
		next++
	}
}

// probe is a fresh, well-behaved client: it must connect, and get its
// QoS 1 message acknowledged and stored.
func (g *fuzzGateway) probe(t *testing.T) {
	nc, err := net.Dial("tcp", g.plain)
	if err != nil {
		t.Fatalf("server down: %v", err)
	}
	defer nc.Close()
	rc := newRawClient(t, nc)
	if code := rc.connect("probe", username("probe"), g.tokens["probe"], true); code != 0 {
		t.Fatalf("probe: CONNACK %d", code)
	}
	body := fmt.Appendf(nil, "probe %d", g.runs)
	rc.publish(topic.Telemetry("probe", "", nil), body, 1, 1)
	pk, err := rc.read(10 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != 1 {
		t.Fatalf("probe: got %v %v, want PUBACK 1", pk.FixedHeader, err)
	}
	rc.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	g.serverDone(t)
	stored, _ := g.e.be.take()
	if len(stored) != 1 || !bytes.Equal(stored[0].Body, body) || stored[0].DeviceID != "probe" {
		t.Fatalf("probe: stored %v, want its one message", stored)
	}
}

func (g *fuzzGateway) run(t *testing.T, open byte, will string, tail []byte) {
	g.runs++
	o := int(open % numOpenings)
	var in []byte
	switch o {
	case openNone:
	case openWill:
		if in = g.willConnect(will, open); in == nil {
			return
		}
	default:
		in = g.open[o]
	}
	in = append(slices.Clip(in), tail...)

	wantAcks := 0
	if authenticated(o) {
		wantAcks = len(qos1(in))
	}
	out := g.exchange(t, in, wantAcks)
	g.serverDone(t)
	stored, events := g.e.be.take()
	g.check(t, o, in, out, stored, events)
	g.victim.t = t
	g.victim.receivesNothingBut(victims()[0])
	g.probe(t)
}

// FuzzMQTTConn writes arbitrary bytes to a real gateway on a raw
// connection, after a valid or refused CONNECT (see the openings). The
// server must not panic, must refuse what does not authenticate with
// nothing stored or answered but a refusing CONNACK, must store every
// telemetry message it acknowledges, must route nothing to another
// client, and must then serve a fresh client.
func FuzzMQTTConn(f *testing.F) {
	g := newFuzzGateway(f)
	pub := func(name string, qos byte, id uint16, body string) []byte {
		return mqttwire.AppendPublish(nil, name, qos, id, []byte(body))
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tel := topic.Telemetry("fuzzer", "", map[string]string{"a": "b"})
	sub := mqttwire.AppendSubscribe(nil, 2, []string{topic.C2DFilter("fuzzer"), topic.FilterMethods}, []byte{1, 0})
	connack := []byte{0x20, 2, 0, 0}
	huge := []byte{0x30, 0xff, 0xff, 0xff, 0x7f}
	for _, s := range []struct {
		open byte
		will string
		tail []byte
	}{
		{openDevice, "", cat(pub(tel, 1, 1, "one"), pub(tel, 0, 0, "two"), pub(tel, 1, 2, "three"), mqttwire.AppendPingreq(nil))},
		{openDevice, "", cat(pub(tel, 1, 1, "one"), mqttwire.AppendDisconnect(nil), pub(tel, 1, 2, "after DISCONNECT"))},
		{openDevice, "", cat(pub(topic.TwinGet("1"), 1, 1, ""), pub(topic.TwinReported("2"), 0, 0, `{"a":1}`), sub, mqttwire.AppendPingreq(nil))},
		{openDevice, "", cat(pub(tel, 1, 1, "x"), connack)},                                       // a client that sends CONNACK
		{openDevice, "", cat(pub(tel, 1, 1, "x"), huge)},                                          // a huge remaining length
		{openDevice, "", cat(pub("", 1, 1, "empty topic"))},                                       // an empty topic
		{openDevice, "", cat(pub("devices/victim/messages/events/", 1, 1, "impersonation"))},      // another device's telemetry
		{openDevice, "", cat(pub(topic.C2D("victim", nil), 1, 1, "forged c2d"))},                  // a push only the gateway makes
		{openDevice, "", cat(pub(tel, 1, 1, "a"), pub(tel, 1, 0, "id 0"), pub(tel, 3<<1, 3, ""))}, // packet id 0, QoS 3
		{openDevice, "", cat(g.open[openDevice])},                                                 // a second CONNECT
		{openEdge, "", cat(pub(topic.Telemetry("fuzzchild", "", nil), 1, 1, "obo"), pub(topic.Telemetry("victim", "", nil), 1, 2, "out of scope"))},
		{openEdge, "", cat(mqttwire.AppendSubscribe(nil, 1, []string{topic.OBOMethodFilter("fuzzchild"), topic.OBOMethodFilter("victim")}, []byte{0, 0}))},
		{openWill, "devices/victim/messages/devicebound/", nil},
		{openWill | 1<<3, topic.MethodRequest("reboot", "1"), pub(tel, 1, 1, "after a will")},
		{openWill | 0x20, "", nil}, // an empty Will topic, retained
		{openBadKey, "", pub(tel, 1, 1, "bad key")},
		{openUnknown, "", pub(tel, 1, 1, "unknown")},
		{openNone, "", cat(pub(tel, 1, 1, "no connect"))},
		{openNone, "", huge},
		{openNone, "", connack},
		{openNone, "", []byte{0x10, 0xff, 0xff, 0xff, 0x7f}}, // CONNECT of 256 MiB
		{openNone, "", []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, 0, 0}}, // MQTT 5
	} {
		f.Add(s.open, s.will, s.tail)
	}
	f.Fuzz(func(t *testing.T, open byte, will string, tail []byte) {
		if len(tail) > 1<<16 {
			return // more of the same; keeps each input quick
		}
		g.run(t, open, will, tail)
	})
}
