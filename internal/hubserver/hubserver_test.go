package hubserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/gateway"
	"outpost/internal/gateway/gatewaytest"
	"outpost/internal/hub"
	"outpost/internal/hub/dataplane"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/service"
)

func start(t *testing.T, dir string) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { shutdown(t, s) })
	return s
}

func shutdown(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// TestServesDevicesAndService runs the whole hub: a device registered
// through the service API sends telemetry over MQTT/TLS, and the data
// plane's reader sees it.
func TestServesDevicesAndService(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)

	_, port, _ := net.SplitHostPort(s.HTTPSAddr().String())
	if want := "localhost:" + port; s.HostName() != want {
		t.Errorf("HostName = %q, want %q", s.HostName(), want)
	}
	b, err := os.ReadFile(filepath.Join(dir, hub.ServiceConnectionStringFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != s.ConnectionString() {
		t.Errorf("written connection string %q, want %q", got, s.ConnectionString())
	}
	if _, err := os.Stat(s.CAFile()); err != nil {
		t.Errorf("CA file: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := service.New(service.Config{ConnectionString: s.ConnectionString(), CAFile: s.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	d, err := svc.CreateDevice(ctx, identity.Device{DeviceID: "dev1"})
	if err != nil {
		t.Fatalf("create device: %v", err)
	}

	got := make(chan dataplane.Event, 1)
	ready := make(chan struct{})
	readErr := make(chan error, 1)
	rctx, rcancel := context.WithCancel(ctx)
	go func() {
		readErr <- s.Plane().Events(rctx, dataplane.EventsOptions{DeviceID: "dev1"}, func() { close(ready) }, func(ev dataplane.Event) error {
			select {
			case got <- ev:
			default:
			}
			return nil
		})
	}()
	defer func() {
		rcancel()
		if err := <-readErr; err != nil {
			t.Errorf("events: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-readErr:
		t.Fatalf("events: %v", err)
	}

	cs := service.DeviceConnectionString(d, "localhost", "")
	dc, err := client.New(client.Config{ConnectionString: cs, RootCAs: s.RootCAs(), DialAddr: s.MQTTAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if err := dc.Connect(ctx); err != nil {
		t.Fatalf("device connect: %v", err)
	}
	if err := dc.Send(ctx, &message.Message{Body: []byte("hello")}); err != nil {
		t.Fatalf("send: %v", err)
	}
	select {
	case ev := <-got:
		if ev.DeviceID != "dev1" || string(ev.Body) != "hello" {
			t.Errorf("event %+v, want hello from dev1", ev.Message)
		}
	case <-ctx.Done():
		t.Fatal("telemetry never reached the reader")
	}

	// The hub's /metrics (open on loopback) counts the device and its
	// acknowledged message.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.RootCAs(), ServerName: "localhost"}}}
	resp, err := hc.Get("https://" + s.HTTPSAddr().String() + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %s", resp.Status)
	}
	for _, want := range []string{`outpost_connected_clients{via="direct"} 1`, "outpost_puback_latency_seconds_count 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestRestartKeepsCredentials checks that a second start on the same data
// directory serves the same service key and CA, and keeps the registry.
func TestRestartKeepsCredentials(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	s1, err := Start(ctx, Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(service.Config{ConnectionString: s1.ConnectionString(), RootCAs: s1.RootCAs()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateDevice(ctx, identity.Device{DeviceID: "kept"}); err != nil {
		t.Fatal(err)
	}
	key1 := keyOf(t, s1.ConnectionString())
	shutdown(t, s1)

	s2 := start(t, dir)
	if key2 := keyOf(t, s2.ConnectionString()); key2 != key1 {
		t.Errorf("service key changed across restarts")
	}
	svc2, err := service.New(service.Config{ConnectionString: s2.ConnectionString(), CAFile: s2.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc2.GetDevice(ctx, "kept"); err != nil {
		t.Errorf("device after restart: %v", err)
	}
}

func keyOf(t *testing.T, cs string) string {
	t.Helper()
	c, err := sas.ParseConnectionString(cs)
	if err != nil {
		t.Fatal(err)
	}
	return c.SharedAccessKey
}

// TestShutdownEndsEventStreams checks that an open events stream (as
// `outpost monitor-events` holds) does not hold Shutdown until its
// deadline, and that Shutdown may be called twice.
func TestShutdownEndsEventStreams(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(service.Config{ConnectionString: s.ConnectionString(), RootCAs: s.RootCAs(), Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	streamDone := make(chan error, 1)
	go func() {
		streamDone <- svc.MonitorEvents(ctx, service.EventsOptions{}, func() { close(ready) }, func(service.Event) error { return nil })
	}()
	select {
	case <-ready:
	case err := <-streamDone:
		t.Fatalf("events stream: %v", err)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	begin := time.Now()
	if err := s.Shutdown(sctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("shutdown took %v with an events stream open", d)
	}
	if err := s.Shutdown(sctx); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
	select {
	case <-streamDone:
	case <-ctx.Done():
		t.Error("the events stream did not end with the hub")
	}
}

func TestStartErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		ctx  context.Context
		cfg  func(dir string) Config
		want string
	}{
		{"no data dir", context.Background(), func(string) Config { return Config{} }, "no data directory"},
		{"https port taken", context.Background(), func(dir string) Config {
			return Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: busy.Addr().String()}
		}, "listen https"},
		{"mqtt port taken", context.Background(), func(dir string) Config {
			return Config{DataDir: dir, MQTTAddr: busy.Addr().String(), HTTPSAddr: "127.0.0.1:0"}
		}, "listen mqtt"},
		{"cancelled", cancelled, func(dir string) Config {
			return Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"}
		}, "context canceled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Start(tc.ctx, tc.cfg(dir))
			if err == nil {
				shutdown(t, s)
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to mention %q", err, tc.want)
			}
			if errors.Is(err, context.Canceled) || tc.cfg(dir).DataDir == "" {
				return
			}
			// What the failed start opened was closed again: the same
			// directory starts cleanly.
			start(t, dir)
		})
	}
}

// TestHTTPSTimeouts: the HTTPS listener closes a connection whose request
// header never completes, and a keep-alive connection left idle, after
// Config.HTTPTimeouts; the long-lived requests opened before them carry
// on: an events stream (as monitor-events holds; read over HTTP/1.1, as
// the Node SDKs and curl speak it) and a direct method whose device
// answers only afterwards.
func TestHTTPSTimeouts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0",
		HTTPTimeouts: gateway.HTTPTimeouts{ReadHeader: time.Second, Idle: 500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, s) })
	svc, err := service.New(service.Config{ConnectionString: s.ConnectionString(), RootCAs: s.RootCAs()})
	if err != nil {
		t.Fatal(err)
	}
	d, err := svc.CreateDevice(ctx, identity.Device{DeviceID: "dev1"})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.HTTPSAddr().String()

	cs, err := sas.ParseConnectionString(s.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.Sign(cs.HostName, cs.SharedAccessKey, cs.SharedAccessKeyName, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// A Transport with a TLS config of its own does not attempt HTTP/2.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.RootCAs(), ServerName: "localhost"}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/outpost/events?deviceId=dev1&api-version=2021-04-12", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", tok)
	resp, err := hc.Do(req) // answered once the hub's reader is in place
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
		t.Fatalf("events stream: %s over %s", resp.Status, resp.Proto)
	}

	dc, err := client.New(client.Config{ConnectionString: service.DeviceConnectionString(d, "localhost", ""), RootCAs: s.RootCAs(), DialAddr: s.MQTTAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	called, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free() // before dc.Close, which waits for the handler
	dc.OnMethod("slow", func(context.Context, string, []byte) (int, []byte) {
		close(called)
		<-release
		return 200, []byte(`"done"`)
	})
	if err := dc.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	method := make(chan error, 1)
	go func() {
		res, err := svc.InvokeMethod(ctx, "dev1", "", service.MethodRequest{MethodName: "slow", ResponseTimeoutInSeconds: 20})
		if err == nil && (res.Status != 200 || string(res.Payload) != `"done"`) {
			err = fmt.Errorf("method answered %d %s", res.Status, res.Payload)
		}
		method <- err
	}()
	select {
	case <-called:
	case err := <-method:
		t.Fatalf("direct method: %v", err)
	}

	gatewaytest.ClosedByServer(t, addr, s.RootCAs(), "GET /nothing HTTP/1.1\r\nHost: localhost\r\nX-Half")
	gatewaytest.ClosedByServer(t, addr, s.RootCAs(), "GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")

	free()
	if err := <-method; err != nil {
		t.Fatalf("direct method: %v", err)
	}
	if err := dc.Send(ctx, &message.Message{Body: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	var ev service.Event
	if err := json.NewDecoder(resp.Body).Decode(&ev); err != nil {
		t.Fatalf("the events stream broke: %v", err)
	}
	if string(ev.Body) != "after" {
		t.Fatalf("event %q", ev.Body)
	}
}
