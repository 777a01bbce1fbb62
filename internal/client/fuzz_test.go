package client

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// FuzzReadPacket feeds arbitrary bytes to the inbound packet reader: it
// must return a packet or an error, never panic or allocate beyond the
// limit.
func FuzzReadPacket(f *testing.F) {
	for _, s := range [][]byte{
		{0x20, 0x02, 0x00, 0x00},                            // CONNACK accepted
		{0x20, 0x02, 0x00, 0x05},                            // CONNACK not authorized
		{0x40, 0x02, 0x00, 0x01},                            // PUBACK 1
		{0x90, 0x03, 0x00, 0x01, 0x00},                      // SUBACK
		{0xd0, 0x00},                                        // PINGRESP
		{0x30, 0x05, 0x00, 0x01, 'a', 'h', 'i'},             // PUBLISH QoS 0
		{0x32, 0x07, 0x00, 0x01, 'a', 0x00, 0x09, 'h', 'i'}, // PUBLISH QoS 1
		{0x30, 0xff, 0xff, 0xff, 0x7f},                      // huge
		{0x30, 0xff, 0xff, 0xff, 0xff, 0x01},                // malformed length
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		br := bufio.NewReader(r)
		consumed := func() int { return len(b) - r.Len() - br.Buffered() }
		for range 8 {
			declared, varint, known := remainingLength(br)
			start := consumed()
			pk, err := readPacket(br)
			if err != nil {
				return
			}
			if !known || declared > maxInbound {
				t.Fatalf("packet with remaining length %d (known %v) read past the %d-byte limit", declared, known, maxInbound)
			}
			// Exactly one frame is read, so the next starts where the
			// server began it.
			if n := consumed() - start; n != 1+varint+declared {
				t.Fatalf("%v: read %d bytes of a %d-byte frame", pk, n, 1+varint+declared)
			}
			// A message reads as the server sent it: encoded again, it
			// reads back the same.
			if p, ok := pk.(*packets.PublishPacket); ok {
				var buf bytes.Buffer
				if err := p.Write(&buf); err != nil {
					t.Fatalf("%v does not encode: %v", p, err)
				}
				again, err := readPacket(bufio.NewReader(&buf))
				q, _ := again.(*packets.PublishPacket)
				if err != nil || q == nil || q.TopicName != p.TopicName || q.Qos != p.Qos || q.MessageID != p.MessageID || !bytes.Equal(q.Payload, p.Payload) {
					t.Fatalf("%v re-encoded reads as %v, %v", p, again, err)
				}
			}
		}
	})
}

// remainingLength peeks at the next packet's remaining length and the
// bytes it takes (a sender may use more than it needs).
func remainingLength(br *bufio.Reader) (n, size int, ok bool) {
	mult := 1
	for i := 1; i <= 4; i++ {
		b, err := br.Peek(i + 1)
		if err != nil {
			return 0, 0, false
		}
		n += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return n, i, true
		}
		mult *= 128
	}
	return 0, 0, false
}

// FuzzSplitHostPort checks the host parser used for HostName and
// GatewayHostName: whatever it accepts joins back into a dialable address.
func FuzzSplitHostPort(f *testing.F) {
	for _, s := range []string{"hub.example", "localhost:18443", "[::1]:8883", "[::1]", "::1", "h:", ":1", "h:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, p, err := splitHostPort(s)
		if err != nil {
			return
		}
		addr := net.JoinHostPort(h, p)
		if _, _, err := net.SplitHostPort(addr); err != nil {
			t.Fatalf("%q → %q, %q → %q does not split: %v", s, h, p, addr, err)
		}
	})
}
