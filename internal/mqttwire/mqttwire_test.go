package mqttwire_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"outpost/internal/mqttwire"
)

func reader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

func TestAppendLength(t *testing.T) {
	tests := []struct {
		n    int
		want []byte
	}{
		{0, []byte{0}},
		{127, []byte{0x7f}},
		{128, []byte{0x80, 0x01}},
		{16383, []byte{0xff, 0x7f}},
		{16384, []byte{0x80, 0x80, 0x01}},
		{2097151, []byte{0xff, 0xff, 0x7f}},
		{268435455, []byte{0xff, 0xff, 0xff, 0x7f}}, // the largest [MQTT-2.2.3]
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			if got := mqttwire.AppendLength(nil, tt.n); !bytes.Equal(got, tt.want) {
				t.Errorf("AppendLength(%d) = % x, want % x", tt.n, got, tt.want)
			}
		})
	}
}

func TestAppendConnect(t *testing.T) {
	tests := []struct {
		name           string
		id, user, pass string
		clean          bool
		want           []byte
	}{
		{"anonymous clean", "c", "", "", true, []byte{
			0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 'c'}},
		{"user and password", "c", "u", "p", false, []byte{
			0x10, 19, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xc0, 0, 60, 0, 1, 'c', 0, 1, 'u', 0, 1, 'p'}},
		{"user without password", "c", "u", "", true, []byte{
			0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 60, 0, 1, 'c', 0, 1, 'u'}},
		{"password without user is dropped", "c", "", "p", true, []byte{
			0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 'c'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mqttwire.AppendConnect([]byte{0xee}, tt.id, tt.user, tt.pass, 60, tt.clean)
			if !bytes.Equal(got, append([]byte{0xee}, tt.want...)) {
				t.Errorf("got  % x\nwant ee % x", got, tt.want)
			}
		})
	}
}

func TestAppend(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{"publish qos 1", mqttwire.AppendPublish(nil, "t/", 1, 0x0102, []byte("xy")), []byte{0x32, 8, 0, 2, 't', '/', 1, 2, 'x', 'y'}},
		{"publish qos 0 ignores id", mqttwire.AppendPublish(nil, "t/", 0, 9, []byte("xy")), []byte{0x30, 6, 0, 2, 't', '/', 'x', 'y'}},
		{"publish appends", mqttwire.AppendPublish([]byte{0xee}, "t", 0, 0, nil), []byte{0xee, 0x30, 3, 0, 1, 't'}},
		{"puback", mqttwire.AppendPuback(nil, 0x0203), []byte{0x40, 2, 2, 3}},
		{"subscribe", mqttwire.AppendSubscribe(nil, 7, []string{"a/#", "b"}, []byte{1, 0}),
			[]byte{0x82, 12, 0, 7, 0, 3, 'a', '/', '#', 1, 0, 1, 'b', 0}},
		{"unsubscribe", mqttwire.AppendUnsubscribe(nil, 7, []string{"a/#"}), []byte{0xa2, 7, 0, 7, 0, 3, 'a', '/', '#'}},
		{"pingreq", mqttwire.AppendPingreq(nil), []byte{0xc0, 0}},
		{"disconnect", mqttwire.AppendDisconnect(nil), []byte{0xe0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !bytes.Equal(tt.got, tt.want) {
				t.Errorf("got % x, want % x", tt.got, tt.want)
			}
		})
	}
}

func TestPublishTemplate(t *testing.T) {
	tests := []struct {
		name string
		qos  byte
		id   uint16
		want []byte
	}{
		{"qos1", 1, 0x0102, []byte{0x32, 8, 0, 2, 't', '/', 1, 2, 'x', 'y'}},
		{"qos0", 0, 9, []byte{0x30, 6, 0, 2, 't', '/', 'x', 'y'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mqttwire.NewPublishTemplate("t/", []byte("xy"), tt.qos)
			p.Packet(0xffff)
			if got := p.Packet(tt.id); !bytes.Equal(got, tt.want) {
				t.Errorf("got % x, want % x", got, tt.want)
			}
			if n := testing.AllocsPerRun(100, func() { p.Packet(tt.id) }); n != 0 {
				t.Errorf("%v allocations per packet", n)
			}
		})
	}
}

