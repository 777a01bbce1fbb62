package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mochiDecode decodes a client packet with mochi's codec, as the hub's
// gateway will.
func mochiDecode(t *testing.T, b []byte) packets.Packet {
	t.Helper()
	r := bufio.NewReader(bytes.NewReader(b))
	h, err := r.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	var pk packets.Packet
	pk.ProtocolVersion = 4
	if err := pk.FixedHeader.Decode(h); err != nil {
		t.Fatal(err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	if r.Buffered() != 0 {
		t.Fatalf("%d trailing bytes", r.Buffered())
	}
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Subscribe:
		err = pk.SubscribeDecode(body)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(body)
	case packets.Pingreq, packets.Disconnect:
	default:
		t.Fatalf("unexpected type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

func TestEncodeForMochi(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 200000) // a 3-byte remaining length
	tests := []struct {
		name  string
		b     []byte
		check func(t *testing.T, pk packets.Packet)
	}{
		{"connect", connectPacket("edge1", "hub/edge1/?api-version=x", "SharedAccessSignature sr=a", 30, true), func(t *testing.T, pk packets.Packet) {
			c := pk.Connect
			if pk.ProtocolVersion != 4 || c.ClientIdentifier != "edge1" || string(c.Username) != "hub/edge1/?api-version=x" ||
				string(c.Password) != "SharedAccessSignature sr=a" || c.Keepalive != 30 || !c.Clean {
				t.Fatalf("%+v", c)
			}
		}},
		{"publish qos 1", appendPublish(nil, "devices/d/messages/events/a=b", 1, 77, big), func(t *testing.T, pk packets.Packet) {
			if pk.TopicName != "devices/d/messages/events/a=b" || pk.PacketID != 77 || pk.FixedHeader.Qos != 1 || !bytes.Equal(pk.Payload, big) {
				t.Fatalf("topic %q id %d qos %d len %d", pk.TopicName, pk.PacketID, pk.FixedHeader.Qos, len(pk.Payload))
			}
		}},
		{"publish qos 0", appendPublish(nil, "$outpost/req/x/?$rid=1", 0, 0, []byte("{}")), func(t *testing.T, pk packets.Packet) {
			if pk.TopicName != "$outpost/req/x/?$rid=1" || pk.FixedHeader.Qos != 0 || string(pk.Payload) != "{}" {
				t.Fatalf("%+v", pk)
			}
		}},
		{"puback", appendPuback(nil, 513), func(t *testing.T, pk packets.Packet) {
			if pk.PacketID != 513 {
				t.Fatalf("id %d", pk.PacketID)
			}
		}},
		{"subscribe", subscribePacket(9, []string{"a/#", "b/+/c"}, []byte{1, 0}), func(t *testing.T, pk packets.Packet) {
			if pk.PacketID != 9 || len(pk.Filters) != 2 || pk.Filters[0].Filter != "a/#" || pk.Filters[0].Qos != 1 || pk.Filters[1].Filter != "b/+/c" {
				t.Fatalf("%+v", pk.Filters)
			}
		}},
		{"unsubscribe", unsubscribePacket(10, []string{"a/#"}), func(t *testing.T, pk packets.Packet) {
			if pk.PacketID != 10 || len(pk.Filters) != 1 || pk.Filters[0].Filter != "a/#" {
				t.Fatalf("%+v", pk.Filters)
			}
		}},
		{"pingreq", pingreqPacket, func(t *testing.T, pk packets.Packet) {}},
		{"disconnect", disconnectPacket, func(t *testing.T, pk packets.Packet) {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, mochiDecode(t, tc.b)) })
	}
}

// mochiEncode encodes a server packet with mochi's codec.
func mochiEncode(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Suback:
		err = pk.SubackEncode(&buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(&buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeFromMochi(t *testing.T) {
	tests := []struct {
		name string
		pk   packets.Packet
		want packet
	}{
		{"connack ok", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}, packet{typ: pktConnack}},
		{"connack refused", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: 5}, packet{typ: pktConnack, code: 5}},
		{"c2d qos 1", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 3, TopicName: "devices/c/messages/devicebound/", Payload: []byte("hi")},
			packet{typ: pktPublish, qos: 1, id: 3, topic: "devices/c/messages/devicebound/", payload: []byte("hi")}},
		{"reply qos 0", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "$outpost/res/200/?$rid=1"},
			packet{typ: pktPublish, topic: "$outpost/res/200/?$rid=1", payload: []byte{}}},
		{"puback", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 65535}, packet{typ: pktPuback, id: 65535}},
		{"suback", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: 4, ReasonCodes: []byte{1, 0x80}},
			packet{typ: pktSuback, id: 4, codes: []byte{1, 0x80}}},
		{"unsuback", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback}, PacketID: 5}, packet{typ: pktUnsuback, id: 5}},
		{"pingresp", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}, packet{typ: pktPingresp}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := mochiEncode(t, tc.pk)
			got, err := readPacket(bufio.NewReader(bytes.NewReader(b)))
			if err != nil {
				t.Fatal(err)
			}
			if got.typ != tc.want.typ || got.qos != tc.want.qos || got.id != tc.want.id || got.topic != tc.want.topic ||
				!bytes.Equal(got.payload, tc.want.payload) || got.code != tc.want.code || !bytes.Equal(got.codes, tc.want.codes) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
	}{
		{"length over 4 bytes", []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"too large", []byte{0x30, 0xff, 0xff, 0xff, 0x7f}},
		{"short publish topic", []byte{0x30, 0x03, 0x00, 0x05, 'a'}},
		{"qos 2", []byte{0x34, 0x05, 0x00, 0x01, 'a', 0x00, 0x01}},
		{"qos 1 without id", []byte{0x32, 0x03, 0x00, 0x01, 'a'}},
		{"connack length", []byte{0x20, 0x01, 0x00}},
		{"client packet type", []byte{0x10, 0x00}},
		{"empty suback", []byte{0x90, 0x02, 0x00, 0x01}},
		{"pingresp body", []byte{0xd0, 0x01, 0x00}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readPacket(bufio.NewReader(bytes.NewReader(tc.b)))
			if !errors.Is(err, errMalformed) {
				t.Fatalf("got %v, want errMalformed", err)
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		_, err := readPacket(bufio.NewReader(bytes.NewReader([]byte{0x30, 0x05, 0x00})))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v", err)
		}
	})
}

func FuzzReadPacket(f *testing.F) {
	f.Add([]byte{0x20, 0x02, 0x00, 0x00})
	f.Add(appendPublish(nil, "devices/c/messages/devicebound/a=b", 1, 9, []byte("body")))
	f.Add([]byte{0x90, 0x03, 0x00, 0x01, 0x80})
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := readPacket(bufio.NewReader(bytes.NewReader(b)))
		if err != nil || p.typ != pktPublish {
			return
		}
		// A decoded PUBLISH survives encoding and decoding again.
		re := appendPublish(nil, p.topic, p.qos, p.id, p.payload)
		q, err := readPacket(bufio.NewReader(bytes.NewReader(re)))
		if err != nil {
			t.Fatalf("re-encoded publish: %v", err)
		}
		if q.topic != p.topic || q.qos != p.qos || q.id != p.id || !bytes.Equal(q.payload, p.payload) {
			t.Fatalf("round trip: %+v != %+v", q, p)
		}
	})
}
