package main

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edge"
	"outpost/internal/gateway"
	"outpost/internal/poll"
)

const testEdgeCS = "HostName=hub.example;DeviceId=edge1;SharedAccessKey=a2V5a2V5a2V5a2V5"

// The rate flags of `outpost hub` and `outpost edge`: bad values are
// refused with the flag named, and the values reach the configuration.
func TestRateFlagsParsed(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{
		{"--connect-rate", "0"},
		{"--client-byte-rate", "NaN"},
		{"--client-packet-rate", "+Inf"},
	} {
		err := runHub(ctx, append([]string{"--data-dir", t.TempDir()}, args...))
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("hub %v: %v; want a refusal naming %s", args, err, args[0])
		}
		err = runEdge(ctx, append([]string{"--connection-string", testEdgeCS, "--storage-folder", t.TempDir()}, args...))
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("edge %v: %v; want a refusal naming %s", args, err, args[0])
		}
	}

	f := edgeFlags{connString: testEdgeCS, storageFolder: t.TempDir(), identityRefresh: edge.DefaultIdentityRefresh,
		rates: gateway.Rates{ClientPackets: 50, ClientBytes: 4096, ConnectRate: -7}}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	if want := (gateway.Rates{ClientPackets: 50, ClientBytes: 4096, ConnectRate: -1}); cfg.Rates != want {
		t.Errorf("edge config rates %+v; want %+v", cfg.Rates, want)
	}
}

// `outpost hub --connect-rate 2` paces the connections its MQTT listener
// starts: five TLS handshakes begun together finish about half a second
// apart (the default, 500 a second, finishes them at once).
func TestHubConnectRateFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a hub; skipped with -short")
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mqttAddr := l.Addr().String()
	_ = l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	hubDone := make(chan error, 1)
	go func() {
		hubDone <- runHub(ctx, []string{"--data-dir", dir, "--https-addr", "127.0.0.1:0", "--mqtt-addr", mqttAddr, "--connect-rate", "2"})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-hubDone; err != nil {
			t.Errorf("hub: %v", err)
		}
	})
	poll.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
		select {
		case err := <-hubDone:
			t.Fatalf("hub ended: %v", err)
		default:
		}
		if _, err := os.Stat(filepath.Join(dir, "service-connection-string")); err != nil {
			return err
		}
		c, err := net.Dial("tcp", mqttAddr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	pem, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := certs.Pool(pem)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	start := time.Now()
	done := make([]time.Duration, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			d := net.Dialer{Timeout: 30 * time.Second}
			c, err := tls.DialWithDialer(&d, "tcp", mqttAddr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
			if err != nil {
				errs <- err
				return
			}
			done[i] = time.Since(start)
			_ = c.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("handshake: %v", err)
	}
	first, last := done[0], done[0]
	for _, d := range done {
		first, last = min(first, d), max(last, d)
	}
	// One every 500 ms: the fifth 2 s after the first.
	if want := 1500 * time.Millisecond; last-first < want {
		t.Errorf("%d handshakes done within %v of each other at --connect-rate 2; want over %v", n, last-first, want)
	}
	t.Logf("FIGURE --connect-rate 2: %d TLS handshakes begun together done after %v", n, done)
}
