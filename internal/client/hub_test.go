package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/message"
	"outpost/internal/poll"
	"outpost/internal/sas"
	"outpost/internal/topic"
	"outpost/internal/wsconn"
)

// This file is the test's IoT Hub: a mochi-mqtt broker behind TLS (and
// TLS WebSocket) listeners, with a hook that authenticates like the hub
// (username format, SAS signature, expiry and audience, or a client
// certificate) and answers twin and method traffic.

const testHubName = "hub.example" // the hub's identity; never resolved

// testPKI is a root CA with a server certificate for localhost,
// 127.0.0.1 and testHubName, and a way to issue device certificates.
type testPKI struct {
	pool   *x509.CertPool
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	server tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{pool: x509.NewCertPool(), ca: ca, caKey: caKey}
	p.pool.AddCert(ca)
	p.server = p.issue(t, "localhost", x509.ExtKeyUsageServerAuth)
	return p
}

func (p *testPKI) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost", testHubName}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// testHub is the hub side of the tests.
type testHub struct {
	t        *testing.T
	pki      *testPKI
	srv      *mqtt.Server
	addr     string // MQTT over TLS
	wsAddr   string // MQTT over TLS WebSocket
	httpSrv  *http.Server
	identity string // HostName the tokens must name

	mu        sync.Mutex        // guards the fields below
	keys      map[string]string // clientID → base64 key; absent: X.509 only
	usernames map[string][]string
	passwords map[string][]string
	telemetry []received
	subs      map[string][]string // clientID → every filter subscribed, in order
	methodRes map[string]chan methodResult
	reported  map[string]any
	repVer    int64
	// manualAck holds telemetry PUBACKs until ackHeld.
	manualAck bool
	held      []heldPub
	// twinError makes reported patches fail with an errorCode body.
	twinError bool
	// forget drops a client's subscriptions when it disconnects, so a
	// reconnected client must subscribe again.
	forget bool
}

type received struct {
	clientID string
	topic    topic.Topic
	payload  []byte
}

type heldPub struct {
	cl *mqtt.Client
	id uint16
}

type methodResult struct {
	status  int
	payload []byte
}

func newTestHub(t *testing.T) *testHub {
	t.Helper()
	h := &testHub{
		t:         t,
		pki:       newTestPKI(t),
		identity:  testHubName,
		keys:      map[string]string{},
		usernames: map[string][]string{},
		passwords: map[string][]string{},
		subs:      map[string][]string{},
		methodRes: map[string]chan methodResult{},
		repVer:    1,
	}
	h.srv = mqtt.New(&mqtt.Options{
		InlineClient: true,
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err := h.srv.AddHook(&hubHook{h: h}, nil); err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{h.pki.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    h.pki.pool,
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	if err := h.srv.AddListener(&netListener{id: "tls", ln: ln}); err != nil {
		t.Fatal(err)
	}
	wln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	h.wsAddr = wln.Addr().String()
	if err := h.srv.AddListener(&wsListener{id: "ws", ln: wln}); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.srv.Close() })
	return h
}

func (h *testHub) addKey(clientID string) string {
	k := sas.GenerateKey()
	h.mu.Lock()
	h.keys[clientID] = k
	h.mu.Unlock()
	return k
}

// connString returns a connection string for a new identity with a key.
func (h *testHub) connString(deviceID, moduleID, extra string) string {
	k := h.addKey(message.ClientID(deviceID, moduleID))
	cs := "HostName=" + testHubName + ";DeviceId=" + deviceID
	if moduleID != "" {
		cs += ";ModuleId=" + moduleID
	}
	return cs + ";SharedAccessKey=" + k + extra
}

// config returns a client config for cs that dials this hub.
func (h *testHub) config(cs string) Config {
	return Config{ConnectionString: cs, RootCAs: h.pki.pool, DialAddr: h.addr}
}

func (h *testHub) passwordsOf(clientID string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.passwords[clientID]...)
}

