package outposttest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/edge"
	"outpost/internal/edgeserver"
	"outpost/internal/netfault"
	"outpost/internal/service"
)

// EdgeOption changes how StartEdge starts an edge.
type EdgeOption func(*edgeSetup)

type edgeSetup struct {
	cfg     edgeserver.Config
	offline bool
}

// WithEdgeConfig edits the edge's configuration before it starts.
func WithEdgeConfig(f func(*edgeserver.Config)) EdgeOption {
	return func(s *edgeSetup) { f(&s.cfg) }
}

// MaxStorageBytes caps the edge's store.
func MaxStorageBytes(n int64) EdgeOption {
	return func(s *edgeSetup) { s.cfg.MaxStorageBytes = n }
}

// WithClock gives the edge (its store, link and device endpoint) a clock.
func WithClock(now func() time.Time) EdgeOption {
	return func(s *edgeSetup) { s.cfg.Now = now }
}

// StartOffline cuts the link before the edge starts; StartEdge then does
// not wait for the edge to serve (a never-synced edge would not).
func StartOffline() EdgeOption {
	return func(s *edgeSetup) { s.offline = true }
}

// EdgeNode is an edge hub running in this process. Its upstream link
// dials the hub through Proxy, so Cut and Restore are a real outage: TCP
// connections reset and new ones refused.
type EdgeNode struct {
	ID    string
	Dir   string // the storage folder, kept across Restart
	Proxy *netfault.Proxy
	// Logs holds everything the edge logged, across restarts.
	Logs *LogBuffer

	env *Env
	t   testing.TB

	mu sync.Mutex
	// mu guards the following fields.
	cfg edgeserver.Config // MQTTAddr and HTTPSAddr fixed once first known
	s   *edgeserver.Server
	err error // Run's result once stopped
}

// StartEdge starts the edge device edgeID (created with CreateEdge) in
// its own storage folder, listening on 127.0.0.1, and waits until it
// serves clients unless StartOffline is given.
func (e *Env) StartEdge(t testing.TB, edgeID string, opts ...EdgeOption) *EdgeNode {
	t.Helper()
	proxy, err := netfault.New(e.MQTTAddr)
	if err != nil {
		t.Fatalf("upstream proxy: %v", err)
	}
	t.Cleanup(func() { proxy.Close() })
	logs := &LogBuffer{}
	log := slog.New(slog.NewMultiHandler(e.log.Handler(),
		slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))).With("side", "edge", "edge", edgeID)
	dev := e.device(edgeID)
	s := edgeSetup{cfg: edgeserver.Config{
		ConnectionString: service.DeviceConnectionString(dev, HubHostName, ""),
		StorageDir:       t.TempDir(),
		UpstreamAddr:     proxy.Addr(),
		HubCA:            e.RootCAs,
		Hostname:         "localhost",
		MQTTAddr:         "127.0.0.1:0",
		HTTPSAddr:        "127.0.0.1:0",
		Logger:           log,
		KeepAlive:        UpstreamKeepAlive,
	}}
	for _, o := range opts {
		o(&s)
	}
	n := &EdgeNode{ID: edgeID, Dir: s.cfg.StorageDir, Proxy: proxy, Logs: logs, env: e, t: t, cfg: s.cfg}
	if s.offline {
		proxy.Cut()
	}
	if err := n.start(); err != nil {
		t.Fatalf("start edge %s: %v", edgeID, err)
	}
	t.Cleanup(func() {
		if err := n.Stop(); err != nil && !errors.Is(err, edge.ErrNeverSynced) {
			t.Errorf("edge %s: %v", edgeID, err)
		}
	})
	if !s.offline {
		n.AwaitReady(t, 30*time.Second)
	}
	return n
}

func (n *EdgeNode) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	s, err := edgeserver.Start(context.Background(), n.cfg)
	if err != nil {
		return err
	}
	n.s, n.err = s, nil
	return nil
}

// Edge is the running edge, for what the helpers do not cover.
func (n *EdgeNode) Edge() *edge.Edge {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.s == nil {
		return nil
	}
	return n.s.Edge()
}

// AwaitReady waits until the edge serves clients, and fixes its listen
// addresses so that a restart listens on the same ones.
func (n *EdgeNode) AwaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	n.mu.Lock()
	s := n.s
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := s.AwaitReady(ctx); err != nil {
		t.Fatalf("edge %s not serving within %v: %v", n.ID, timeout, err)
	}
	e := s.Edge()
	n.mu.Lock()
	n.cfg.MQTTAddr, n.cfg.HTTPSAddr = e.MQTTAddr().String(), e.HTTPSAddr().String()
	n.mu.Unlock()
}

// Ready reports whether the edge serves clients.
func (n *EdgeNode) Ready() bool {
	select {
	case <-n.Edge().Ready():
		return true
	default:
		return false
	}
}

