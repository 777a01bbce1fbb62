// Package outposttest is an in-process test environment for the whole
// offline story: a hub on loopback with its device endpoint and service
// API, edges whose upstream link runs through a proxy that a test can
// cut, and child devices connected through those edges.
//
// Tests read like the story they check:
//
//	env := outposttest.NewEnv(t)
//	env.CreateEdge("edge1")
//	env.CreateDevice("child1")
//	env.AddChildren("edge1", "child1")
//	node := env.StartEdge(t, "edge1")
//	c := node.Child(t, "child1")
//	node.Cut()
//	... c.Send(...) ...
//	node.Restore()
//	env.Monitor(t).WaitFor(...)
//
// Everything listens on 127.0.0.1:0 and lives in t.TempDir(); everything
// started is stopped by t.Cleanup. Set OUTPOST_TEST_LOG=1 to see the
// logs of the hub and the edges on stderr.
package outposttest

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"outpost/internal/hub"
	"outpost/internal/hub/dataplane"
	"outpost/internal/hubserver"
	"outpost/internal/identity"
	"outpost/internal/poll"
	"outpost/internal/service"
)

// HubHostName is the hub's host name in every connection string of an
// Env. Its certificate covers it, and it resolves to loopback.
const HubHostName = "localhost"

// Env is a running hub, started by hubserver exactly as `outpost hub`
// starts one: registry, twins, telemetry stream, device endpoint (MQTT
// over TLS) and one HTTPS listener for the service API, the data plane's
// routes and the device HTTPS API.
type Env struct {
	t testing.TB

	// Dir is the hub's data directory (CA, keys, JetStream).
	Dir    string
	Server *hubserver.Server
	Hub    *hub.Hub
	Plane  *dataplane.Plane
	// CAFile and RootCAs hold the hub's root CA, which devices and edges
	// trust.
	CAFile  string
	RootCAs *x509.CertPool
	// MQTTAddr and HTTPSAddr are the hub's listen addresses.
	MQTTAddr  string
	HTTPSAddr string
	// ServiceConnectionString is the iothubowner connection string.
	ServiceConnectionString string

	log *slog.Logger
	svc *service.Client
}

// EnvOption changes how NewEnv builds the hub.
type EnvOption func(*envConfig)

type envConfig struct {
	log *slog.Logger
}

// UpstreamKeepAlive is the edge link's keepalive in this environment:
// short, so that tests of a silent link end quickly, and long enough not
// to time out a healthy link on a loaded machine.
const UpstreamKeepAlive = 3 * time.Second

// WithLogger sends the hub's and edges' logs to log.
func WithLogger(log *slog.Logger) EnvOption {
	return func(c *envConfig) { c.log = log }
}

