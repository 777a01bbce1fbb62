package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/client"
	"outpost/internal/identity"
)

// addCADevice registers an X.509 CA-authenticated child.
func (h *fakeHub) addCADevice(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.devices[id] = identity.Device{DeviceID: id, Status: identity.StatusEnabled, Authentication: identity.Authentication{Type: identity.AuthCA}}
}

// connectX509 connects deviceID through the edge with cert.
func (te *testEdge) connectX509(deviceID string, cert tls.Certificate) error {
	te.t.Helper()
	c, err := client.New(client.Config{
		ConnectionString: fmt.Sprintf("HostName=%s;DeviceId=%s;x509=true;GatewayHostName=localhost:%d", hubHost, deviceID, te.port()),
		RootCAs:          te.hub.pool(te.t),
		Certificate:      &cert,
	})
	if err != nil {
		te.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Connect(ctx)
}

// signedEdgeCA is the CA the hub would sign for another edge.
func signedEdgeCA(t *testing.T, root *certs.CA, edgeID string, hosts ...string) *certs.CA {
	t.Helper()
	csr, key, err := certs.NewCSR(edgeID, hosts...)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := root.SignEdgeCA(csr, hosts, 0)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.CAFromPEM(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestEdgeRefusesDeviceCertsFromEdgeCAs: a child authenticated by CA is
// verified against the hub's root only; certificates minted by this
// edge's CA, another edge's, or a sub-CA of one, are refused.
func TestEdgeRefusesDeviceCertsFromEdgeCAs(t *testing.T) {
	hub := newFakeHub(t)
	hub.addCADevice("cadev")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()

	other := signedEdgeCA(t, hub.root, "edge2", "edge2.example")
	sub, err := other.NewIntermediate("rogue sub-CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, issuer := range []*certs.CA{te.e.ca.Load(), other, sub} {
		rogue, _, _, err := issuer.IssueClient("cadev", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		err = te.connectX509("cadev", rogue)
		var ce *client.ConnectError
		if !errors.As(err, &ce) || ce.Retryable() {
			t.Fatalf("cadev with a certificate minted by %s: %v; want refusal as not authorized", issuer.Cert.Subject.CommonName, err)
		}
	}
	genuine, _, _, err := hub.root.IssueClient("cadev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := te.connectX509("cadev", genuine); err != nil {
		t.Fatalf("cadev with a certificate from the hub's root: %v\nlogs:\n%s", err, te.logs.String())
	}
}

// dialEdge makes a TLS handshake with the edge's MQTT listener for host.
func dialEdge(te *testEdge, host string) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", te.e.MQTTAddr().String(),
		&tls.Config{RootCAs: te.hub.pool(te.t), ServerName: host})
	if err == nil {
		c.Close()
	}
	return err
}

// TestEdgeCAFollowsHostname: the edge asks its hub for a CA constrained to
// its host name, serves a certificate with only the names that CA permits,
// and replaces a stored CA that does not fit (another host name, or one
// signed without constraints).
func TestEdgeCAFollowsHostname(t *testing.T) {
	hub := newFakeHub(t)
	dir := t.TempDir()
	te := startEdge(t, hub, dir, true)
	te.awaitReady()
	ca := te.e.ca.Load()
	if !certs.IsEdgeCA(ca.Cert) || !ca.Permits("localhost") || !ca.Permits("127.0.0.1") || ca.Permits("edge1.example") {
		t.Fatalf("edge CA for localhost: DNS %v IP %v", ca.Cert.PermittedDNSDomains, ca.Cert.PermittedIPRanges)
	}
	for _, h := range []string{"localhost", "127.0.0.1"} {
		if err := dialEdge(te, h); err != nil {
			t.Fatalf("TLS to the edge as %s: %v", h, err)
		}
	}
	te.close()

	te2 := startEdge(t, hub, dir, true, func(c *Config) { c.Hostname = "edge1.example" })
	te2.awaitReady()
	ca2 := te2.e.ca.Load()
	if ca2.Cert.Equal(ca.Cert) || !ca2.Permits("edge1.example") || ca2.Permits("localhost") {
		t.Fatalf("after the host name changed: DNS %v", ca2.Cert.PermittedDNSDomains)
	}
	if err := dialEdge(te2, "edge1.example"); err != nil {
		t.Fatalf("TLS to the edge as edge1.example: %v", err)
	}
	// The server certificate leaves out what the CA does not permit.
	var verr *tls.CertificateVerificationError
	if err := dialEdge(te2, "localhost"); !errors.As(err, &verr) {
		t.Fatalf("TLS to the edge as localhost: %v; want a verification error", err)
	}
	te2.close()

	// A CA signed before edge CAs were constrained is replaced too.
	te3 := startEdge(t, hub, dir, true, func(c *Config) { c.Hostname = "edge1.example" })
	te3.awaitReady()
	if !te3.e.ca.Load().Cert.Equal(ca2.Cert) {
		t.Fatal("a fitting stored CA was replaced")
	}
	te3.close()
	legacy, err := hub.root.NewIntermediate("edge1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if certs.IsEdgeCA(legacy.Cert) {
		t.Fatal("an unconstrained CA passes IsEdgeCA")
	}
	te4 := startEdge(t, hub, dir, false, func(c *Config) { c.Hostname = "edge1.example" })
	te4.awaitReady()
	if err := te4.e.storeCA(legacy, hub.root.CertPEM); err != nil {
		t.Fatal(err)
	}
	te4.close()
	te5 := startEdge(t, hub, dir, true, func(c *Config) { c.Hostname = "edge1.example" })
	te5.awaitReady()
	if ca5 := te5.e.ca.Load(); !certs.IsEdgeCA(ca5.Cert) {
		t.Fatal("the unconstrained stored CA was kept")
	}
	if err := contains(te5.logs.String(), "without the constraints of an edge CA"); err != nil {
		t.Error(err)
	}
}

// TestEdgeRefusesBadHostname: a host name no certificate can carry is
// refused at New, not by every sync attempt.
func TestEdgeRefusesBadHostname(t *testing.T) {
	for _, h := range []string{"*.example", "my host", "0.0.0.0"} {
		_, err := New(Config{HubHostName: hubHost, DeviceID: "edge1", Key: edgeKey, StorageDir: t.TempDir(), Hostname: h,
			NewUplink: func(UplinkDeps) (Uplink, error) { return &fakeUplink{}, nil }})
		if err == nil || !strings.Contains(err.Error(), "--hostname") {
			t.Errorf("New with host name %q: %v; want an error naming --hostname", h, err)
		}
	}
}
