// Package transporttest makes a device's attempts on a gateway over
// every transport it serves (MQTT over TLS, MQTT over WebSocket, HTTPS),
// down to single MQTT packets, for the security suites of the device
// endpoint, the hub and the edge. It imports no Outpost package but the
// topic grammar and certs, so the gateway's own tests can use it.
package transporttest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/certs"
	"outpost/internal/topic"
	"outpost/internal/wsconn"
)

// The transports a device reaches a gateway by, named as the gateway's
// Credentials.Transport names them.
const (
	MQTT      = "mqtt"    // MQTT over TLS
	WebSocket = "mqtt-ws" // MQTT over WebSocket on the HTTPS listener
	HTTPS     = "https"   // the device HTTPS API
)

// Transports are all of them, for tests that try each.
var Transports = []string{MQTT, WebSocket, HTTPS}

// webSocketPath is where gateways serve MQTT over WebSocket, as the IoT
// SDKs expect it.
const webSocketPath = "/$iothub/websocket"

// attemptTimeout bounds every step of an attempt.
const attemptTimeout = 10 * time.Second

// Endpoint is a gateway's listeners as a device dials them.
type Endpoint struct {
	MQTTAddr  string // MQTT over TLS, host:port
	HTTPSAddr string // HTTPS: the device API and the WebSocket, host:port
	// TLS trusts the server's certificate (RootCAs, ServerName).
	TLS *tls.Config
	// HubHostName fills in the IoT Hub username when Creds has none.
	HubHostName string
}

// Creds are what a device presents.
type Creds struct {
	// ClientID is the MQTT client id, deviceId or deviceId/moduleId; over
	// HTTPS it names the identity in the request path.
	ClientID string
	// Username (MQTT): empty means the IoT Hub username
	// "{HubHostName}/{ClientID}/?api-version=…".
	Username string
	// Password is the SAS token (MQTT password, HTTPS Authorization);
	// empty sends none.
	Password string
	// Cert is a TLS client certificate, for X.509.
	Cert *tls.Certificate
	// Path (HTTPS) replaces the telemetry request path, e.g. one with an
	// escaped id. It is sent as it is, unescaped by nobody.
	Path string
}

// Outcome is how an attempt to send one message ended.
type Outcome struct {
	// Code is the CONNACK return code (MQTT), or the HTTP status.
	Code int
	// Acked: the message was acknowledged (PUBACK, or HTTP 204).
	Acked bool
	// Body is the HTTPS response body.
	Body string
}

func (o Outcome) String() string {
	return fmt.Sprintf("code %d, acked %v", o.Code, o.Acked)
}

// Refused reports whether the gateway refused: a CONNACK other than 0,
// or an HTTP status of 400 or more, and no acknowledgement.
func (o Outcome) Refused() bool {
	return !o.Acked && o.Code != 0 && o.Code != http.StatusNoContent
}

// Send connects over transport with c and sends one QoS 1 telemetry
// message on the topic of c's own client id, as a device would. Over
// MQTT, a refused CONNECT must be followed by the server closing the
// connection, and an accepted one by a PUBACK or a close; anything else
// (no answer, the connection left open) is an error.
func (ep Endpoint) Send(transport string, c Creds, body []byte) (Outcome, error) {
	if transport == HTTPS {
		return ep.sendHTTPS(c, body)
	}
	nc, err := ep.Dial(transport, c.Cert)
	if err != nil {
		return Outcome{}, err
	}
	defer nc.Close()
	rc := NewRaw(nc)
	user := c.Username
	if user == "" {
		user = ep.HubHostName + "/" + c.ClientID + "/?api-version=2021-04-12"
	}
	code, err := rc.Connect(c.ClientID, user, c.Password)
	if err != nil {
		return Outcome{}, err
	}
	if code != 0 {
		if err := rc.AwaitClosed(); err != nil {
			return Outcome{Code: int(code)}, fmt.Errorf("after CONNACK %d: %w", code, err)
		}
		return Outcome{Code: int(code)}, nil
	}
	d, m, _ := strings.Cut(c.ClientID, "/")
	if err := rc.Publish(TelemetryTopic(d, m), body, 1, 1); err != nil {
		return Outcome{}, err
	}
	for {
		pk, err := rc.Read()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return Outcome{}, errors.New("no PUBACK and connection still open")
			}
			return Outcome{}, nil // closed without acknowledging
		}
		if pk.FixedHeader.Type == packets.Puback && pk.PacketID == 1 {
			return Outcome{Acked: true}, nil
		}
	}
}

