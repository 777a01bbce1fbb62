package client

import (
	"bufio"
	"bytes"
	"net"
	"testing"
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
		br := bufio.NewReader(bytes.NewReader(b))
		for range 8 {
			if _, err := readPacket(br); err != nil {
				return
			}
		}
	})
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
