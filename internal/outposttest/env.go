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
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/hub/api"
	"outpost/internal/hub/dataplane"
	"outpost/internal/identity"
	"outpost/internal/service"
)

// HubHostName is the hub's host name in every connection string of an
// Env. Its certificate covers it, and it resolves to loopback.
const HubHostName = "localhost"

// Env is a running hub: registry, twins, telemetry stream, device
// endpoint (MQTT over TLS) and service REST API, with the certificates
// and keys hub.Bootstrap made for it.
type Env struct {
	t testing.TB

	// Dir is the hub's data directory (CA, keys, JetStream).
	Dir   string
	Creds *hub.Credentials
	Hub   *hub.Hub
	Plane *dataplane.Plane
	// Gateway is the hub's device endpoint.
	Gateway *gateway.Server
	// RootCAs holds the hub's root CA, which devices and edges trust.
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
	log   *slog.Logger
	plane func(*dataplane.Config)
}

// UpstreamKeepAlive is the edge link's keepalive in this environment:
// short, so that tests of a silent link end quickly, and long enough not
// to time out a healthy link on a loaded machine.
const UpstreamKeepAlive = 3 * time.Second

// WithLogger sends the hub's and edges' logs to log.
func WithLogger(log *slog.Logger) EnvOption {
	return func(c *envConfig) { c.log = log }
}

// WithPlaneConfig edits the data plane's configuration before it starts.
func WithPlaneConfig(f func(*dataplane.Config)) EnvOption {
	return func(c *envConfig) { c.plane = f }
}

// TestLogger is the logger tests use by default: stderr at debug level
// when OUTPOST_TEST_LOG is set, else nothing.
func TestLogger() *slog.Logger {
	if os.Getenv("OUTPOST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// NewEnv starts a hub in t.TempDir() on 127.0.0.1 random ports, wired as
// cmd/outpost wires it: hub state, data plane, device endpoint over TLS
// with the bootstrap CA, and one HTTPS listener for the service API, the
// data plane's routes and the device HTTPS API.
func NewEnv(t testing.TB, opts ...EnvOption) *Env {
	t.Helper()
	cfg := envConfig{log: TestLogger()}
	for _, o := range opts {
		o(&cfg)
	}
	log := cfg.log.With("side", "hub")
	e := &Env{t: t, Dir: t.TempDir(), log: cfg.log}

	var err error
	if e.Creds, err = hub.Bootstrap(e.Dir, HubHostName); err != nil {
		t.Fatalf("bootstrap hub: %v", err)
	}
	e.RootCAs = x509.NewCertPool()
	e.RootCAs.AddCert(e.Creds.CA.Cert)

	if e.Hub, err = hub.New(hub.Config{DataDir: e.Dir, HostName: HubHostName, Logger: log}); err != nil {
		t.Fatalf("start hub: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Hub.Close(); err != nil {
			t.Errorf("close hub: %v", err)
		}
	})

	policies := []api.Policy{{Name: hub.ServicePolicy, PrimaryKey: e.Creds.ServiceKey}}
	pcfg := dataplane.Config{Hub: e.Hub, CA: e.Creds.CA, Policies: policies, Logger: log}
	if cfg.plane != nil {
		cfg.plane(&pcfg)
	}
	if e.Plane, err = dataplane.New(pcfg); err != nil {
		t.Fatalf("start data plane: %v", err)
	}
	t.Cleanup(func() { e.Plane.Close() })

	serverTLS := &tls.Config{Certificates: []tls.Certificate{e.Creds.ServerCert}, MinVersion: tls.VersionTLS12}
	if e.Gateway, err = gateway.New(gateway.Config{
		Backend:     e.Plane,
		HubHostName: HubHostName,
		TLS:         serverTLS,
		Logger:      log.With("component", "gateway"),
	}); err != nil {
		t.Fatalf("start hub gateway: %v", err)
	}
	e.Plane.SetGateway(e.Gateway)
	ml, err := e.Gateway.ListenMQTTTLS("127.0.0.1:0")
	if err != nil {
		t.Fatalf("hub mqtt listener: %v", err)
	}
	e.MQTTAddr = ml.Addr().String()
	mqttDone := make(chan error, 1)
	go func() { mqttDone <- e.Gateway.ServeMQTT(ml) }()

	mux := http.NewServeMux()
	api.NewHandler(e.Hub, api.Config{HostName: HubHostName, Policies: policies, Logger: log}).Register(mux)
	e.Gateway.RegisterDeviceHTTP(mux)
	e.Plane.RegisterREST(mux)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("hub https listener: %v", err)
	}
	e.HTTPSAddr = hl.Addr().String()
	httpsTLS := serverTLS.Clone()
	httpsTLS.ClientAuth = tls.RequestClientCert
	hs := &http.Server{
		Handler:           mux,
		TLSConfig:         httpsTLS,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	httpsDone := make(chan error, 1)
	go func() { httpsDone <- hs.ServeTLS(hl, "", "") }()

	// Registered after the hub's own cleanups, so it runs before them:
	// listeners go first, then the plane, then the hub's state.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
		}
		if err := <-httpsDone; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("hub https: %v", err)
		}
		if err := e.Gateway.Shutdown(ctx); err != nil {
			t.Errorf("hub gateway shutdown: %v", err)
		}
		if err := <-mqttDone; !errors.Is(err, gateway.ErrServerClosed) {
			t.Errorf("hub mqtt: %v", err)
		}
	})

	_, port, _ := net.SplitHostPort(e.HTTPSAddr)
	e.ServiceConnectionString = e.Creds.ConnectionString(net.JoinHostPort(HubHostName, port))
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
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not met within %v: %v", timeout, err)
		}
		time.Sleep(interval) // the polling interval, not a wait for the condition
	}
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
