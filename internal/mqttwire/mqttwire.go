// Package mqttwire encodes and decodes the MQTT 3.1.1 packets an IoT Hub
// device client needs: CONNECT, PUBLISH at QoS 0 and 1 both ways,
// PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT out; CONNACK,
// PUBLISH, PUBACK, SUBACK, UNSUBACK and PINGRESP in.
//
// It exists beside mochi (the server the gateway runs on) and paho's
// packets (the device SDK's codec) for the two clients that own their
// write path: the edge's upstream link and the `make bench` load
// generator. They append packets to a buffer of their own, so that many
// publishes share one write and the hot path allocates nothing, and they
// read with a hard size bound, so a broken peer cannot make them allocate
// much. Standard library only, so both can import it.
package mqttwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Control packet types, the fixed header's high nibble [MQTT-2.2.1].
const (
	TypeConnect     = 1
	TypeConnack     = 2
	TypePublish     = 3
	TypePuback      = 4
	TypeSubscribe   = 8
	TypeSuback      = 9
	TypeUnsubscribe = 10
	TypeUnsuback    = 11
	TypePingreq     = 12
	TypePingresp    = 13
	TypeDisconnect  = 14
)

// ErrMalformed marks input that breaks the protocol; the connection it
// came on is of no further use.
var ErrMalformed = errors.New("malformed mqtt packet")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// Limits of the encoding: a string's length is 16 bits [MQTT-1.5.3], the
// remaining length at most four 7-bit digits [MQTT-2.2.3].
const (
	MaxString    = 65535
	MaxRemaining = 268435455
)

// ErrTooLong marks what no packet can carry. The Append functions do not
// check: given more, they write a length that has wrapped around and the
// receiver reads the rest as further packets. Callers with input from
// elsewhere check it first (CheckPublish).
var ErrTooLong = errors.New("too long for an mqtt packet")

// CheckPublish reports whether AppendPublish can encode topic and
// payload (at QoS 1, the larger).
func CheckPublish(topic string, payload []byte) error {
	if len(topic) > MaxString {
		return fmt.Errorf("%w: %d-byte topic, the limit is %d", ErrTooLong, len(topic), MaxString)
	}
	if n := 2 + len(topic) + 2 + len(payload); n > MaxRemaining {
		return fmt.Errorf("%w: %d-byte PUBLISH, the limit is %d", ErrTooLong, n, MaxRemaining)
	}
	return nil
}

