// Package gatewaytest holds helpers for tests of the device endpoint,
// on the hub and on the edge alike, that need MQTT exchanges no SDK
// makes.
package gatewaytest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/gateway"
	"outpost/internal/poll"
	"outpost/internal/topic"
)

// ConnectWithWill dials addr, sends a 3.1.1 CONNECT with a QoS 1 Will on
// willTopic and returns the CONNACK return code. It then closes the TCP
// connection without DISCONNECT, which is what makes a broker that
// accepted the Will publish it.
func ConnectWithWill(addr string, tc *tls.Config, cid, username, password, willTopic string) (byte, error) {
	nc, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: cid, Keepalive: 60,
			Username: []byte(username), UsernameFlag: true, Password: []byte(password), PasswordFlag: password != "",
			WillFlag: true, WillTopic: willTopic, WillPayload: []byte(`{"forged":true}`), WillQos: 1,
		}}
	var b bytes.Buffer
	if err := pk.ConnectEncode(&b); err != nil {
		return 0, err
	}
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(b.Bytes()); err != nil {
		return 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(nc, ack[:]); err != nil {
		return 0, fmt.Errorf("read CONNACK: %w", err)
	}
	if ack[0] != packets.Connack<<4 || ack[1] != 2 {
		return 0, fmt.Errorf("want CONNACK, got % x", ack)
	}
	return ack[3], nil
}

// TryWills connects deviceID with a Will on each of topics (see
// ConnectWithWill) and fails t for each CONNACK other than 5 (not
// authorized). After each attempt it waits until srv holds no session of
// deviceID, so that a Will srv accepted has been published when it
// returns.
func TryWills(t testing.TB, srv *gateway.Server, addr string, tc *tls.Config, deviceID, username, password string, topics []string) {
	t.Helper()
	for _, w := range topics {
		code, err := ConnectWithWill(addr, tc, deviceID, username, password, w)
		if err != nil {
			t.Fatalf("Will on %q: %v", w, err)
		}
		if code != packets.Err3NotAuthorized.Code {
			t.Errorf("Will on %q: CONNACK %d, want 5 (not authorized)", w, code)
		}
		poll.Check(t, 10*time.Second, 0, func() error {
			if srv.Sessions(deviceID, "") != nil {
				return errors.New("connection with a Will not ended yet")
			}
			return nil
		})
	}
}

// ReceivesNothingElse makes c, whose every message arrives on got, ask
// for its twin, and fails t for each message received before the
// answer (whatever its status): whatever came first was routed to c.
func ReceivesNothingElse(t testing.TB, c paho.Client, got <-chan paho.Message) {
	t.Helper()
	if tok := c.Publish(topic.TwinGet("barrier"), 0, false, ""); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("twin GET: %v", tok.Error())
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case m := <-got:
			if strings.HasPrefix(m.Topic(), "$iothub/twin/res/") && strings.Contains(m.Topic(), "$rid=barrier") {
				return
			}
			t.Errorf("received %q %q", m.Topic(), m.Payload())
		case <-timeout.C:
			t.Fatal("no twin response")
		}
	}
}

// ClosedByServer writes send on a new TLS connection to addr and waits,
// within a bound far above the timeouts under test, for the server to
// close it.
func ClosedByServer(t testing.TB, addr string, roots *x509.CertPool, send string) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, send); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server left the connection open after %q", send)
	}
}
