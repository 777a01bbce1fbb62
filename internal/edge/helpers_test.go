package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/client"
	"outpost/internal/identity"
	"outpost/internal/poll"
	"outpost/internal/sas"
)

const hubHost = "hub.test"

// checkFor polls f until it returns nil or timeout passes.
func checkFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	poll.Check(t, timeout, 0, f)
}

// logBuf is a goroutine-safe log sink for asserting on log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fakeUplink is an Uplink with function fields; zero fields act like a
// hub that answers from the fake's snapshot.
type fakeUplink struct {
	hub *fakeHub

	// Function fields: set them with set once the edge runs.
	syncIdentities func(ctx context.Context) (*Snapshot, error)
	twinGet        func(ctx context.Context, d, m string) ([]byte, error)
	twinReported   func(ctx context.Context, d, m string, patch []byte) (int64, error)

	onState func(LinkState)
	kicks   atomic.Int64
	// drains makes the fake an EndpointDrainer.
	drains bool

	mu       sync.Mutex
	state    LinkState
	attached map[string]bool
}

func (f *fakeUplink) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (f *fakeUplink) State() LinkState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

func (f *fakeUplink) setConnected(up bool) {
	f.mu.Lock()
	if f.state.Connected != up && !up {
		f.state.OfflinePeriods++
	}
	f.state.Connected, f.state.Since = up, time.Now()
	s := f.state
	f.mu.Unlock()
	if f.onState != nil {
		f.onState(s)
	}
}

func (f *fakeUplink) SyncIdentities(ctx context.Context) (*Snapshot, error) {
	if !f.State().Connected {
		return nil, ErrOffline
	}
	f.mu.Lock()
	fn := f.syncIdentities
	f.mu.Unlock()
	if fn != nil {
		return fn(ctx)
	}
	return f.hub.snapshot(), nil
}

func (f *fakeUplink) SignEdgeCA(ctx context.Context, csr []byte) ([]byte, []byte, error) {
	if !f.State().Connected {
		return nil, nil, ErrOffline
	}
	// Grants what the CSR asks for, as the hub does for names it can
	// justify.
	req, err := certs.ParseCSR(csr)
	if err != nil {
		return nil, nil, err
	}
	f.hub.mu.Lock()
	validity := f.hub.edgeCAValidity
	f.hub.mu.Unlock()
	chain, err := f.hub.root.SignEdgeCA(csr, certs.CSRHosts(req), validity)
	return chain, f.hub.root.CertPEM, err
}

func (f *fakeUplink) TwinGet(ctx context.Context, d, m string) ([]byte, error) {
	if !f.State().Connected {
		return nil, ErrOffline
	}
	f.mu.Lock()
	fn := f.twinGet
	f.mu.Unlock()
	if fn != nil {
		return fn(ctx, d, m)
	}
	return nil, ErrOffline
}

func (f *fakeUplink) TwinReported(ctx context.Context, d, m string, patch []byte) (int64, error) {
	if !f.State().Connected {
		return 0, ErrOffline
	}
	f.mu.Lock()
	fn := f.twinReported
	f.mu.Unlock()
	if fn != nil {
		return fn(ctx, d, m, patch)
	}
	return 0, ErrOffline
}

func (f *fakeUplink) Attach(d, m string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attached == nil {
		f.attached = map[string]bool{}
	}
	f.attached[d+"/"+m] = true
}

func (f *fakeUplink) Detach(d, m string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, d+"/"+m)
}

func (f *fakeUplink) Kick() { f.kicks.Add(1) }

// set changes the fake's function fields while the edge runs.
func (f *fakeUplink) set(fn func(f *fakeUplink)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeUplink) DrainsUpstreamEndpoints() bool { return f.drains }

// drainingUplink makes the test edge's fake uplink drain by priority.
func drainingUplink(c *Config) {
	prev := c.NewUplink
	c.NewUplink = func(d UplinkDeps) (Uplink, error) {
		u, err := prev(d)
		if err == nil {
			u.(*fakeUplink).drains = true
		}
		return u, err
	}
}

// fakeHub holds the registry the fake uplink syncs from.
type fakeHub struct {
	root *certs.CA
	pem  []byte

	mu sync.Mutex
	// edgeCAValidity is how long the edge CAs it signs live; 0 the
	// default (5 years).
	edgeCAValidity time.Duration
	edge           identity.Device
	devices        map[string]identity.Device
	modules        map[string]identity.Module
}

func newFakeHub(t testing.TB) *fakeHub {
	t.Helper()
	root, err := certs.NewRootCA("outpost test root", 0)
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHub{
		root:    root,
		pem:     root.CertPEM,
		edge:    identity.Device{DeviceID: "edge1", Status: identity.StatusEnabled, Capabilities: identity.Capabilities{IoTEdge: true}},
		devices: map[string]identity.Device{},
		modules: map[string]identity.Module{},
	}
	return h
}

func (h *fakeHub) addDevice(id string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := sas.GenerateKey()
	h.devices[id] = identity.Device{DeviceID: id, Status: identity.StatusEnabled,
		Authentication: identity.Authentication{Type: identity.AuthSAS, SymmetricKey: identity.SymmetricKey{PrimaryKey: key, SecondaryKey: sas.GenerateKey()}}}
	return key
}

func (h *fakeHub) addModule(deviceID, moduleID string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := sas.GenerateKey()
	h.modules[deviceID+"/"+moduleID] = identity.Module{DeviceID: deviceID, ModuleID: moduleID,
		Authentication: identity.Authentication{Type: identity.AuthSAS, SymmetricKey: identity.SymmetricKey{PrimaryKey: key, SecondaryKey: sas.GenerateKey()}}}
	return key
}

