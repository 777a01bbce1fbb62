package dataplane

import (
	"bytes"
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
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/certs"
	"outpost/internal/client"
	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/hub/api"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/poll"
	"outpost/internal/sas"
	"outpost/internal/service"
)

// env is a hub in a temp dir with its data plane, a gateway on TLS
// listeners at 127.0.0.1:0 and an HTTPS server for the service API, the
// data plane's routes and the device HTTPS API.
type env struct {
	t        *testing.T
	h        *hub.Hub
	p        *Plane
	gw       *gateway.Server
	ca       *certs.CA
	pool     *x509.CertPool
	mqttPort string
	https    *httptest.Server
	svc      *service.Client
	svcKey   string
}

const testHost = "localhost"

func testLogger() *slog.Logger {
	if os.Getenv("OUTPOST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newEnv(t *testing.T, mods ...func(*Config)) *env {
	t.Helper()
	return newEnvWith(t, envOptions{}, mods...)
}

// envOptions adjust what newEnvWith builds.
type envOptions struct {
	// wrap, when set, wraps the plane as the gateway's backend, for tests
	// that watch what the gateway calls.
	wrap func(*Plane) gateway.Backend
	// hub adjusts the hub's config.
	hub func(*hub.Config)
}

func newEnvWith(t *testing.T, o envOptions, mods ...func(*Config)) *env {
	t.Helper()
	e := &env{t: t}
	var err error
	if e.ca, err = certs.NewRootCA("outpost test root", time.Hour); err != nil {
		t.Fatal(err)
	}
	e.pool = x509.NewCertPool()
	e.pool.AddCert(e.ca.Cert)
	serverCert, _, _, err := e.ca.IssueServer([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger()
	hcfg := hub.Config{DataDir: t.TempDir(), HostName: testHost, Logger: log}
	if o.hub != nil {
		o.hub(&hcfg)
	}
	e.h, err = hub.New(hcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.h.Close() })
	e.svcKey = sas.GenerateKey()
	policies := []api.Policy{{Name: hub.ServicePolicy, PrimaryKey: e.svcKey}}
	cfg := Config{Hub: e.h, CA: e.ca, Policies: policies, Logger: log}
	for _, m := range mods {
		m(&cfg)
	}
	if e.p, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.p.Close() })
	var backend gateway.Backend = e.p
	if o.wrap != nil {
		backend = o.wrap(e.p)
	}
	e.gw, err = gateway.New(gateway.Config{
		Backend:     backend,
		HubHostName: testHost,
		TLS:         &tls.Config{Certificates: []tls.Certificate{serverCert}},
		Logger:      log,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.p.SetGateway(e.gw)
	l, err := e.gw.ListenMQTTTLS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, e.mqttPort, _ = net.SplitHostPort(l.Addr().String())
	served := make(chan error, 1)
	go func() { served <- e.gw.ServeMQTT(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.gw.Shutdown(ctx); err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, gateway.ErrServerClosed) {
			t.Errorf("ServeMQTT: %v", err)
		}
	})

	mux := http.NewServeMux()
	api.NewHandler(e.h, api.Config{HostName: testHost, Policies: policies, Logger: log}).Register(mux)
	e.gw.RegisterDeviceHTTP(mux)
	e.p.RegisterREST(mux)
	e.https = httptest.NewUnstartedServer(mux)
	e.https.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequestClientCert}
	e.https.StartTLS()
	t.Cleanup(e.https.Close)
	_, httpsPort, _ := net.SplitHostPort(e.https.Listener.Addr().String())
	cs := sas.ConnectionString{HostName: testHost + ":" + httpsPort, SharedAccessKeyName: hub.ServicePolicy, SharedAccessKey: e.svcKey}
	if e.svc, err = service.New(service.Config{ConnectionString: cs.String(), RootCAs: e.pool}); err != nil {
		t.Fatal(err)
	}
	return e
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// checkFor polls f until it returns nil or the timeout passes.
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	poll.Check(t, timeout, 0, f)
}

// device registers a SAS device (edge when edge is set).
func (e *env) device(id string, edge bool) identity.Device {
	e.t.Helper()
	d := identity.Device{DeviceID: id}
	d.Capabilities.IoTEdge = edge
	out, err := e.h.CreateOrUpdateDevice(context.Background(), d, "", false)
	if err != nil {
		e.t.Fatalf("create device %s: %v", id, err)
	}
	return out
}