func (h *testHub) subsOf(clientID string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.subs[clientID]...)
}

func (h *testHub) received() []received {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]received(nil), h.telemetry...)
}

func (h *testHub) heldCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.held)
}

// ackHeld sends the held PUBACKs, in the order the publishes came.
func (h *testHub) ackHeld() {
	h.mu.Lock()
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, p := range held {
		p.cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: p.id})
	}
}

// drop cuts a client's connection from the server side.
func (h *testHub) drop(clientID string) {
	cl, ok := h.srv.Clients.Get(clientID)
	if !ok {
		h.t.Fatalf("drop: no client %q", clientID)
	}
	cl.Stop(errors.New("dropped by test"))
}

// publish sends to every subscriber of the topic, as the hub's C2D,
// module-input, desired and method paths do.
func (h *testHub) publish(t string, payload []byte, qos byte) {
	if err := h.srv.Publish(t, payload, false, qos); err != nil {
		h.t.Fatal(err)
	}
}

// invoke calls a direct method and waits for the answer.
func (h *testHub) invoke(name string, payload []byte) (methodResult, error) {
	rid := strconv.FormatInt(time.Now().UnixNano(), 36)
	ch := make(chan methodResult, 1)
	h.mu.Lock()
	h.methodRes[rid] = ch
	h.mu.Unlock()
	h.publish(topic.MethodRequest(name, rid), payload, 0)
	select {
	case r := <-ch:
		return r, nil
	case <-time.After(10 * time.Second):
		return methodResult{}, errors.New("method timed out")
	}
}

type hubHook struct {
	mqtt.HookBase
	h *testHub
}

func (k *hubHook) ID() string { return "testhub" }

func (k *hubHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish,
		mqtt.OnSubscribe, mqtt.OnDisconnect}, []byte{b})
}

