package main

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edge"
	"outpost/internal/gateway"
	"outpost/internal/gateway/transporttest"
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
	// One every 500 ms: the fifth 2 s after the first.
	const n = 5
	spread, err := transporttest.HandshakeSpread(mqttAddr, &tls.Config{RootCAs: roots, ServerName: "localhost"}, n)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1500 * time.Millisecond; spread < want {
		t.Errorf("%d handshakes done within %v of each other at --connect-rate 2; want over %v", n, spread, want)
	}
	t.Logf("FIGURE --connect-rate 2: %d TLS handshakes begun together done within %v", n, spread)
}
