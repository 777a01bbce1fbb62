package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/certs"
	"outpost/internal/gateway/transporttest"
	"outpost/internal/message"
	"outpost/internal/poll"
	"outpost/internal/sas"
)

const testHost = "hub.outpost.test"

// checkFor polls f until it returns nil or the timeout passes.
func checkFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	poll.Check(t, timeout, 0, f)
}

// testPKI is a CA with a server certificate for 127.0.0.1 and localhost.
type testPKI struct {
	ca       *certs.CA
	pool     *x509.CertPool
	server   tls.Certificate
	clientTL *tls.Config
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := certs.NewRootCA("outpost test root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{ca: ca, pool: x509.NewCertPool()}
	p.pool.AddCert(ca.Cert)
	if p.server, _, _, err = ca.IssueServer([]string{"localhost", "127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	p.clientTL = &tls.Config{RootCAs: p.pool, ServerName: "localhost"}
	return p
}

// client issues a client certificate: signed by the CA, or self-signed
// (for thumbprint authentication).
func (p *testPKI) client(t testing.TB, cn string, byCA bool) tls.Certificate {
	t.Helper()
	var (
		c   tls.Certificate
		err error
	)
	if byCA {
		c, _, _, err = p.ca.IssueClient(cn, time.Hour)
	} else {
		c, _, _, err = certs.SelfSigned(cn)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func thumbprint(c tls.Certificate) string { return certs.Thumbprint(c.Leaf) }

// device is an identity the fake backend knows.
type device struct {
	key      string
	thumbs   []string
	disabled bool
	edge     bool
	scope    []string // client ids an edge may act for
}

// fakeBackend is a Backend whose behaviour tests set through function
// fields; nil fields get a simple in-memory default.
type fakeBackend struct {
	authenticate func(context.Context, Credentials) (Identity, error)
	telemetry    func(context.Context, Identity, []*message.Message) error
	twinGet      func(context.Context, Identity) ([]byte, error)
	twinReported func(context.Context, Identity, []byte) (int64, error)
	c2dReceive   func(context.Context, Identity) (*message.Message, string, error)
	c2dSettle    func(context.Context, Identity, string, Settle) error
	inScope      func(context.Context, Identity, string, string) (bool, error)

	mu        sync.Mutex
	devices   map[string]device
	stored    []*message.Message
	calls     int // Telemetry calls
	connected map[string]Session
	events    []string // "+cid" on Connected, "-cid" on Disconnected
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{devices: map[string]device{}, connected: map[string]Session{}}
}

func (f *fakeBackend) addDevice(cid string, d device) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.key == "" && len(d.thumbs) == 0 {
		d.key = sas.GenerateKey()
	}
	f.devices[cid] = d
}

func (f *fakeBackend) device(cid string) device {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.devices[cid]
}

func (f *fakeBackend) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	if f.authenticate != nil {
		return f.authenticate(ctx, c)
	}
	f.mu.Lock()
	d, ok := f.devices[c.ClientID]
	f.mu.Unlock()
	if !ok {
		return Identity{}, AuthFailed(ReasonNotFound, nil)
	}
	if d.disabled {
		return Identity{}, AuthFailed(ReasonDisabled, nil)
	}
	id := Identity{DeviceID: c.DeviceID, ModuleID: c.ModuleID, Edge: d.edge}
	if c.Token != nil {
		if d.key == "" {
			return Identity{}, AuthFailed(ReasonWrongMethod, nil)
		}
		if err := VerifySAS(c.Token, []string{d.key}, testHost, c.DeviceID, c.ModuleID, time.Now(), time.Minute); err != nil {
			return Identity{}, err
		}
		id.AuthMethod = AuthSAS
		return id, nil
	}
	if err := VerifyX509(c.PeerCerts, d.thumbs, nil, c.ClientID, time.Now()); err != nil {
		return Identity{}, err
	}
	id.AuthMethod = AuthX509Thumbprint
	return id, nil
}

func (f *fakeBackend) Telemetry(ctx context.Context, via Identity, msgs []*message.Message) error {
	if f.telemetry != nil {
		if err := f.telemetry(ctx, via, msgs); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.stored = append(f.stored, msgs...)
	return nil
}

func (f *fakeBackend) storedMessages() []*message.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*message.Message(nil), f.stored...)
}

func (f *fakeBackend) telemetryCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeBackend) TwinGet(ctx context.Context, id Identity) ([]byte, error) {
	if f.twinGet != nil {
		return f.twinGet(ctx, id)
	}
	return []byte(`{"desired":{"$version":1},"reported":{"$version":1}}`), nil
}

func (f *fakeBackend) TwinReported(ctx context.Context, id Identity, patch []byte) (int64, error) {
	if f.twinReported != nil {
		return f.twinReported(ctx, id, patch)
	}
	return 2, nil
}

func (f *fakeBackend) Connected(s Session) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connected[s.Identity().ClientID()] = s
	f.events = append(f.events, "+"+s.Identity().ClientID())
}

