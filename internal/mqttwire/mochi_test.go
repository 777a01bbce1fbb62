package mqttwire_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/mqttwire"
)

// These tests hold the codec to mochi's, the one the hub's gateway runs:
// what a client encodes here, mochi decodes, and the other way round.

// mochiDecode decodes a client packet with mochi's codec.
func mochiDecode(t *testing.T, b []byte) packets.Packet {
	t.Helper()
	pk, err := tryMochiDecode(b)
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

// tryMochiDecode is mochiDecode for fuzzing, where a failure is the
// caller's to judge.
func tryMochiDecode(b []byte) (packets.Packet, error) {
	r := bufio.NewReader(bytes.NewReader(b))
	h, err := r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var pk packets.Packet
	pk.ProtocolVersion = 4
	if err := pk.FixedHeader.Decode(h); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	if r.Buffered() != 0 {
		return pk, fmt.Errorf("%d trailing bytes", r.Buffered())
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
		err = fmt.Errorf("unexpected type %d", pk.FixedHeader.Type)
	}
	return pk, err
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

// FuzzEncode holds every encoder to both decoders: what Append* writes
// decodes, here and in mochi, to exactly what was encoded, with nothing
// left over, so one packet can never bleed into the next.
func FuzzEncode(f *testing.F) {
	f.Add(byte(0), "devices/d/messages/events/a=b", "", "", []byte("body"), uint16(7), byte(1))
	f.Add(byte(0), "$outpost/req/x/?$rid=1", "", "", []byte{}, uint16(0), byte(0))
	f.Add(byte(0), "t", "", "", bytes.Repeat([]byte("x"), 200000), uint16(65535), byte(1))
	f.Add(byte(0), strings.Repeat("t", 65536), "", "", []byte("a topic one byte too long"), uint16(1), byte(1))
	f.Add(byte(1), "edge1", "hub/edge1/?api-version=x", "SharedAccessSignature sr=a", []byte(nil), uint16(30), byte(1))
	f.Add(byte(1), "c", "", "p", []byte(nil), uint16(0), byte(0))
	f.Add(byte(2), "a/#\nb/+/c", "", "", []byte(nil), uint16(9), byte(2))
	f.Add(byte(3), "a/#", "", "", []byte(nil), uint16(10), byte(0))
	f.Add(byte(4), "", "", "", []byte(nil), uint16(513), byte(0))
	f.Fuzz(func(t *testing.T, kind byte, a, b, c string, payload []byte, id uint16, flags byte) {
		var (
			pkt []byte
			got packets.Packet
		)
		switch kind % 5 {
		case 0:
			qos := flags & 1
			if qos == 1 && id == 0 {
				id = 1
			}
			err := mqttwire.CheckPublish(a, payload)
			if tooLong := len(a) > mqttwire.MaxString || 4+len(a)+len(payload) > mqttwire.MaxRemaining; tooLong != (err != nil) {
				t.Fatalf("CheckPublish(%d-byte topic, %d-byte payload) = %v", len(a), len(payload), err)
			}
			if err != nil {
				if !errors.Is(err, mqttwire.ErrTooLong) {
					t.Fatalf("CheckPublish: %v is not ErrTooLong", err)
				}
				return
			}
			pkt = mqttwire.AppendPublish(nil, a, qos, id, payload)
			tmpl := mqttwire.NewPublishTemplate(a, payload, qos)
			if !bytes.Equal(tmpl.Packet(id), pkt) {
				t.Fatal("template and AppendPublish differ")
			}
			var p mqttwire.Packet
			r := reader(pkt)
			if err := p.Read(r, nil, len(pkt)); err != nil || r.Buffered() != 0 {
				t.Fatalf("PUBLISH %.40q: %v, %d bytes left", a, err, r.Buffered())
			}
			if want := (mqttwire.Packet{Type: mqttwire.TypePublish, QoS: qos, ID: id * uint16(qos), Topic: a, Payload: payload}); !equal(p, want) &&
				!(len(p.Payload) == 0 && len(payload) == 0) {
				t.Fatalf("PUBLISH %.40q decodes to %.40q", a, p.Topic)
			}
			if !utf8.ValidString(a) || strings.ContainsRune(a, 0) {
				return // mochi refuses such a name, rightly [MQTT-1.5.4-1]
			}
			got = mochiDecodeOK(t, pkt)
			if got.TopicName != a || got.FixedHeader.Qos != qos || (qos == 1 && got.PacketID != id) || !bytes.Equal(got.Payload, payload) {
				t.Fatalf("mochi decodes PUBLISH %.40q as %.40q", a, got.TopicName)
			}
		case 1:
			// CONNECT and SUBSCRIBE fields come from configuration and
			// identities, far below MaxString, so no caller checks them.
			clean := flags&1 != 0
			if max(len(a), len(b), len(c)) > mqttwire.MaxString || !utf8.ValidString(a+b) || strings.ContainsRune(a+b, 0) {
				return
			}
			pkt = mqttwire.AppendConnect(nil, a, b, c, id, clean)
			got = mochiDecodeOK(t, pkt)
			cp := got.Connect
			wantPass := c
			if b == "" {
				wantPass = ""
			}
			if cp.ClientIdentifier != a || string(cp.Username) != b || cp.UsernameFlag != (b != "") || string(cp.Password) != wantPass ||
				cp.Keepalive != id || cp.Clean != clean || cp.WillFlag {
				t.Fatalf("CONNECT %.40q %.40q %.40q decodes as %.40q %.40q %.40q", a, b, c, cp.ClientIdentifier, cp.Username, cp.Password)
			}
		case 2, 3:
			filters := strings.Split(a, "\n")
			if id == 0 {
				id = 1
			}
			if len(a) > mqttwire.MaxString || !utf8.ValidString(a) || strings.ContainsRune(a, 0) || slices.Contains(filters, "") {
				return // mochi refuses an empty filter too
			}
			qos := make([]byte, len(filters))
			for i := range qos {
				qos[i] = byte(int(flags)>>(i%8)) & 1
			}
			if kind%5 == 2 {
				pkt = mqttwire.AppendSubscribe(nil, id, filters, qos)
			} else {
				pkt = mqttwire.AppendUnsubscribe(nil, id, filters)
			}
			got = mochiDecodeOK(t, pkt)
			if got.PacketID != id || len(got.Filters) != len(filters) {
				t.Fatalf("%d filters with id %d decode as %d with id %d", len(filters), id, len(got.Filters), got.PacketID)
			}
			for i, fl := range got.Filters {
				if fl.Filter != filters[i] || (kind%5 == 2 && fl.Qos != qos[i]) {
					t.Fatalf("filter %d: %.40q QoS %d decodes as %.40q QoS %d", i, filters[i], qos[i], fl.Filter, fl.Qos)
				}
			}
		case 4:
			if id == 0 {
				id = 1
			}
			pkt = mqttwire.AppendPuback(nil, id)
			var p mqttwire.Packet
			if err := p.Read(reader(pkt), nil, 2); err != nil || p.Type != mqttwire.TypePuback || p.ID != id {
				t.Fatalf("PUBACK %d decodes as %+v, %v", id, p, err)
			}
			if got = mochiDecodeOK(t, pkt); got.PacketID != id {
				t.Fatalf("mochi decodes PUBACK %d as %d", id, got.PacketID)
			}
		}
	})
}

func mochiDecodeOK(t *testing.T, b []byte) packets.Packet {
	t.Helper()
	pk, err := tryMochiDecode(b)
	if err != nil {
		t.Fatalf("mochi cannot decode % .40x…: %v", b, err)
	}
	return pk
}