func (h *fakeHub) removeDevice(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.devices, id)
}

func (h *fakeHub) snapshot() *Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &Snapshot{Edge: h.edge, RootCA: string(h.pem), HubHostName: hubHost, SyncedAt: time.Now()}
	for _, d := range h.devices {
		s.Devices = append(s.Devices, d)
	}
	for _, m := range h.modules {
		s.Modules = append(s.Modules, m)
	}
	return s
}

func (h *fakeHub) pool(t testing.TB) *x509.CertPool {
	t.Helper()
	p, err := certs.Pool(h.pem)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// testEdge is one Edge run in the background over a storage folder.
type testEdge struct {
	t    testing.TB
	hub  *fakeHub
	up   *fakeUplink
	e    *Edge
	logs *logBuf
	err  chan error
	stop context.CancelFunc
}

// edgeOpts adjust the Config of a test edge.
type edgeOpts func(*Config)

const edgeKey = "ZWRnZS1rZXktZm9yLXRlc3RzLW9ubHktMzItYnl0ZXM="

func startEdge(t testing.TB, hub *fakeHub, dir string, connected bool, opts ...edgeOpts) *testEdge {
	t.Helper()
	te := &testEdge{t: t, hub: hub, up: &fakeUplink{hub: hub}, logs: &logBuf{}, err: make(chan error, 1)}
	te.up.state.Connected = connected
	cfg := Config{
		HubHostName: hubHost,
		DeviceID:    "edge1",
		Key:         edgeKey,
		StorageDir:  dir,
		Hostname:    "localhost",
		MQTTAddr:    "127.0.0.1:0",
		HTTPSAddr:   "127.0.0.1:0",
		Logger:      slog.New(slog.NewTextHandler(te.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		NewUplink: func(d UplinkDeps) (Uplink, error) {
			te.up.onState = d.OnState
			return te.up, nil
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("new edge: %v", err)
	}
	te.e = e
	ctx, cancel := context.WithCancel(context.Background())
	te.stop = cancel
	go func() { te.err <- e.Run(ctx) }()
	t.Cleanup(te.close)
	return te
}

func (te *testEdge) close() {
	te.stop()
	if err := te.e.Close(); err != nil {
		te.t.Errorf("close edge: %v", err)
	}
}

func (te *testEdge) awaitReady() {
	te.t.Helper()
	select {
	case <-te.e.Ready():
	case err := <-te.err:
		te.t.Fatalf("edge stopped before ready: %v", err)
	case <-time.After(10 * time.Second):
		te.t.Fatalf("edge not ready; logs:\n%s", te.logs.String())
	}
}

func (te *testEdge) port() int { return te.e.MQTTAddr().(*net.TCPAddr).Port }

// connString is a child's or module's connection string through the edge.
func (te *testEdge) connString(deviceID, moduleID, key string) string {
	s := fmt.Sprintf("HostName=%s;DeviceId=%s;SharedAccessKey=%s;GatewayHostName=localhost:%d", hubHost, deviceID, key, te.port())
	if moduleID != "" {
		s = fmt.Sprintf("HostName=%s;DeviceId=%s;ModuleId=%s;SharedAccessKey=%s;GatewayHostName=localhost:%d", hubHost, deviceID, moduleID, key, te.port())
	}
	return s
}

// newClient makes a client through the edge, not yet connected.
func (te *testEdge) newClient(deviceID, moduleID, key string) *client.Client {
	te.t.Helper()
	c, err := client.New(client.Config{
		ConnectionString: te.connString(deviceID, moduleID, key),
		RootCAs:          te.hub.pool(te.t),
		KeepAlive:        30 * time.Second,
	})
	if err != nil {
		te.t.Fatal(err)
	}
	te.t.Cleanup(func() { c.Close() })
	return c
}

// connect connects a new client and fails the test if it cannot.
func (te *testEdge) connect(deviceID, moduleID, key string) *client.Client {
	te.t.Helper()
	c := te.newClient(deviceID, moduleID, key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		te.t.Fatalf("connect %s/%s: %v\nlogs:\n%s", deviceID, moduleID, err, te.logs.String())
	}
	return c
}

// refused asserts that a client cannot connect, as not authorized.
func (te *testEdge) refused(deviceID, moduleID, key string) {
	te.t.Helper()
	c := te.newClient(deviceID, moduleID, key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Connect(ctx)
	var ce *client.ConnectError
	if !errors.As(err, &ce) || ce.Retryable() {
		te.t.Fatalf("connect %s/%s: got %v, want refusal as not authorized", deviceID, moduleID, err)
	}
}

func (te *testEdge) queueLen(ep string) int64 { return te.e.Store().Stats()[ep].Len }

// offlineBacklog adds child1 to hub and starts an edge whose link is
// down; child1 connects and sends three messages, which wait in
// $upstream. child1 stays connected.
func offlineBacklog(t *testing.T, hub *fakeHub) *testEdge {
	t.Helper()
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	sendN(t, te.connect("child1", "", key), "x", 3)
	return te
}

// httpsClient trusts the edge's server certificate on its HTTPS listener.
func (te *testEdge) httpsClient() *http.Client {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: te.hub.pool(te.t), ServerName: "localhost"}}}
	te.t.Cleanup(hc.CloseIdleConnections)
	return hc
}

func contains(s, sub string) error {
	if !strings.Contains(s, sub) {
		return fmt.Errorf("%q not found", sub)
	}
	return nil
}