func TestReadFrame(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		typ     byte
		flags   byte
		body    []byte
		wantErr error // matched with errors.Is; nil means success
	}{
		{name: "puback", in: []byte{0x40, 2, 0, 7}, typ: mqttwire.TypePuback, body: []byte{0, 7}},
		{name: "connack", in: []byte{0x20, 2, 0, 0}, typ: mqttwire.TypeConnack, body: []byte{0, 0}},
		{name: "pingresp", in: []byte{0xd0, 0}, typ: mqttwire.TypePingresp, body: []byte{}},
		{name: "publish flags", in: []byte{0x3b, 3, 0, 1, 'a'}, typ: mqttwire.TypePublish, flags: 0xb, body: []byte{0, 1, 'a'}},
		{name: "over buf", in: append([]byte{0x30, 20}, make([]byte, 20)...), typ: mqttwire.TypePublish, body: make([]byte, 20)},
		{name: "at the limit", in: append([]byte{0x30, 0x80, 0x02}, make([]byte, 256)...), typ: mqttwire.TypePublish, body: make([]byte, 256)},
		{name: "empty stream", in: nil, wantErr: io.EOF},
		{name: "truncated body", in: []byte{0x40, 2, 0}, wantErr: io.ErrUnexpectedEOF},
		{name: "truncated length", in: []byte{0x40, 0x80}, wantErr: io.ErrUnexpectedEOF},
		{name: "five-byte length", in: []byte{0x40, 0x80, 0x80, 0x80, 0x80, 0x01}, wantErr: mqttwire.ErrMalformed},
		{name: "over the limit", in: []byte{0x30, 0x81, 0x02}, wantErr: mqttwire.ErrMalformed},
		{name: "largest length", in: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, wantErr: mqttwire.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := make([]byte, 4, 8)
			typ, flags, body, err := mqttwire.ReadFrame(reader(tt.in), buf, 256)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if typ != tt.typ || flags != tt.flags || !bytes.Equal(body, tt.body) {
				t.Errorf("got type %d flags %x body % x, want type %d flags %x body % x", typ, flags, body, tt.typ, tt.flags, tt.body)
			}
			if aliased := len(body) > 0 && &body[0] == &buf[:1][0]; aliased != (len(body) > 0 && len(body) <= cap(buf)) {
				t.Errorf("body of %d bytes aliases a buf of cap %d: %v", len(body), cap(buf), aliased)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    mqttwire.Packet
		wantErr string // "" means success
	}{
		{name: "connack accepted", in: []byte{0x20, 2, 0, 0}, want: mqttwire.Packet{Type: mqttwire.TypeConnack}},
		{name: "connack session present", in: []byte{0x20, 2, 1, 0}, want: mqttwire.Packet{Type: mqttwire.TypeConnack, Present: true}},
		{name: "connack refused", in: []byte{0x20, 2, 0, 5}, want: mqttwire.Packet{Type: mqttwire.TypeConnack, Code: 5}},
		{name: "connack short", in: []byte{0x20, 1, 0}, wantErr: "CONNACK"},
		{name: "connack reserved ack flags", in: []byte{0x20, 2, 2, 0}, wantErr: "CONNACK"},
		{name: "connack fixed-header flags", in: []byte{0x21, 2, 0, 0}, wantErr: "flags"},
		{name: "publish qos 1", in: []byte{0x32, 5, 0, 1, 'a', 0, 9}, want: mqttwire.Packet{Type: mqttwire.TypePublish, QoS: 1, ID: 9, Topic: "a", Payload: []byte{}}},
		{name: "publish dup retain", in: []byte{0x3b, 6, 0, 1, 'a', 1, 0, 'p'},
			want: mqttwire.Packet{Type: mqttwire.TypePublish, QoS: 1, Dup: true, Retain: true, ID: 256, Topic: "a", Payload: []byte("p")}},
		{name: "publish empty topic", in: []byte{0x30, 2, 0, 0}, want: mqttwire.Packet{Type: mqttwire.TypePublish, Payload: []byte{}}},
		{name: "publish short topic", in: []byte{0x30, 3, 0, 5, 'a'}, wantErr: "PUBLISH topic"},
		{name: "publish no topic length", in: []byte{0x30, 1, 0}, wantErr: "PUBLISH topic"},
		{name: "publish qos 2", in: []byte{0x34, 5, 0, 1, 'a', 0, 1}, wantErr: "QoS 2"},
		{name: "publish qos 3", in: []byte{0x36, 5, 0, 1, 'a', 0, 1}, wantErr: "QoS 3"},
		{name: "publish qos 1 without id", in: []byte{0x32, 3, 0, 1, 'a'}, wantErr: "without a packet id"},
		{name: "publish qos 1 id 0", in: []byte{0x32, 5, 0, 1, 'a', 0, 0}, wantErr: "packet id 0"},
		{name: "puback", in: []byte{0x40, 2, 0, 1}, want: mqttwire.Packet{Type: mqttwire.TypePuback, ID: 1}},
		{name: "puback id 0", in: []byte{0x40, 2, 0, 0}, wantErr: "packet id 0"},
		{name: "puback long", in: []byte{0x40, 3, 0, 1, 2}, wantErr: "PUBACK or UNSUBACK of 3 bytes"},
		{name: "puback flags", in: []byte{0x42, 2, 0, 1}, wantErr: "flags"},
		{name: "unsuback", in: []byte{0xb0, 2, 1, 1}, want: mqttwire.Packet{Type: mqttwire.TypeUnsuback, ID: 257}},
		{name: "suback", in: []byte{0x90, 4, 0, 3, 1, 0x80}, want: mqttwire.Packet{Type: mqttwire.TypeSuback, ID: 3, Codes: []byte{1, 0x80}}},
		{name: "suback without codes", in: []byte{0x90, 2, 0, 1}, wantErr: "SUBACK of 2 bytes"},
		{name: "suback id 0", in: []byte{0x90, 3, 0, 0, 1}, wantErr: "SUBACK with packet id 0"},
		{name: "unsuback short", in: []byte{0xb0, 1, 1}, wantErr: "without a packet id"},
		{name: "pingresp", in: []byte{0xd0, 0}, want: mqttwire.Packet{Type: mqttwire.TypePingresp}},
		{name: "pingresp body", in: []byte{0xd0, 1, 0}, wantErr: "body"},
		{name: "pingreq", in: []byte{0xc0, 0}, want: mqttwire.Packet{Type: mqttwire.TypePingreq}},
		{name: "disconnect", in: []byte{0xe0, 0}, want: mqttwire.Packet{Type: mqttwire.TypeDisconnect}},
		{name: "connect", in: mqttwire.AppendConnect(nil, "c", "", "", 0, true), wantErr: "unsupported packet type 1"},
		{name: "pubrec", in: []byte{0x50, 2, 0, 1}, wantErr: "unsupported packet type 5"},
		{name: "reserved type 0", in: []byte{0x00, 0}, wantErr: "unsupported packet type 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got mqttwire.Packet
			err := got.Read(reader(tt.in), nil, 1024)
			if tt.wantErr != "" {
				if !errors.Is(err, mqttwire.ErrMalformed) || !bytes.Contains([]byte(err.Error()), []byte(tt.wantErr)) {
					t.Fatalf("err = %v, want ErrMalformed with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equal(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRefusedError(t *testing.T) {
	tests := []struct {
		code byte
		want string
	}{
		{3, "connection refused: server unavailable"},
		{5, "connection refused: not authorized"},
		{99, "connection refused: code 99"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.code), func(t *testing.T) {
			if got := (&mqttwire.RefusedError{Code: tt.code}).Error(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// FuzzReadPacket feeds arbitrary peer output to the reader and decoder:
// they must not panic nor hold more than the limit, and what they accept
// must encode again to what was read.
func FuzzReadPacket(f *testing.F) {
	f.Add([]byte{0x20, 0x02, 0x00, 0x00})
	f.Add(mqttwire.AppendPublish(nil, "devices/c/messages/devicebound/a=b", 1, 9, []byte("body")))
	f.Add([]byte{0x90, 0x03, 0x00, 0x01, 0x80})
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})
	f.Add([]byte{0x20, 2, 0, 0, 0x40, 2, 0xff, 0xff})
	f.Add([]byte{0xd0, 0, 0x40, 0x80, 0x80, 0x80, 0x80})
	f.Add([]byte{0x30, 0x80, 0x01})
	f.Add([]byte{0x40, 0x82, 0x00, 0, 1}) // a length in more bytes than it needs
	const limit = 1 << 12
	f.Fuzz(func(t *testing.T, in []byte) {
		r := reader(in)
		buf := make([]byte, 8)
		for {
			typ, flags, body, err := mqttwire.ReadFrame(r, buf, limit)
			if err != nil {
				return
			}
			if len(body) > limit || cap(body) > max(limit, cap(buf)) {
				t.Fatalf("body of %d bytes (cap %d) accepted", len(body), cap(body))
			}
			var p mqttwire.Packet
			if err := p.Decode(typ, flags, body); err != nil {
				if !errors.Is(err, mqttwire.ErrMalformed) {
					t.Fatalf("decode error %v is not ErrMalformed", err)
				}
				continue
			}
			var re []byte
			switch p.Type {
			case mqttwire.TypePublish:
				re = mqttwire.AppendPublish(nil, p.Topic, p.QoS, p.ID, p.Payload)
				re[0] |= flags & 0x09 // dup and retain, which AppendPublish never sets
			case mqttwire.TypePuback:
				re = mqttwire.AppendPuback(nil, p.ID)
			default:
				continue
			}
			var q mqttwire.Packet
			if err := q.Read(reader(re), nil, limit); err != nil || !equal(p, q) {
				t.Fatalf("round trip: %+v became %+v, %v", p, q, err)
			}
			// Not the whole packet: a remaining length may come in more
			// bytes than it needs.
			if !bytes.HasSuffix(re, body) || re[0] != typ<<4|flags {
				t.Fatalf("% x decoded from %x % x", re, typ<<4|flags, body)
			}
		}
	})
}
