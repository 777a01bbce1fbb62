package upstream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The link speaks the small part of MQTT 3.1.1 an IoT Hub device needs:
// CONNECT, PUBLISH at QoS 0 and 1 both ways, SUBSCRIBE, UNSUBSCRIBE, PING.
// It encodes and decodes packets itself so that it controls exactly when
// a PUBACK goes out (a C2D is acked only after the child acked it) and
// how writes are batched.

// Packet types [MQTT 2.2.1].
const (
	pktConnect     = 1
	pktConnack     = 2
	pktPublish     = 3
	pktPuback      = 4
	pktSubscribe   = 8
	pktSuback      = 9
	pktUnsubscribe = 10
	pktUnsuback    = 11
	pktPingreq     = 12
	pktPingresp    = 13
	pktDisconnect  = 14
)

// maxPacket bounds what the link reads: a 256 KiB message plus room for
// its topic and property bag.
const maxPacket = 256*1024 + 64*1024

var errMalformed = errors.New("malformed mqtt packet")

// packet is a decoded inbound packet.
type packet struct {
	typ     byte
	qos     byte
	dup     bool
	id      uint16
	topic   string
	payload []byte
	code    byte   // CONNACK return code
	codes   []byte // SUBACK return codes
}

func appendLength(b []byte, n int) []byte {
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

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// connectPacket encodes CONNECT for protocol level 4 [MQTT 3.1].
func connectPacket(clientID, username, password string, keepAlive uint16, clean bool) []byte {
	var flags byte = 0x80 | 0x40 // user name and password
	if clean {
		flags |= 0x02
	}
	body := appendString(nil, "MQTT")
	body = append(body, 4, flags)
	body = binary.BigEndian.AppendUint16(body, keepAlive)
	body = appendString(body, clientID)
	body = appendString(body, username)
	body = appendString(body, password)
	b := appendLength([]byte{pktConnect << 4}, len(body))
	return append(b, body...)
}

// appendPublish encodes PUBLISH; id is ignored at QoS 0.
func appendPublish(b []byte, topic string, qos byte, id uint16, payload []byte) []byte {
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	b = append(b, pktPublish<<4|qos<<1)
	b = appendLength(b, n)
	b = appendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	return append(b, payload...)
}

func appendPuback(b []byte, id uint16) []byte {
	return append(b, pktPuback<<4, 2, byte(id>>8), byte(id))
}

// subscribePacket encodes SUBSCRIBE; its fixed-header flags must be 0010
// [MQTT-3.8.1-1].
func subscribePacket(id uint16, filters []string, qos []byte) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	for i, f := range filters {
		body = appendString(body, f)
		body = append(body, qos[i])
	}
	b := appendLength([]byte{pktSubscribe<<4 | 2}, len(body))
	return append(b, body...)
}

// unsubscribePacket encodes UNSUBSCRIBE, flags 0010 [MQTT-3.10.1-1].
func unsubscribePacket(id uint16, filters []string) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	for _, f := range filters {
		body = appendString(body, f)
	}
	b := appendLength([]byte{pktUnsubscribe<<4 | 2}, len(body))
	return append(b, body...)
}

var (
	pingreqPacket    = []byte{pktPingreq << 4, 0}
	disconnectPacket = []byte{pktDisconnect << 4, 0}
)

// readPacket reads one packet from r. The payload is a fresh slice the
// caller may keep.
func readPacket(r *bufio.Reader) (packet, error) {
	h, err := r.ReadByte()
	if err != nil {
		return packet{}, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return packet{}, fmt.Errorf("%w: remaining length over 4 bytes", errMalformed)
		}
		d, err := r.ReadByte()
		if err != nil {
			return packet{}, err
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
	}
	if n > maxPacket {
		return packet{}, fmt.Errorf("%w: %d bytes is too large", errMalformed, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return packet{}, err
	}
	return decodePacket(h, body)
}

// decodePacket decodes the packets a server sends a client.
func decodePacket(h byte, body []byte) (packet, error) {
	p := packet{typ: h >> 4}
	bad := func(what string) (packet, error) {
		return packet{}, fmt.Errorf("%w: %s", errMalformed, what)
	}
	switch p.typ {
	case pktConnack:
		if len(body) != 2 {
			return bad("connack length")
		}
		p.code = body[1]
	case pktPublish:
		p.qos = h >> 1 & 3
		p.dup = h&0x08 != 0
		if p.qos > 1 {
			return bad("publish qos 2 was never asked for")
		}
		if len(body) < 2 {
			return bad("publish topic")
		}
		tl := int(binary.BigEndian.Uint16(body))
		if len(body) < 2+tl {
			return bad("publish topic")
		}
		p.topic = string(body[2 : 2+tl])
		rest := body[2+tl:]
		if p.qos > 0 {
			if len(rest) < 2 {
				return bad("publish packet id")
			}
			p.id = binary.BigEndian.Uint16(rest)
			rest = rest[2:]
		}
		p.payload = rest
	case pktPuback, pktUnsuback:
		if len(body) != 2 {
			return bad("ack length")
		}
		p.id = binary.BigEndian.Uint16(body)
	case pktSuback:
		if len(body) < 3 {
			return bad("suback length")
		}
		p.id = binary.BigEndian.Uint16(body)
		p.codes = body[2:]
	case pktPingresp:
		if len(body) != 0 {
			return bad("pingresp length")
		}
	default:
		return bad(fmt.Sprintf("packet type %d from a server", p.typ))
	}
	return p, nil
}