// TestLogger is the logger tests use by default: stderr at debug level
// when OUTPOST_TEST_LOG is set, else nothing.
func TestLogger() *slog.Logger {
	if os.Getenv("OUTPOST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// NewEnv starts a hub in t.TempDir() on 127.0.0.1 random ports.
func NewEnv(t testing.TB, opts ...EnvOption) *Env {
	t.Helper()
	cfg := envConfig{log: TestLogger()}
	for _, o := range opts {
		o(&cfg)
	}
	e := &Env{t: t, Dir: t.TempDir(), log: cfg.log}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := hubserver.Start(ctx, hubserver.Config{
		DataDir:   e.Dir,
		Hostname:  HubHostName,
		MQTTAddr:  "127.0.0.1:0",
		HTTPSAddr: "127.0.0.1:0",
		// Edges here are "localhost" too: all on one machine.
		EdgeLoopbackNames: true,
		Logger:            cfg.log.With("side", "hub"),
	})
	if err != nil {
		t.Fatalf("start hub: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("hub shutdown: %v", err)
		}
	})
	e.Server, e.Hub, e.Plane = srv, srv.Hub(), srv.Plane()
	e.CAFile, e.RootCAs = srv.CAFile(), srv.RootCAs()
	e.MQTTAddr, e.HTTPSAddr = srv.MQTTAddr().String(), srv.HTTPSAddr().String()
	e.ServiceConnectionString = srv.ConnectionString()
	if e.svc, err = service.New(service.Config{ConnectionString: e.ServiceConnectionString, RootCAs: e.RootCAs}); err != nil {
		t.Fatalf("service client: %v", err)
	}
	return e
}

// Service is a service REST client for the hub, as the CLI uses.
func (e *Env) Service() *service.Client { return e.svc }

// Logger is the environment's logger.
func (e *Env) Logger() *slog.Logger { return e.log }

// HubMQTTHost is the HostName with which a device reaches the hub's MQTT
// listener directly.
func (e *Env) HubMQTTHost() string {
	_, port, _ := net.SplitHostPort(e.MQTTAddr)
	return net.JoinHostPort(HubHostName, port)
}

// Edge is an IoT Edge device identity registered at the hub.
type Edge struct {
	ID     string
	Device identity.Device
	// ConnectionString is the edge's own: HostName is the hub's.
	ConnectionString string
}

// Device is a (non-edge) device identity registered at the hub.
type Device struct {
	ID     string
	Device identity.Device
}

// CreateEdge registers an IoT Edge device with SAS keys.
func (e *Env) CreateEdge(id string) *Edge {
	e.t.Helper()
	d, err := e.svc.CreateEdgeDevice(ctxFor(e.t), id)
	if err != nil {
		e.t.Fatalf("create edge %s: %v", id, err)
	}
	return &Edge{ID: id, Device: d, ConnectionString: service.DeviceConnectionString(d, HubHostName, "")}
}

// CreateDevice registers a device with SAS keys.
func (e *Env) CreateDevice(id string) *Device {
	e.t.Helper()
	d, err := e.svc.CreateDevice(ctxFor(e.t), identity.Device{DeviceID: id})
	if err != nil {
		e.t.Fatalf("create device %s: %v", id, err)
	}
	return &Device{ID: id, Device: d}
}

// AddChildren makes devices children of an edge.
func (e *Env) AddChildren(edgeID string, ids ...string) {
	e.t.Helper()
	if err := e.svc.AddChildren(ctxFor(e.t), edgeID, ids, false); err != nil {
		e.t.Fatalf("add children %v to %s: %v", ids, edgeID, err)
	}
}

// RemoveChildren takes devices out of an edge's scope.
func (e *Env) RemoveChildren(edgeID string, ids ...string) {
	e.t.Helper()
	if err := e.svc.RemoveChildren(ctxFor(e.t), edgeID, ids); err != nil {
		e.t.Fatalf("remove children %v from %s: %v", ids, edgeID, err)
	}
}

// device reads an identity, with its keys, from the registry.
func (e *Env) device(id string) identity.Device {
	e.t.Helper()
	d, err := e.Hub.GetDevice(id)
	if err != nil {
		e.t.Fatalf("get device %s: %v", id, err)
	}
	return d
}

// ctxFor is a context for one call made by a helper: bounded, and ended
// with the test.
func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// freeAddr returns a loopback address whose port was free a moment ago,
// for a process that must listen on the same port across restarts.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// CheckFor polls f every interval until it returns nil, and fails the
// test with f's last error if timeout passes first.
func CheckFor(t testing.TB, timeout, interval time.Duration, f func() error) {
	t.Helper()
	poll.Check(t, timeout, interval, f)
}

// Seq is the application property tests number messages with, per
// device, to check order and completeness at the hub.
const Seq = "seq"

// seqOf reads a message's Seq property.
func seqOf(props map[string]string) (int, error) {
	s, ok := props[Seq]
	if !ok {
		return 0, errors.New("no seq property")
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("seq %q: %w", s, err)
	}
	return n, nil
}