func (f *fakeBackend) Disconnected(s Session) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.connected[s.Identity().ClientID()] == s {
		delete(f.connected, s.Identity().ClientID())
	}
	f.events = append(f.events, "-"+s.Identity().ClientID())
}

func (f *fakeBackend) session(t testing.TB, cid string) Session {
	t.Helper()
	var s Session
	checkFor(t, 5*time.Second, func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if s = f.connected[cid]; s == nil {
			return fmt.Errorf("no session for %s", cid)
		}
		return nil
	})
	return s
}

func (f *fakeBackend) InScope(ctx context.Context, edge Identity, d, m string) (bool, error) {
	if f.inScope != nil {
		return f.inScope(ctx, edge, d, m)
	}
	dev := f.device(edge.ClientID())
	for _, c := range dev.scope {
		if c == message.ClientID(d, m) {
			return true, nil
		}
	}
	return false, nil
}

func (f *fakeBackend) C2DReceive(ctx context.Context, id Identity) (*message.Message, string, error) {
	if f.c2dReceive != nil {
		return f.c2dReceive(ctx, id)
	}
	return nil, "", nil
}

func (f *fakeBackend) C2DSettle(ctx context.Context, id Identity, lock string, a Settle) error {
	if f.c2dSettle != nil {
		return f.c2dSettle(ctx, id, lock, a)
	}
	return nil
}

// extBackend adds the optional Extender.
type extBackend struct {
	*fakeBackend
	ext func(context.Context, Identity, string, []byte) ([]byte, error)
}

func (e extBackend) Extension(ctx context.Context, s Session, name string, p []byte) ([]byte, error) {
	return e.ext(ctx, s.Identity(), name, p)
}

// testEnv is a gateway on real TLS listeners with a fake backend.
type testEnv struct {
	t        testing.TB
	srv      *Server
	be       *fakeBackend
	pki      *testPKI
	mqttAddr string
	https    *httptest.Server
}

func testLogger() *slog.Logger {
	if os.Getenv("OUTPOST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newEnv(t testing.TB, mods ...func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, be: newFakeBackend(), pki: newTestPKI(t)}
	cfg := Config{
		Backend:     e.be,
		HubHostName: testHost,
		TLS:         &tls.Config{Certificates: []tls.Certificate{e.pki.server}},
		Logger:      testLogger(),
	}
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	l, err := srv.ListenMQTTTLS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.mqttAddr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.ServeMQTT(l) }()

	e.https = httptest.NewUnstartedServer(srv.DeviceHTTPHandler())
	e.https.TLS = &tls.Config{Certificates: []tls.Certificate{e.pki.server}, ClientAuth: tls.RequestClientCert}
	e.https.StartTLS()

	t.Cleanup(func() {
		e.https.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("second shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("ServeMQTT returned %v, want ErrServerClosed", err)
		}
	})
	return e
}