func (k *hubHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// OnConnectAuthenticate checks what IoT Hub checks.
func (k *hubHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	h := k.h
	id := cl.ID
	user, pw := string(pk.Connect.Username), string(pk.Connect.Password)
	h.mu.Lock()
	h.usernames[id] = append(h.usernames[id], user)
	h.passwords[id] = append(h.passwords[id], pw)
	key, hasKey := h.keys[id]
	h.mu.Unlock()
	// The username's host part is the HostName, with any :port.
	want := "/" + id + "/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1"
	if !bytes.HasSuffix([]byte(user), []byte(want)) || !sameHostPrefix(user[:len(user)-len(want)], h.identity) {
		return false
	}
	if pk.Connect.Clean {
		return false // the SDK always keeps its session
	}
	d, m, err := topic.ParseClientID(id)
	if err != nil {
		return false
	}
	if pw == "" {
		tc, ok := cl.Net.Conn.(interface{ ConnectionState() tls.ConnectionState })
		if !ok {
			return false
		}
		certs := tc.ConnectionState().PeerCertificates
		return len(certs) > 0 && certs[0].Subject.CommonName == id
	}
	if !hasKey {
		return false
	}
	tok, err := sas.ParseToken(pw)
	if err != nil || !tok.Verify(key) || sas.Validate(tok, time.Now(), 5*time.Second) != nil {
		return false
	}
	return sas.MatchesDevice(tok, h.identity, d, m)
}

func sameHostPrefix(hostPort, host string) bool {
	if h, _, err := net.SplitHostPort(hostPort); err == nil {
		hostPort = h
	}
	return hostPort == host
}

func (k *hubHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	h := k.h
	h.mu.Lock()
	for _, f := range pk.Filters {
		h.subs[cl.ID] = append(h.subs[cl.ID], f.Filter)
	}
	h.mu.Unlock()
	return pk
}

func (k *hubHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h := k.h
	h.mu.Lock()
	forget := h.forget
	h.mu.Unlock()
	if forget && !cl.IsTakenOver() {
		h.srv.UnsubscribeClient(cl)
	}
}

// OnPublish plays the hub: telemetry is recorded (and acked now or held),
// twin and method topics are answered on the client's own connection.
func (k *hubHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h := k.h
	if cl.Net.Inline {
		return pk, nil // the test's own publish towards a client
	}
	tp, err := topic.Parse(pk.TopicName)
	if err != nil {
		h.t.Errorf("hub: client %s published on %q: %v", cl.ID, pk.TopicName, err)
		return pk, packets.ErrRejectPacket
	}
	reply := func(t string, body []byte) {
		cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: t, Payload: body})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch tp.Kind {
	case topic.KindTelemetry:
		h.telemetry = append(h.telemetry, received{clientID: cl.ID, topic: tp, payload: pk.Payload})
		if h.manualAck {
			h.held = append(h.held, heldPub{cl: cl, id: pk.PacketID})
			return pk, packets.ErrRejectPacket // no PUBACK yet
		}
		return pk, nil
	case topic.KindTwinGet:
		reported, _ := json.Marshal(h.reported)
		body := fmt.Sprintf(`{"desired":{"interval":5,"$version":3},"reported":{"props":%s,"$version":%d}}`, reported, h.repVer)
		reply(topic.TwinResponse(200, tp.RID, 0), []byte(body))
	case topic.KindTwinReported:
		if h.twinError {
			reply(topic.TwinResponse(400, tp.RID, 0), []byte(`{"errorCode":400027,"message":"patch too deep"}`))
			break
		}
		var patch map[string]any
		if err := json.Unmarshal(pk.Payload, &patch); err != nil {
			reply(topic.TwinResponse(400, tp.RID, 0), []byte(`{"errorCode":400004,"message":"bad json"}`))
			break
		}
		if h.reported == nil {
			h.reported = map[string]any{}
		}
		for k, v := range patch {
			h.reported[k] = v
		}
		h.repVer++
		reply(topic.TwinResponse(204, tp.RID, h.repVer), nil)
	case topic.KindMethodResponse:
		if ch := h.methodRes[tp.RID]; ch != nil {
			ch <- methodResult{status: tp.Status, payload: pk.Payload}
			delete(h.methodRes, tp.RID)
		}
	default:
		h.t.Errorf("hub: unexpected %s from %s", tp.Kind, cl.ID)
	}
	return pk, packets.ErrRejectPacket
}

// netListener feeds accepted connections to mochi, so tests can listen
// on 127.0.0.1:0 and know the address.
type netListener struct {
	id string
	ln net.Listener
}

func (l *netListener) ID() string              { return l.id }
func (l *netListener) Address() string         { return l.ln.Addr().String() }
func (l *netListener) Protocol() string        { return "tls" }
func (l *netListener) Init(*slog.Logger) error { return nil }

func (l *netListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		go establish(l.id, conn) // mochi's ClientsWg tracks it
	}
}

func (l *netListener) Close(closeClients listeners.CloseFn) {
	l.ln.Close()
	closeClients(l.id)
}

// wsListener serves MQTT over WebSocket at /$iothub/websocket only.
type wsListener struct {
	id  string
	ln  net.Listener
	srv *http.Server
}

func (l *wsListener) ID() string       { return l.id }
func (l *wsListener) Address() string  { return l.ln.Addr().String() }
func (l *wsListener) Protocol() string { return "wss" }
func (l *wsListener) Init(*slog.Logger) error {
	l.srv = &http.Server{Handler: http.NewServeMux()}
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	up := websocket.Upgrader{Subprotocols: []string{"mqtt"}}
	l.srv.Handler.(*http.ServeMux).HandleFunc("/$iothub/websocket", func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		establish(l.id, wsconn.New(ws))
	})
	l.srv.Serve(l.ln)
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.srv.Close()
	l.ln.Close()
	closeClients(l.id)
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	poll.Check(t, timeout, 0, func() error {
		if err := cond(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

// newClient makes and connects a client, closed at cleanup.
func newClient(t *testing.T, cfg Config, setup func(*Client)) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if setup != nil {
		setup(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}
