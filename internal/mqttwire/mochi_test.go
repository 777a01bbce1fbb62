package mqttwire_test

import (
	"bufio"
	"bytes"
	"io"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/mqttwire"
)

// These tests hold the codec to mochi's, the one the hub's gateway runs:
// what a client encodes here, mochi decodes, and the other way round.

// mochiDecode decodes a client packet with mochi's codec.
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
		{"connect", mqttwire.AppendConnect(nil, "edge1", "hub/edge1/?api-version=x", "SharedAccessSignature sr=a", 30, true), func(t *testing.T, pk packets.Packet) {
			c := pk.Connect
			if pk.ProtocolVersion != 4 || c.ClientIdentifier != "edge1" || string(c.Username) != "hub/edge1/?api-version=x" ||
				string(c.Password) != "SharedAccessSignature sr=a" || c.Keepalive != 30 || !c.Clean {
				t.Fatalf("%+v", c)
			}
		}},
		{"connect anonymous", mqttwire.AppendConnect(nil, "c", "", "", 60, false), func(t *testing.T, pk packets.Packet) {
			c := pk.Connect
			if c.ClientIdentifier != "c" || c.UsernameFlag || c.PasswordFlag || c.Keepalive != 60 || c.Clean {
				t.Fatalf("%+v", c)
			}
		}},
		{"publish qos 1", mqttwire.AppendPublish(nil, "devices/d/messages/events/a=b", 1, 77, big), func(t *testing.T, pk packets.Packet) {
			if pk.TopicName != "devices/d/messages/events/a=b" || pk.PacketID != 77 || pk.FixedHeader.Qos != 1 || !bytes.Equal(pk.Payload, big) {
				t.Fatalf("topic %q id %d qos %d len %d", pk.TopicName, pk.PacketID, pk.FixedHeader.Qos, len(pk.Payload))
			}
		}},
		{"publish qos 0", mqttwire.AppendPublish(nil, "$outpost/req/x/?$rid=1", 0, 0, []byte("{}")), func(t *testing.T, pk packets.Packet) {
			if pk.TopicName != "$outpost/req/x/?$rid=1" || pk.FixedHeader.Qos != 0 || string(pk.Payload) != "{}" {
				t.Fatalf("%+v", pk)
			}
		}},
		{"publish template", func() []byte {
			p := mqttwire.NewPublishTemplate("devices/d/messages/events/", []byte("xy"), 1)
			return p.Packet(300)
		}(), func(t *testing.T, pk packets.Packet) {
			if pk.TopicName != "devices/d/messages/events/" || pk.PacketID != 300 || pk.FixedHeader.Qos != 1 || string(pk.Payload) != "xy" {
				t.Fatalf("%+v", pk)
			}
		}},
		{"puback", mqttwire.AppendPuback(nil, 513), func(t *testing.T, pk packets.Packet) {
			if pk.PacketID != 513 {
				t.Fatalf("id %d", pk.PacketID)
			}
		}},
		{"subscribe", mqttwire.AppendSubscribe(nil, 9, []string{"a/#", "b/+/c"}, []byte{1, 0}), func(t *testing.T, pk packets.Packet) {
			if pk.PacketID != 9 || len(pk.Filters) != 2 || pk.Filters[0].Filter != "a/#" || pk.Filters[0].Qos != 1 || pk.Filters[1].Filter != "b/+/c" {
				t.Fatalf("%+v", pk.Filters)
			}
		}},
		{"unsubscribe", mqttwire.AppendUnsubscribe(nil, 10, []string{"a/#"}), func(t *testing.T, pk packets.Packet) {
			if pk.PacketID != 10 || len(pk.Filters) != 1 || pk.Filters[0].Filter != "a/#" {
				t.Fatalf("%+v", pk.Filters)
			}
		}},
		{"pingreq", mqttwire.AppendPingreq(nil), func(t *testing.T, pk packets.Packet) {}},
		{"disconnect", mqttwire.AppendDisconnect(nil), func(t *testing.T, pk packets.Packet) {}},
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
	default:
		t.Fatalf("unexpected type %d", pk.FixedHeader.Type)
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
		want mqttwire.Packet
	}{
		{"connack ok", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}, mqttwire.Packet{Type: mqttwire.TypeConnack}},
		{"connack session present", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, SessionPresent: true},
			mqttwire.Packet{Type: mqttwire.TypeConnack, Present: true}},
		{"connack refused", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: 5}, mqttwire.Packet{Type: mqttwire.TypeConnack, Code: 5}},
		{"c2d qos 1", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 3, TopicName: "devices/c/messages/devicebound/", Payload: []byte("hi")},
			mqttwire.Packet{Type: mqttwire.TypePublish, QoS: 1, ID: 3, Topic: "devices/c/messages/devicebound/", Payload: []byte("hi")}},
		{"c2d redelivered", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: true}, PacketID: 4, TopicName: "t", Payload: []byte("hi")},
			mqttwire.Packet{Type: mqttwire.TypePublish, QoS: 1, Dup: true, ID: 4, Topic: "t", Payload: []byte("hi")}},
		{"reply qos 0", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "$outpost/res/200/?$rid=1"},
			mqttwire.Packet{Type: mqttwire.TypePublish, Topic: "$outpost/res/200/?$rid=1", Payload: []byte{}}},
		{"puback", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 65535}, mqttwire.Packet{Type: mqttwire.TypePuback, ID: 65535}},
		{"suback", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: 4, ReasonCodes: []byte{1, 0x80}},
			mqttwire.Packet{Type: mqttwire.TypeSuback, ID: 4, Codes: []byte{1, 0x80}}},
		{"unsuback", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback}, PacketID: 5}, mqttwire.Packet{Type: mqttwire.TypeUnsuback, ID: 5}},
		{"pingresp", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}, mqttwire.Packet{Type: mqttwire.TypePingresp}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := mochiEncode(t, tc.pk)
			var got mqttwire.Packet
			if err := got.Read(bufio.NewReader(bytes.NewReader(b)), nil, 1<<16); err != nil {
				t.Fatal(err)
			}
			if !equal(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func equal(a, b mqttwire.Packet) bool {
	return a.Type == b.Type && a.QoS == b.QoS && a.Dup == b.Dup && a.Retain == b.Retain && a.ID == b.ID &&
		a.Topic == b.Topic && bytes.Equal(a.Payload, b.Payload) && a.Present == b.Present && a.Code == b.Code &&
		bytes.Equal(a.Codes, b.Codes)
}
