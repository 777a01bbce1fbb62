package dataplane

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edgeproto"
	"outpost/internal/hub"
	"outpost/internal/identity"
	"outpost/internal/status"
)

// hubEdgeCA has the hub sign an edge CA for edgeID and hosts, the way an
// edge obtains it, and returns it with its key.
func (e *env) hubEdgeCA(edgeID string, hosts ...string) (*certs.CA, error) {
	e.t.Helper()
	csr, key, err := certs.NewCSR(edgeID, hosts...)
	if err != nil {
		e.t.Fatal(err)
	}
	reply, err := e.p.signEdgeCA(ctxT(e.t), edgeID, csr)
	if err != nil {
		return nil, err
	}
	var sc edgeproto.SignedCA
	if err := json.Unmarshal(reply, &sc); err != nil {
		e.t.Fatal(err)
	}
	ca, err := certs.CAFromPEM([]byte(sc.Certificate), key)
	if err != nil {
		e.t.Fatal(err)
	}
	return ca, nil
}

func wantStatus(t *testing.T, err error, want int, msg string) {
	t.Helper()
	var se *status.Error
	if !errors.As(err, &se) || se.Status != want || !strings.Contains(se.Message, msg) {
		t.Fatalf("got %v; want status %d mentioning %q", err, want, msg)
	}
}

// TestEdgeCAHostGrants checks which host names the hub lets an edge CA
// carry: the edge's own, never the hub's, a loopback one only when the
// hub allows it, and never one granted to another edge.
func TestEdgeCAHostGrants(t *testing.T) {
	e := newEnvWith(t, envOptions{hub: func(c *hub.Config) { c.HostName = "hub.example" }})
	e.device("edge-a", true)
	e.device("edge-b", true)

	a, err := e.hubEdgeCA("edge-a", "a.example", "10.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	if !certs.IsEdgeCA(a.Cert) || !a.Permits("a.example") || !a.Permits("10.0.0.5") || a.Permits("b.example") {
		t.Fatalf("edge CA: constrained %v, DNS %v, IP %v", certs.IsEdgeCA(a.Cert), a.Cert.PermittedDNSDomains, a.Cert.PermittedIPRanges)
	}
	// The same edge may ask again (a new key, a lost store).
	if _, err := e.hubEdgeCA("edge-a", "A.Example."); err != nil {
		t.Fatalf("edge-a again: %v", err)
	}
	tests := []struct {
		name   string
		hosts  []string
		status int
		msg    string
	}{
		{"another edge's name", []string{"c.example", "a.example"}, http.StatusForbidden, `granted to edge "edge-a"`},
		{"another edge's IP", []string{"10.0.0.5"}, http.StatusForbidden, `granted to edge "edge-a"`},
		{"the hub's name", []string{"hub.example"}, http.StatusForbidden, "the hub's own"},
		{"localhost", []string{"b.example", "localhost"}, http.StatusForbidden, "loopback"},
		{"127.0.0.1", []string{"127.0.0.1"}, http.StatusForbidden, "loopback"},
		{"::1", []string{"::1"}, http.StatusForbidden, "loopback"},
		{"no name", nil, http.StatusBadRequest, "names no host"},
		{"wildcard", []string{"*.b.example"}, http.StatusBadRequest, "not a DNS name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.hubEdgeCA("edge-b", tt.hosts...)
			wantStatus(t, err, tt.status, tt.msg)
		})
	}
	if _, err := e.hubEdgeCA("edge-b", "b.example"); err != nil {
		t.Fatalf("edge-b for its own name: %v", err)
	}
	if _, err := e.hubEdgeCA("edge-a", "b.example"); err == nil {
		t.Fatal("edge-a got edge-b's name")
	}
	// The refused CSR of edge-b claimed nothing: c.example is still free.
	if _, err := e.hubEdgeCA("edge-a", "c.example"); err != nil {
		t.Fatalf("c.example after a refused CSR asked for it: %v", err)
	}

	t.Run("loopback allowed", func(t *testing.T) {
		l := newEnv(t, func(c *Config) { c.EdgeLoopbackNames = true })
		l.device("edge-1", true)
		l.device("edge-2", true)
		for _, id := range []string{"edge-1", "edge-2"} {
			ca, err := l.hubEdgeCA(id, certs.EdgeHosts("localhost")...)
			if err != nil {
				t.Fatalf("%s: %v", id, err)
			}
			if !ca.Permits("localhost") || !ca.Permits("127.0.0.1") || ca.Permits("::1") || ca.Permits("edge.example") {
				t.Fatalf("%s: DNS %v IP %v", id, ca.Cert.PermittedDNSDomains, ca.Cert.PermittedIPRanges)
			}
		}
	})
}

