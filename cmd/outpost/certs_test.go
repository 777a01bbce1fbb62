package main

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/hubserver"
	"outpost/internal/identity"
	"outpost/internal/service"
)

func TestCertsCreateEdgeCA(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a hub; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := hubserver.Start(ctx, hubserver.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	t.Setenv(envHubConnectionString, srv.ConnectionString())
	t.Setenv(envCA, srv.CAFile())
	svc, err := service.New(service.Config{ConnectionString: srv.ConnectionString(), CAFile: srv.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateDevice(ctx, identity.Device{DeviceID: "edge1", Capabilities: identity.Capabilities{IoTEdge: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateDevice(ctx, identity.Device{DeviceID: "edge2", Capabilities: identity.Capabilities{IoTEdge: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateDevice(ctx, identity.Device{DeviceID: "plain"}); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "ca")
	if err := run(ctx, []string{"certs", "create-edge-ca", "--device-id", "edge1", "--hostname", "edge1.example", "--out", out}); err != nil {
		t.Fatalf("create-edge-ca: %v", err)
	}
	ca, err := certs.LoadCA(filepath.Join(out, edgeCACertFile), filepath.Join(out, edgeCAKeyFile))
	if err != nil {
		t.Fatalf("the written edge CA does not load as --edge-ca-cert/--edge-ca-key would: %v", err)
	}
	if ca.Cert.Subject.CommonName != "edge1" || !ca.Cert.IsCA {
		t.Errorf("edge CA subject %q, IsCA %v", ca.Cert.Subject.CommonName, ca.Cert.IsCA)
	}
	// Constrained as the CA an edge obtains by itself.
	if !certs.IsEdgeCA(ca.Cert) || !ca.Permits("edge1.example") || ca.Permits("localhost") || ca.Permits("edge2.example") {
		t.Errorf("edge CA constraints: edge CA %v, DNS %v", certs.IsEdgeCA(ca.Cert), ca.Cert.PermittedDNSDomains)
	}
	rootPEM, err := os.ReadFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := certs.Pool(rootPEM)
	if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		t.Errorf("edge CA does not chain to the hub's root: %v", err)
	}
	if st, err := os.Stat(filepath.Join(out, edgeCAKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v, %v", st.Mode(), err)
	}

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"existing files are kept", []string{"--device-id", "edge1", "--hostname", "edge1.example", "--out", out}, "already exists"},
		{"not an edge device", []string{"--device-id", "plain", "--hostname", "plain.example", "--out", t.TempDir()}, "not an IoT Edge device"},
		{"unknown device", []string{"--device-id", "nope", "--hostname", "nope.example", "--out", t.TempDir()}, "DeviceNotFound"},
		{"missing device id", []string{"--hostname", "edge1.example", "--out", t.TempDir()}, "--device-id"},
		{"missing host name", []string{"--device-id", "edge2", "--out", t.TempDir()}, "--hostname"},
		{"wildcard host name", []string{"--device-id", "edge2", "--hostname", "*.example", "--out", t.TempDir()}, "not a DNS name"},
		{"another edge's host name", []string{"--device-id", "edge2", "--hostname", "edge1.example", "--out", t.TempDir()}, `granted to edge "edge1"`},
		{"loopback host name", []string{"--device-id", "edge2", "--hostname", "localhost", "--out", t.TempDir()}, "loopback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(ctx, append([]string{"certs", "create-edge-ca"}, tt.args...))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}