// Drops connects over transport with c (which must be accepted), does
// act, and returns nil when the server then closes the connection
// without acknowledging anything: what the gateway does to a client that
// publishes or subscribes where it may not.
func (ep Endpoint) Drops(transport string, c Creds, act func(*Raw) error) error {
	nc, err := ep.Dial(transport, c.Cert)
	if err != nil {
		return err
	}
	defer nc.Close()
	rc := NewRaw(nc)
	user := c.Username
	if user == "" {
		user = ep.HubHostName + "/" + c.ClientID + "/?api-version=2021-04-12"
	}
	code, err := rc.Connect(c.ClientID, user, c.Password)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("CONNACK %d: the attempt needs an accepted connection", code)
	}
	if err := act(rc); err != nil {
		return err
	}
	return rc.AwaitClosed()
}

// TelemetryTopic is the topic a device or module sends telemetry on.
func TelemetryTopic(deviceID, moduleID string) string {
	if moduleID != "" {
		return "devices/" + deviceID + "/modules/" + moduleID + "/messages/events/"
	}
	return "devices/" + deviceID + "/messages/events/"
}

func (ep Endpoint) sendHTTPS(c Creds, body []byte) (Outcome, error) {
	path := c.Path
	if path == "" {
		d, m, _ := strings.Cut(c.ClientID, "/")
		path = "/devices/" + d
		if m != "" {
			path += "/modules/" + m
		}
		path += "/messages/events"
	}
	req, err := http.NewRequest(http.MethodPost, "https://"+ep.HTTPSAddr+path+"?api-version=2021-04-12", bytes.NewReader(body))
	if err != nil {
		return Outcome{}, err
	}
	if c.Password != "" {
		req.Header.Set("Authorization", c.Password)
	}
	tc := ep.TLS.Clone()
	if c.Cert != nil {
		tc.Certificates = []tls.Certificate{*c.Cert}
	}
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: attemptTimeout}
	resp, err := hc.Do(req)
	if err != nil {
		return Outcome{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return Outcome{Code: resp.StatusCode, Acked: resp.StatusCode == http.StatusNoContent, Body: string(b)}, nil
}

// Dial opens an MQTT byte stream to the gateway: over TLS to MQTTAddr,
// or over a WebSocket at wss://HTTPSAddr/$iothub/websocket.
func (ep Endpoint) Dial(transport string, cert *tls.Certificate) (net.Conn, error) {
	tc := ep.TLS.Clone()
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{Timeout: attemptTimeout}
	switch transport {
	case MQTT:
		nc, err := tls.DialWithDialer(d, "tcp", ep.MQTTAddr, tc)
		if err != nil {
			return nil, fmt.Errorf("dial mqtt: %w", err)
		}
		return nc, nil
	case WebSocket:
		c, err := wsconn.Dial(context.Background(), "wss://"+ep.HTTPSAddr+webSocketPath, tc, attemptTimeout, d.DialContext)
		if err != nil {
			return nil, fmt.Errorf("dial websocket: %w", err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("transport %q carries no MQTT", transport)
}

// Raw speaks MQTT 3.1.1 packet by packet over any stream, for what SDKs
// never send: floods, garbage, exact CONNACK codes.
type Raw struct {
	nc net.Conn
	r  *bufio.Reader
}

// NewRaw wraps a stream from Dial.
func NewRaw(nc net.Conn) *Raw { return &Raw{nc: nc, r: bufio.NewReader(nc)} }

// Conn is the stream.
func (rc *Raw) Conn() net.Conn { return rc.nc }

// Write encodes and writes pk at protocol level 4.
func (rc *Raw) Write(pk packets.Packet) error {
	b, err := Encode(pk)
	if err != nil {
		return err
	}
	_ = rc.nc.SetWriteDeadline(time.Now().Add(attemptTimeout))
	_, err = rc.nc.Write(b)
	return err
}

// Encode is the wire form of pk at protocol level 4.
func Encode(pk packets.Packet) ([]byte, error) {
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		return nil, fmt.Errorf("cannot encode packet type %d", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}

// Connect sends CONNECT (clean session 0, keepalive 60 s, no Will) and
// returns the CONNACK return code.
func (rc *Raw) Connect(cid, username, password string) (byte, error) {
	return rc.ConnectKeepAlive(cid, username, password, 60)
}

// ConnectKeepAlive is Connect with a keepalive in seconds.
func (rc *Raw) ConnectKeepAlive(cid, username, password string, keepAlive uint16) (byte, error) {
	err := rc.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: cid, Keepalive: keepAlive,
		Username: []byte(username), UsernameFlag: username != "",
		Password: []byte(password), PasswordFlag: password != "",
	}})
	if err != nil {
		return 0, fmt.Errorf("write CONNECT: %w", err)
	}
	pk, err := rc.Read()
	if err != nil {
		return 0, fmt.Errorf("read CONNACK: %w", err)
	}
	if pk.FixedHeader.Type != packets.Connack {
		return 0, fmt.Errorf("got packet type %d, want CONNACK", pk.FixedHeader.Type)
	}
	return pk.ReasonCode, nil
}

// Publish writes a PUBLISH.
func (rc *Raw) Publish(topicName string, payload []byte, qos byte, pid uint16) error {
	return rc.Write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topicName, Payload: payload, PacketID: pid,
	})
}