// tlsDialFails serves cert on 127.0.0.1 and asserts that a client
// trusting roots refuses it for host.
func tlsDialFails(t *testing.T, cert tls.Certificate, roots *x509.CertPool, host string) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: host})
	if err == nil {
		c.Close()
		t.Fatalf("TLS client trusting the hub root accepted a server certificate for %s minted by an edge", host)
	}
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("TLS dial for %s: %v; want a certificate verification error", host, err)
	}
}

// TestRogueEdgeCA takes a genuine edge CA the hub signed for edge-e and
// mints with its key what a rogue edge would: a device certificate, server
// certificates for names that are not the edge's, a sub-CA. The hub's
// gateway and any client trusting the hub's root refuse them all.
func TestRogueEdgeCA(t *testing.T) {
	e := newEnvWith(t, envOptions{hub: func(c *hub.Config) { c.HostName = "hub.example" }})
	ctx := ctxT(t)
	e.device("edge-e", true)
	e.device("edge-f", true)
	if _, err := e.h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "someDevice", Authentication: identity.Authentication{Type: identity.AuthCA}}, "", false); err != nil {
		t.Fatal(err)
	}
	ca, err := e.hubEdgeCA("edge-e", "e.example")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.hubEdgeCA("edge-f", "f.example"); err != nil {
		t.Fatal(err)
	}
	sub, err := ca.NewIntermediate("rogue sub-CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	connect := func(t *testing.T, cert tls.Certificate) error {
		c, err := e.newClient("HostName="+e.mqttHost()+";DeviceId=someDevice;x509=true", &cert, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Connect(ctx)
	}
	t.Run("device certificate", func(t *testing.T) {
		for _, issuer := range []*certs.CA{ca, sub} {
			rogue, _, _, err := issuer.IssueClient("someDevice", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if err := connect(t, rogue); err == nil {
				t.Fatalf("the hub accepted someDevice with a certificate minted by %s", issuer.Cert.Subject.CommonName)
			}
		}
		genuine, _, _, err := e.ca.IssueClient("someDevice", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := connect(t, genuine); err != nil {
			t.Fatalf("someDevice with a certificate from the hub root: %v", err)
		}
	})

	t.Run("server certificate", func(t *testing.T) {
		genuine, _, _, err := ca.IssueServer([]string{"e.example"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := genuine.Leaf.Verify(x509.VerifyOptions{DNSName: "e.example", Roots: e.pool, Intermediates: pool(ca.Cert)}); err != nil {
			t.Fatalf("the edge's own server certificate: %v", err)
		}
		for _, host := range []string{"localhost", "127.0.0.1", "hub.example", "f.example"} {
			for _, issuer := range []*certs.CA{ca, sub} {
				rogue, _, _, err := issuer.IssueServer([]string{host}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := rogue.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: e.pool, Intermediates: pool(ca.Cert, sub.Cert)}); err == nil {
					t.Fatalf("a server certificate for %s minted by %s verifies against ca.pem", host, issuer.Cert.Subject.CommonName)
				}
				tlsDialFails(t, rogue, e.pool, host)
			}
		}
		// Below a sub-CA even the edge's own name is refused.
		rogue, _, _, err := sub.IssueServer([]string{"e.example"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rogue.Leaf.Verify(x509.VerifyOptions{DNSName: "e.example", Roots: e.pool, Intermediates: pool(ca.Cert, sub.Cert)}); err == nil {
			t.Fatal("a server certificate from a sub-CA of the edge CA verifies")
		}
		tlsDialFails(t, rogue, e.pool, "e.example")
	})
}

func pool(cs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cs {
		p.AddCert(c)
	}
	return p
}