// MQTTAddr is where children connect: the edge's MQTT over TLS address.
func (n *EdgeNode) MQTTAddr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cfg.MQTTAddr
}

// HTTPSAddr is the edge's HTTPS address (/status, device HTTPS).
func (n *EdgeNode) HTTPSAddr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cfg.HTTPSAddr
}

// Cut takes the upstream link down: open connections are reset and new
// ones refused.
func (n *EdgeNode) Cut() { n.Proxy.Cut() }

// Stall makes the upstream link silent: nothing is closed, every byte is
// dropped. Only the link's keepalive can tell.
func (n *EdgeNode) Stall() { n.Proxy.Stall() }

// Restore brings the upstream link back.
func (n *EdgeNode) Restore() {
	if err := n.Proxy.Restore(); err != nil {
		n.t.Fatalf("restore link of %s: %v", n.ID, err)
	}
}

// Stop closes the edge and returns what its Run returned. It is safe to
// call more than once.
func (n *EdgeNode) Stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopLocked()
}

func (n *EdgeNode) stopLocked() error {
	if n.s == nil {
		return n.err
	}
	n.err = n.s.Close()
	n.s = nil
	return n.err
}

// Restart closes the edge and opens it again on the same storage folder
// and listen addresses, as a service restart would, and waits until it
// serves. The link stays as it was (cut or not).
func (n *EdgeNode) Restart(t testing.TB) { n.RestartAfter(t, nil) }

// RestartAfter is Restart with change run on the storage folder while
// the edge is stopped: an operator wiping it, or restoring a backup.
func (n *EdgeNode) RestartAfter(t testing.TB, change func(dir string)) {
	t.Helper()
	n.mu.Lock()
	if err := n.stopLocked(); err != nil {
		n.mu.Unlock()
		t.Fatalf("stop edge %s: %v", n.ID, err)
	}
	n.mu.Unlock()
	if change != nil {
		change(n.Dir)
	}
	if err := n.start(); err != nil {
		t.Fatalf("restart edge %s: %v", n.ID, err)
	}
	n.AwaitReady(t, 30*time.Second)
}

// Status is the edge's GET /status, over HTTPS as an operator reads it.
func (n *EdgeNode) Status() (edge.Status, error) {
	return FetchStatus(n.env.RootCAs, n.HTTPSAddr())
}

// FetchStatus reads GET /status of the edge listening on httpsAddr,
// trusting roots (the hub's root CA signed the edge's CA).
func FetchStatus(roots *x509.CertPool, httpsAddr string) (edge.Status, error) {
	var st edge.Status
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}},
	}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + httpsAddr + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("GET /status: %w", err)
	}
	return st, nil
}

// LinkUp reports the link state as the edge sees it.
func (n *EdgeNode) LinkUp() bool {
	e := n.Edge()
	return e != nil && e.Status().Link.Connected
}

// AwaitLink waits until the edge sees its link up (or down) and returns
// how long that took.
func (n *EdgeNode) AwaitLink(t testing.TB, up bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	CheckFor(t, timeout, 5*time.Millisecond, func() error {
		if n.LinkUp() != up {
			return fmt.Errorf("edge %s: link up is %v, want %v", n.ID, !up, up)
		}
		return nil
	})
	return time.Since(start)
}

// UpstreamQueue is how many messages wait to go to the hub; -1 while
// the edge is stopped.
func (n *EdgeNode) UpstreamQueue() int64 {
	e := n.Edge()
	if e == nil {
		return -1
	}
	return e.Status().Queues[edge.UpstreamEndpoint].Length
}

// ChildConfig returns the client configuration of a device connecting
// through this edge: GatewayHostName is the edge's MQTT address, and the
// client trusts the hub's root CA, which signed the edge's CA.
func (n *EdgeNode) ChildConfig(deviceID string) client.Config {
	d := n.env.device(deviceID)
	return client.Config{
		ConnectionString: service.DeviceConnectionString(d, HubHostName, n.MQTTAddr()),
		RootCAs:          n.env.RootCAs,
		Logger:           n.env.log.With("side", "child", "device", deviceID),
	}
}

// ConnectChild connects a device through the edge, applying setup (e.g.
// handlers) before Connect, and returns the error of the first connect.
// The client is closed at the end of the test.
func (n *EdgeNode) ConnectChild(t testing.TB, deviceID string, setup ...func(*client.Client)) (*client.Client, error) {
	t.Helper()
	c, err := client.New(n.ChildConfig(deviceID))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	for _, s := range setup {
		s(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Child connects a device through the edge, or fails the test.
func (n *EdgeNode) Child(t testing.TB, deviceID string, setup ...func(*client.Client)) *client.Client {
	t.Helper()
	c, err := n.ConnectChild(t, deviceID, setup...)
	if err != nil {
		t.Fatalf("child %s through edge %s: %v", deviceID, n.ID, err)
	}
	return c
}

// LogBuffer is a goroutine-safe log sink that tests can search.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