func (e *env) module(deviceID, moduleID string) identity.Module {
	e.t.Helper()
	m, err := e.h.CreateOrUpdateModule(context.Background(), identity.Module{DeviceID: deviceID, ModuleID: moduleID}, "")
	if err != nil {
		e.t.Fatalf("create module %s/%s: %v", deviceID, moduleID, err)
	}
	return m
}

// mqttHost is the HostName devices use: the hub's, with the MQTT port.
func (e *env) mqttHost() string { return testHost + ":" + e.mqttPort }

// client connects a device or module with setup applied before Connect.
func (e *env) client(cs string, cert *tls.Certificate, setup func(*client.Client)) *client.Client {
	e.t.Helper()
	c, err := e.newClient(cs, cert, setup)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := c.Connect(ctxT(e.t)); err != nil {
		e.t.Fatalf("connect: %v", err)
	}
	return c
}

func (e *env) newClient(cs string, cert *tls.Certificate, setup func(*client.Client)) (*client.Client, error) {
	c, err := client.New(client.Config{ConnectionString: cs, RootCAs: e.pool, Certificate: cert, Logger: testLogger(), KeepAlive: 30 * time.Second})
	if err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { c.Close() })
	if setup != nil {
		setup(c)
	}
	return c, nil
}

func (e *env) deviceClient(d identity.Device, setup func(*client.Client)) *client.Client {
	return e.client(service.DeviceConnectionString(d, e.mqttHost(), ""), nil, setup)
}

func (e *env) moduleClient(m identity.Module, setup func(*client.Client)) *client.Client {
	return e.client(service.ModuleConnectionString(m, e.mqttHost(), ""), nil, setup)
}

// session waits until this replica holds a session for clientID.
func (e *env) session(deviceID, moduleID string) gateway.Session {
	e.t.Helper()
	var s gateway.Session
	checkFor(e.t, 10*time.Second, func() error {
		if s = e.gw.Sessions(deviceID, moduleID); s == nil {
			return fmt.Errorf("no session for %s", message.ClientID(deviceID, moduleID))
		}
		return nil
	})
	return s
}

// stored returns the telemetry stored on a subject, in order.
func (e *env) stored(subject string) []*message.Message {
	e.t.Helper()
	ctx := ctxT(e.t)
	var out []*message.Message
	for seq := uint64(1); ; {
		raw, err := e.p.tel.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			e.t.Fatalf("read stream: %v", err)
		}
		m, err := decodeMsg(raw.Header, raw.Data)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
		seq = raw.Sequence + 1
	}
}

// pendingC2D counts the C2D messages queued for a device.
func (e *env) pendingC2D(deviceID string) int {
	e.t.Helper()
	info, err := e.p.c2d.Info(ctxT(e.t), jetstream.WithSubjectFilter(c2dSubject(deviceID)))
	if err != nil {
		e.t.Fatalf("c2d stream info: %v", err)
	}
	return int(info.State.Subjects[c2dSubject(deviceID)])
}

// deviceHTTP sends a device HTTPS request signed with the device's key.
func (e *env) deviceHTTP(method, path string, d identity.Device) *http.Response {
	e.t.Helper()
	return e.deviceHTTPBody(method, path, d, nil, nil)
}

func (e *env) deviceHTTPBody(method, path string, d identity.Device, body []byte, header http.Header) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.https.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", e.deviceToken(d))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool, ServerName: "localhost"}}}
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// deviceToken signs an hour's SAS token with the device's key.
func (e *env) deviceToken(d identity.Device) string {
	e.t.Helper()
	tok, err := sas.Sign(sas.DeviceResource(testHost, d.DeviceID, ""), d.Authentication.SymmetricKey.PrimaryKey, "", time.Now().Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// receiveC2D polls the device's C2D queue over HTTPS: the body and lock
// of the next message, "" when there is none.
func (e *env) receiveC2D(d identity.Device) (body, lock string, h http.Header) {
	e.t.Helper()
	resp := e.deviceHTTP(http.MethodGet, "/devices/"+d.DeviceID+"/messages/devicebound?api-version=2021-04-12", d)
	switch resp.StatusCode {
	case http.StatusNoContent:
		return "", "", resp.Header
	case http.StatusOK:
	default:
		e.t.Fatalf("receive: %d %s", resp.StatusCode, readAll(e.t, resp.Body))
	}
	return readAll(e.t, resp.Body), strings.Trim(resp.Header.Get("ETag"), `"`), resp.Header
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func serviceStatus(err error) (int, string) {
	var se *service.Error
	if errors.As(err, &se) {
		return se.Status, se.Code
	}
	return 0, ""
}