// AppendLength appends the "remaining length" encoding [MQTT-2.2.3].
func AppendLength(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// AppendString appends a length-prefixed UTF-8 string [MQTT-1.5.3].
func AppendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// AppendConnect appends CONNECT for protocol level 4 [MQTT-3.1]. An
// empty username sends none, and then no password either: a password is
// only allowed together with a username [MQTT-3.1.2-22].
func AppendConnect(b []byte, clientID, username, password string, keepAlive uint16, clean bool) []byte {
	var flags byte
	if clean {
		flags |= 0x02
	}
	if username != "" {
		flags |= 0x80
		if password != "" {
			flags |= 0x40
		}
	}
	n := 10 + 2 + len(clientID)
	if flags&0x80 != 0 {
		n += 2 + len(username)
	}
	if flags&0x40 != 0 {
		n += 2 + len(password)
	}
	b = append(b, TypeConnect<<4)
	b = AppendLength(b, n)
	b = AppendString(b, "MQTT")
	b = append(b, 4, flags)
	b = binary.BigEndian.AppendUint16(b, keepAlive)
	b = AppendString(b, clientID)
	if flags&0x80 != 0 {
		b = AppendString(b, username)
	}
	if flags&0x40 != 0 {
		b = AppendString(b, password)
	}
	return b
}

// AppendPublish appends PUBLISH [MQTT-3.3]; id is ignored at QoS 0.
func AppendPublish(b []byte, topic string, qos byte, id uint16, payload []byte) []byte {
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	b = append(b, TypePublish<<4|qos<<1)
	b = AppendLength(b, n)
	b = AppendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	return append(b, payload...)
}

// AppendPuback appends PUBACK [MQTT-3.4].
func AppendPuback(b []byte, id uint16) []byte {
	return append(b, TypePuback<<4, 2, byte(id>>8), byte(id))
}

// AppendSubscribe appends SUBSCRIBE, one requested QoS per filter; its
// fixed-header flags must be 0010 [MQTT-3.8.1-1].
func AppendSubscribe(b []byte, id uint16, filters []string, qos []byte) []byte {
	n := 2
	for _, f := range filters {
		n += 2 + len(f) + 1
	}
	b = append(b, TypeSubscribe<<4|2)
	b = AppendLength(b, n)
	b = binary.BigEndian.AppendUint16(b, id)
	for i, f := range filters {
		b = AppendString(b, f)
		b = append(b, qos[i])
	}
	return b
}

// AppendUnsubscribe appends UNSUBSCRIBE, flags 0010 [MQTT-3.10.1-1].
func AppendUnsubscribe(b []byte, id uint16, filters []string) []byte {
	n := 2
	for _, f := range filters {
		n += 2 + len(f)
	}
	b = append(b, TypeUnsubscribe<<4|2)
	b = AppendLength(b, n)
	b = binary.BigEndian.AppendUint16(b, id)
	for _, f := range filters {
		b = AppendString(b, f)
	}
	return b
}

// AppendPingreq appends PINGREQ [MQTT-3.12].
func AppendPingreq(b []byte) []byte { return append(b, TypePingreq<<4, 0) }

// AppendDisconnect appends DISCONNECT [MQTT-3.14].
func AppendDisconnect(b []byte) []byte { return append(b, TypeDisconnect<<4, 0) }

// PublishTemplate is one PUBLISH whose packet identifier is patched in
// place for every message, so sending the same message again and again
// allocates nothing.
type PublishTemplate struct {
	buf   []byte
	idOff int // offset of the 2-byte packet identifier; -1 at QoS 0
}

// NewPublishTemplate encodes the PUBLISH once.
func NewPublishTemplate(topic string, payload []byte, qos byte) PublishTemplate {
	b := AppendPublish(nil, topic, qos, 0, payload)
	off := -1
	if qos > 0 {
		off = len(b) - len(payload) - 2
	}
	return PublishTemplate{buf: b, idOff: off}
}

// Packet returns the encoded PUBLISH with packet identifier id (ignored
// at QoS 0). The bytes are the template's own: the next call overwrites
// them.
func (p *PublishTemplate) Packet(id uint16) []byte {
	if p.idOff >= 0 {
		binary.BigEndian.PutUint16(p.buf[p.idOff:], id)
	}
	return p.buf
}

// ReadFrame reads one control packet: its type, the fixed header's flag
// nibble and its body. A body longer than limit is refused before
// anything is allocated for it. body aliases buf when it fits in buf's
// capacity and is a fresh slice otherwise. An EOF inside a packet is
// io.ErrUnexpectedEOF, so only an EOF between packets reads as io.EOF.
func ReadFrame(r *bufio.Reader, buf []byte, limit int) (typ, flags byte, body []byte, err error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, 0, nil, malformed("remaining length over 4 bytes")
		}
		d, err := r.ReadByte()
		if err != nil {
			return 0, 0, nil, noEOF(err)
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
	}
	if n > limit {
		return 0, 0, nil, malformed("%d-byte packet over the limit of %d", n, limit)
	}
	if cap(buf) >= n {
		body = buf[:n]
	} else {
		body = make([]byte, n)
	}
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, 0, nil, noEOF(err)
	}
	return h >> 4, h & 0x0f, body, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Packet is a decoded packet; which fields are set depends on Type.
type Packet struct {
	Type    byte
	QoS     byte   // PUBLISH
	Dup     bool   // PUBLISH
	Retain  bool   // PUBLISH
	ID      uint16 // PUBLISH at QoS 1, PUBACK, SUBACK, UNSUBACK
	Topic   string // PUBLISH
	Payload []byte // PUBLISH; aliases the body
	Present bool   // CONNACK: session present
	Code    byte   // CONNACK return code
	Codes   []byte // SUBACK return codes; alias the body
}