// Subscribe writes a SUBSCRIBE of filters at QoS 1.
func (rc *Raw) Subscribe(pid uint16, filters ...string) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: pid}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	return rc.Write(pk)
}

// Read reads the next packet the server sends, waiting up to 10 s.
func (rc *Raw) Read() (packets.Packet, error) {
	return rc.ReadTimeout(attemptTimeout)
}

// ReadTimeout reads the next packet, waiting up to d.
func (rc *Raw) ReadTimeout(d time.Duration) (packets.Packet, error) {
	_ = rc.nc.SetReadDeadline(time.Now().Add(d))
	b, err := rc.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b); err != nil {
		return packets.Packet{}, err
	}
	n, _, err := packets.DecodeLength(rc.r)
	if err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = n
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc.r, buf); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(buf)
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
	case packets.Suback:
		err = pk.SubackDecode(buf)
	case packets.Pingresp, packets.Disconnect:
	default:
		err = fmt.Errorf("unexpected packet type %d", fh.Type)
	}
	return pk, err
}

// AwaitClosed reads until the server closes the stream, within 10 s. A
// PUBACK read meanwhile is an error: nothing refused is acknowledged.
func (rc *Raw) AwaitClosed() error {
	deadline := time.Now().Add(attemptTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return errors.New("connection still open")
		}
		pk, err := rc.ReadTimeout(left)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return errors.New("connection still open")
			}
			return nil
		}
		if pk.FixedHeader.Type == packets.Puback {
			return fmt.Errorf("PUBACK %d on a refused connection", pk.PacketID)
		}
	}
}

// Abuse is a publish or subscribe a client may not make.
type Abuse struct {
	Name string
	Act  func(*Raw) error
}

// TopicAbuses are what the device self may not publish or subscribe to
// (other is another device), each of which must drop its connection, as
// IoT Hub does, with nothing stored. Wills are refused at CONNECT.
func TopicAbuses(self, other string) []Abuse {
	pub := func(name string, qos byte) func(*Raw) error {
		return func(rc *Raw) error { return rc.Publish(name, []byte("x"), qos, 1) }
	}
	sub := func(filters ...string) func(*Raw) error {
		return func(rc *Raw) error { return rc.Subscribe(1, filters...) }
	}
	return []Abuse{
		{"publish: telemetry of another device", pub(TelemetryTopic(other, ""), 1)},
		{"publish: telemetry of another device, QoS 0", pub(TelemetryTopic(other, ""), 0)},
		{"publish: telemetry of a module of another device", pub(TelemetryTopic(other, "m"), 1)},
		{"publish: a C2D message to itself", pub(topic.C2D(self, nil), 1)},
		{"publish: a desired patch", pub(topic.TwinDesiredPatch(3), 0)},
		{"publish: a method call", pub(topic.MethodRequest("reboot", "1"), 0)},
		{"publish: another device's twin, on behalf", pub(topic.OBOTwinGet(other, "1"), 0)},
		{"publish: another device's method response, on behalf", pub("$iothub/"+other+"/methods/res/200/?$rid=1", 0)},
		{"publish: $SYS", pub("$SYS/broker/clients", 1)},
		{"publish: a wildcard name", pub("devices/+/messages/events/", 1)},
		{"publish: outside the grammar", pub("hello/world", 0)},
		{"subscribe: another device's C2D", sub(topic.C2DFilter(other))},
		{"subscribe: another device's twin, on behalf", sub(topic.OBOTwinResponseFilter(other))},
		{"subscribe: everything", sub("#")},
		{"subscribe: every device's C2D", sub("devices/+/messages/devicebound/#")},
		{"subscribe: $SYS", sub("$SYS/#")},
		{"subscribe: one bad filter among good ones", sub(topic.FilterTwinResponses, topic.C2DFilter(other))},
	}
}

// BadPatches are twin patches the twin rules refuse: not JSON, not an
// object, a '$' key, '.' and space in keys, nested 12 deep, larger than
// maxSection bytes, data after the object.
func BadPatches(maxSection int) []string {
	return []string{
		`{nope`, `[1]`, `{"$version":3}`, `{"a.b":1}`, `{"a b":1}`,
		strings.Repeat(`{"a":`, 12) + "1" + strings.Repeat("}", 12),
		`{"big":"` + strings.Repeat("x", maxSection) + `"}`,
		`{"a":1} {}`,
	}
}

