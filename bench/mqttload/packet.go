package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MQTT 3.1.1 control packet types (fixed header, high nibble).
const (
	typeConnect    = 1
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typePingreq    = 12
	typePingresp   = 13
	typeDisconnect = 14
)

// maxInbound bounds what we read from a broker: a publisher only ever
// receives CONNACK, PUBACK and PINGRESP, so anything large is a broken peer.
const maxInbound = 1 << 16

var errMalformed = errors.New("malformed packet")

// appendVarint appends the MQTT "remaining length" encoding [MQTT-2.2.3].
func appendVarint(b []byte, n int) []byte {
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

// appendConnect appends a CONNECT packet [MQTT-3.1].
func appendConnect(b []byte, clientID, username, password string, clean bool, keepalive uint16) []byte {
	var flags byte
	if clean {
		flags |= 0x02
	}
	if username != "" {
		flags |= 0x80
		// [MQTT-3.1.2-22]: a password is only allowed together with a username.
		if password != "" {
			flags |= 0x40
		}
	}
	var v []byte
	v = appendString(v, "MQTT")
	v = append(v, 4, flags)
	v = binary.BigEndian.AppendUint16(v, keepalive)
	v = appendString(v, clientID)
	if flags&0x80 != 0 {
		v = appendString(v, username)
	}
	if flags&0x40 != 0 {
		v = appendString(v, password)
	}
	b = append(b, typeConnect<<4)
	b = appendVarint(b, len(v))
	return append(b, v...)
}

// publishTemplate is one PUBLISH packet whose packet identifier is patched
// in place for every message, so the hot path allocates nothing.
type publishTemplate struct {
	buf   []byte
	idOff int // offset of the 2-byte packet identifier; -1 for QoS 0
}

func newPublishTemplate(topic string, payload []byte, qos byte) publishTemplate {
	rl := 2 + len(topic) + len(payload)
	if qos > 0 {
		rl += 2
	}
	b := []byte{typePublish<<4 | qos<<1}
	b = appendVarint(b, rl)
	b = appendString(b, topic)
	off := -1
	if qos > 0 {
		off = len(b)
		b = append(b, 0, 0)
	}
	b = append(b, payload...)
	return publishTemplate{buf: b, idOff: off}
}

func (p *publishTemplate) packet(id uint16) []byte {
	if p.idOff >= 0 {
		binary.BigEndian.PutUint16(p.buf[p.idOff:], id)
	}
	return p.buf
}

var (
	pingreq    = []byte{typePingreq << 4, 0}
	disconnect = []byte{typeDisconnect << 4, 0}
)

// readPacket reads one control packet and returns its type, the fixed
// header's flag nibble and its body. body aliases buf when it fits.
func readPacket(r *bufio.Reader, buf []byte) (typ, flags byte, body []byte, err error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, 0, nil, fmt.Errorf("%w: remaining length over 4 bytes", errMalformed)
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
	if n > maxInbound {
		return 0, 0, nil, fmt.Errorf("%w: %d-byte packet", errMalformed, n)
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

// noEOF turns a clean EOF inside a packet into ErrUnexpectedEOF, so that
// only an EOF between packets reads as a clean close.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// connackCodes are the CONNACK return codes of [MQTT-3.2.2.3].
var connackCodes = map[byte]string{
	1: "unacceptable protocol version",
	2: "identifier rejected",
	3: "server unavailable",
	4: "bad user name or password",
	5: "not authorized",
}

// parseConnack checks a CONNACK body [MQTT-3.2].
func parseConnack(flags byte, body []byte) error {
	if flags != 0 || len(body) != 2 || body[0]&^1 != 0 {
		return fmt.Errorf("%w: CONNACK", errMalformed)
	}
	if rc := body[1]; rc != 0 {
		if s, ok := connackCodes[rc]; ok {
			return fmt.Errorf("connection refused: %s", s)
		}
		return fmt.Errorf("connection refused: code %d", rc)
	}
	return nil
}

// parsePuback returns the packet identifier of a PUBACK body [MQTT-3.4].
func parsePuback(flags byte, body []byte) (uint16, error) {
	if flags != 0 || len(body) != 2 {
		return 0, fmt.Errorf("%w: PUBACK", errMalformed)
	}
	id := binary.BigEndian.Uint16(body)
	if id == 0 {
		return 0, fmt.Errorf("%w: PUBACK with packet id 0", errMalformed)
	}
	return id, nil
}