// Decode decodes into p a packet read by ReadFrame: PUBLISH (either
// way) and the packets a server sends a client or a client ends with:
// CONNACK, PUBACK, SUBACK, UNSUBACK, PINGREQ, PINGRESP and DISCONNECT.
// Anything else, QoS 2 included, is ErrMalformed. A refused CONNACK is
// not an error here: its Code says why (see RefusedError). After an
// error p means nothing. p is filled
// in place rather than returned because a reader of acks decodes one for
// every message sent, and copying the struct out costs as much as the
// decoding.
func (p *Packet) Decode(typ, flags byte, body []byte) error {
	*p = Packet{Type: typ}
	if typ != TypePublish && flags != 0 {
		// Reserved flags must be as the spec lists them [MQTT-2.2.2-2].
		return malformed("type %d with flags %04b", typ, flags)
	}
	var ok bool
	switch typ {
	case TypePuback, TypeUnsuback:
		if p.ID, ok = packetID(body); !ok || len(body) != 2 {
			return badID("PUBACK or UNSUBACK", body)
		}
	case TypeConnack:
		if len(body) != 2 || body[0]&^1 != 0 {
			return malformed("CONNACK % x", body)
		}
		p.Present = body[0] == 1
		p.Code = body[1]
	case TypePublish:
		p.QoS = flags >> 1 & 3
		p.Dup = flags&0x08 != 0
		p.Retain = flags&0x01 != 0
		if p.QoS > 1 {
			return malformed("PUBLISH at QoS %d", p.QoS)
		}
		if len(body) < 2 || len(body) < 2+int(binary.BigEndian.Uint16(body)) {
			return malformed("PUBLISH topic")
		}
		tl := int(binary.BigEndian.Uint16(body))
		p.Topic = string(body[2 : 2+tl])
		rest := body[2+tl:]
		if p.QoS > 0 {
			if p.ID, ok = packetID(rest); !ok {
				return badID("PUBLISH", rest)
			}
			rest = rest[2:]
		}
		p.Payload = rest
	case TypeSuback:
		if p.ID, ok = packetID(body); !ok || len(body) < 3 {
			return badID("SUBACK", body)
		}
		p.Codes = body[2:]
	case TypePingreq, TypePingresp, TypeDisconnect:
		if len(body) != 0 {
			return malformed("type %d with a body", typ)
		}
	default:
		return malformed("unsupported packet type %d", typ)
	}
	return nil
}

// Read reads one packet into p, as ReadFrame and Decode. With a nil buf
// the payload is a fresh slice the caller may keep.
func (p *Packet) Read(r *bufio.Reader, buf []byte, limit int) error {
	typ, flags, body, err := ReadFrame(r, buf, limit)
	if err != nil {
		*p = Packet{}
		return err
	}
	return p.Decode(typ, flags, body)
}

// packetID reads a packet identifier, which is never 0 [MQTT-2.3.1-1].
func packetID(b []byte) (uint16, bool) {
	if len(b) < 2 {
		return 0, false
	}
	id := binary.BigEndian.Uint16(b)
	return id, id != 0
}

// badID says what is wrong with b, which starts with a packet id: the id
// or else its length. Kept out of decode, which it would make larger.
func badID(what string, b []byte) error {
	switch {
	case len(b) < 2:
		return malformed("%s without a packet id", what)
	case b[0] == 0 && b[1] == 0:
		return malformed("%s with packet id 0", what)
	}
	return malformed("%s of %d bytes", what, len(b))
}

// RefusedError is a CONNACK with a non-zero return code [MQTT-3.2.2.3].
// Retrying helps only for code 3 (server unavailable).
type RefusedError struct{ Code byte }

func (e *RefusedError) Error() string {
	reasons := [...]string{1: "unacceptable protocol version", 2: "identifier rejected",
		3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}
	if int(e.Code) < len(reasons) && reasons[e.Code] != "" {
		return "connection refused: " + reasons[e.Code]
	}
	return fmt.Sprintf("connection refused: code %d", e.Code)
}