// TwinReported publishes a reported-properties patch at QoS 0 (the
// client subscribed to twin responses) and returns the status and body
// of the response to rid.
func (rc *Raw) TwinReported(rid string, patch []byte) (status int, body []byte, err error) {
	if err := rc.Publish(topic.TwinReported(rid), patch, 0, 0); err != nil {
		return 0, nil, err
	}
	for {
		pk, err := rc.Read()
		if err != nil {
			return 0, nil, fmt.Errorf("no response to %s: %w", rid, err)
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		tp, err := topic.Parse(pk.TopicName)
		if err != nil || tp.Kind != topic.KindTwinResponse || tp.RID != rid {
			return 0, nil, fmt.Errorf("response %q to %s: %v", pk.TopicName, rid, err)
		}
		return tp.Status, pk.Payload, nil
	}
}

// X509Attack holds the client certificates of the X.509 attacks on a
// device registered for CA authentication as cn, under root.
type X509Attack struct {
	Good        *tls.Certificate // a leaf of root for cn: accepted
	OtherCN     *tls.Certificate // a leaf of root for otherCN
	CAAsLeaf    *tls.Certificate // an intermediate CA of root whose CN is cn, as a client certificate
	UnknownRoot *tls.Certificate // a leaf for cn of a root nobody trusts
}

// NewX509Attack issues them, valid for an hour.
func NewX509Attack(root *certs.CA, cn, otherCN string) (X509Attack, error) {
	var a X509Attack
	issue := func(ca *certs.CA, cn string) (*tls.Certificate, error) {
		c, _, _, err := ca.IssueClient(cn, time.Hour)
		return &c, err
	}
	var err error
	if a.Good, err = issue(root, cn); err != nil {
		return a, err
	}
	if a.OtherCN, err = issue(root, otherCN); err != nil {
		return a, err
	}
	ca, err := root.NewIntermediate(cn, time.Hour)
	if err != nil {
		return a, err
	}
	a.CAAsLeaf = &tls.Certificate{Certificate: [][]byte{ca.Cert.Raw}, PrivateKey: ca.Key}
	rogue, err := certs.NewRootCA("rogue root", time.Hour)
	if err != nil {
		return a, err
	}
	a.UnknownRoot, err = issue(rogue, cn)
	return a, err
}

// Server is what Check reads of the gateway under test.
type Server struct {
	// Stored counts the messages the backend holds.
	Stored func() int64
	// Failures counts the gateway's authentication failures of a reason
	// (gateway.Server.AuthFailures).
	Failures func(reason string) uint64
}

// Check sends one message with c over transport and fails t unless the
// outcome is the one expected: with reason "", acknowledged and stored;
// else refused (401 over HTTPS), reason counted once, nothing stored.
func (ep Endpoint) Check(t testing.TB, srv Server, transport string, c Creds, reason string) {
	t.Helper()
	stored, failures := srv.Stored(), srv.Failures(reason)
	out, err := ep.Send(transport, c, []byte("attempt"))
	if err != nil {
		t.Fatal(err)
	}
	if reason == "" {
		if !out.Acked {
			t.Fatalf("%v %s: want acknowledged", out, out.Body)
		}
		if n := srv.Stored(); n != stored+1 {
			t.Errorf("%d stored, want 1", n-stored)
		}
		return
	}
	if !out.Refused() {
		t.Fatalf("%v: want refused as %s", out, reason)
	}
	if transport == HTTPS && out.Code != http.StatusUnauthorized {
		t.Errorf("HTTP %d, want 401", out.Code)
	}
	if n := srv.Failures(reason); n != failures+1 {
		t.Errorf("authentication failures %s went from %d to %d, want one more", reason, failures, n)
	}
	if n := srv.Stored(); n != stored {
		t.Errorf("%d messages stored", n-stored)
	}
}

// HandshakeSpread begins n TLS handshakes with addr together and returns
// how long after the first finished the last did: a gateway holding its
// connections to a rate spreads them out (Config.ConnectRate).
func HandshakeSpread(addr string, cfg *tls.Config, n int) (time.Duration, error) {
	type result struct {
		at  time.Time
		err error
	}
	res := make(chan result, n)
	for range n {
		go func() {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", addr, cfg)
			if err == nil {
				_ = c.Close()
			}
			res <- result{time.Now(), err}
		}()
	}
	var first, last time.Time
	for i := range n {
		r := <-res
		if r.err != nil {
			return 0, fmt.Errorf("handshake: %w", r.err)
		}
		if i == 0 {
			first = r.at
		}
		last = r.at
	}
	return last.Sub(first), nil
}