// token signs a SAS token for cid with its registered key.
func (e *testEnv) token(cid string, ttl time.Duration) string {
	e.t.Helper()
	d, m, _ := strings.Cut(cid, "/")
	tok, err := sas.Sign(sas.DeviceResource(testHost, d, m), e.be.device(cid).key, "", time.Now().Add(ttl))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func username(cid string) string {
	return testHost + "/" + cid + "/?api-version=2021-04-12&DeviceClientType=outpost-test"
}

// pahoOptions are the options an IoT SDK uses: MQTT 3.1.1, clean
// session 0, IoT Hub username, SAS password.
func (e *testEnv) pahoOptions(cid, password string) *paho.ClientOptions {
	return paho.NewClientOptions().
		AddBroker("tls://" + e.mqttAddr).
		SetClientID(cid).
		SetUsername(username(cid)).
		SetPassword(password).
		SetTLSConfig(e.pki.clientTL.Clone()).
		SetProtocolVersion(4).
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetOrderMatters(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(10 * time.Second)
}

func (e *testEnv) connect(opts *paho.ClientOptions) (paho.Client, error) {
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

func (e *testEnv) mustConnect(cid string) paho.Client {
	e.t.Helper()
	c, err := e.connect(e.pahoOptions(cid, e.token(cid, time.Hour)))
	if err != nil {
		e.t.Fatalf("connect %s: %v", cid, err)
	}
	return c
}

func wait(t testing.TB, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("mqtt operation timed out")
	}
	if err := tok.Error(); err != nil {
		t.Fatal(err)
	}
}

// rawClient speaks MQTT packet by packet, for what paho hides: exact
// CONNACK codes, PUBACK order, garbage. It is transporttest.Raw that
// fails the test on an error.
type rawClient struct {
	t testing.TB
	*transporttest.Raw
	nc net.Conn
}

func (e *testEnv) dialRaw(t testing.TB) *rawClient {
	t.Helper()
	nc, err := tls.Dial("tcp", e.mqttAddr, e.pki.clientTL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return newRawClient(t, nc)
}

func newRawClient(t testing.TB, nc net.Conn) *rawClient {
	return &rawClient{t: t, Raw: transporttest.NewRaw(nc), nc: nc}
}

func (rc *rawClient) write(pk packets.Packet) {
	rc.t.Helper()
	if err := rc.tryWrite(pk); err != nil {
		rc.t.Fatalf("write %v: %v", pk.FixedHeader.Type, err)
	}
}

func (rc *rawClient) tryWrite(pk packets.Packet) error { return rc.Raw.Write(pk) }

func (rc *rawClient) read(timeout time.Duration) (packets.Packet, error) {
	return rc.ReadTimeout(timeout)
}

// connect sends CONNECT and returns the CONNACK code.
func (rc *rawClient) connect(cid, user, password string, clean bool) byte {
	rc.t.Helper()
	return rc.connectWith(cid, user, password, clean, nil)
}

// connectParams are those of a 3.1.1 CONNECT as the IoT SDKs send it.
func connectParams(cid, user, password string, clean bool) packets.ConnectParams {
	return packets.ConnectParams{
		ProtocolName:     []byte("MQTT"),
		ClientIdentifier: cid,
		Username:         []byte(user),
		UsernameFlag:     user != "",
		Password:         []byte(password),
		PasswordFlag:     password != "",
		Keepalive:        60,
		Clean:            clean,
	}
}

// connectWith is connect with CONNECT's fields adjusted by mod (a Will).
func (rc *rawClient) connectWith(cid, user, password string, clean bool, mod func(*packets.ConnectParams)) byte {
	rc.t.Helper()
	p := connectParams(cid, user, password, clean)
	if mod != nil {
		mod(&p)
	}
	rc.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: p})
	pk, err := rc.read(10 * time.Second)
	if err != nil {
		rc.t.Fatalf("read CONNACK: %v", err)
	}
	if pk.FixedHeader.Type != packets.Connack {
		rc.t.Fatalf("got packet type %d, want CONNACK", pk.FixedHeader.Type)
	}
	return pk.ReasonCode
}

func (rc *rawClient) mustConnect(e *testEnv, cid string) {
	rc.t.Helper()
	if code := rc.connect(cid, username(cid), e.token(cid, time.Hour), false); code != 0 {
		rc.t.Fatalf("CONNACK %d, want 0", code)
	}
}

func (rc *rawClient) publish(topicName string, payload []byte, qos byte, pid uint16) {
	rc.t.Helper()
	rc.write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topicName,
		Payload:     payload,
		PacketID:    pid,
	})
}

func (rc *rawClient) subscribe(pid uint16, filters ...string) {
	rc.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: pid}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	rc.write(pk)
}

// expectClosed reads until the server closes the connection, failing on
// any PUBACK (nothing refused may be acknowledged).
func (rc *rawClient) expectClosed() {
	rc.t.Helper()
	if err := rc.AwaitClosed(); err != nil {
		rc.t.Fatal(err)
	}
}

// httpClient returns a client trusting the test CA, with optional
// client certificate.
func (e *testEnv) httpClient(certs ...tls.Certificate) *http.Client {
	cfg := e.pki.clientTL.Clone()
	cfg.Certificates = certs
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

// chainOf parses the chain of c, leaf first, as VerifyX509 takes it.
func chainOf(t testing.TB, c tls.Certificate) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, x)
	}
	return out
}
