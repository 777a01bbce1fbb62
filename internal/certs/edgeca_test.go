package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// intermediates pools the certificates after the leaf in cert.
func intermediates(cert tls.Certificate) (*x509.CertPool, error) {
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		inter.AddCert(c)
	}
	return inter, nil
}

// verifyServer verifies a server certificate chain for host against
// roots, as a child device or edge does.
func verifyServer(cert tls.Certificate, roots *x509.CertPool, host string) error {
	inter, err := intermediates(cert)
	if err != nil {
		return err
	}
	_, err = cert.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter})
	return err
}

// verifyClient verifies a client certificate chain as the hub does.
func verifyClient(cert tls.Certificate, roots *x509.CertPool) error {
	inter, err := intermediates(cert)
	if err != nil {
		return err
	}
	_, err = cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// dialFails asserts that a TLS client trusting roots refuses server for host.
func dialFails(t *testing.T, server tls.Certificate, roots *x509.CertPool, host string) {
	t.Helper()
	_, err := handshake(t, server, nil, &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12})
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("TLS dial to %s: %v, want a certificate verification error", host, err)
	}
}

// TestEdgeCAConstraints mints, with the key of a genuine edge CA, what a
// rogue edge would: none of it verifies against the hub's root.
func TestEdgeCAConstraints(t *testing.T) {
	root := mustRoot(t, "Outpost root")
	roots, err := Pool(root.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	e := edgeCA(t, root, "edge1", "edge1.example")
	if c := e.Cert; !IsEdgeCA(c) || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero ||
		!slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) ||
		!c.PermittedDNSDomainsCritical || !slices.Equal(c.PermittedDNSDomains, []string{"edge1.example"}) {
		t.Errorf("edge CA constraints: pathlen %d/%v EKU %v DNS %v critical %v", c.MaxPathLen, c.MaxPathLenZero, c.ExtKeyUsage, c.PermittedDNSDomains, c.PermittedDNSDomainsCritical)
	}
	if IsEdgeCA(root.Cert) {
		t.Fatal("IsEdgeCA(root) = true")
	}

	genuine, _, _, err := e.IssueServer([]string{"edge1.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyServer(genuine, roots, "edge1.example"); err != nil {
		t.Fatalf("genuine edge server certificate: %v", err)
	}
	if _, err := handshake(t, genuine, nil, &tls.Config{RootCAs: roots, ServerName: "edge1.example", MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatalf("TLS to the genuine edge: %v", err)
	}

	for _, tc := range []struct{ sans, host string }{
		{"localhost", "localhost"},
		{"127.0.0.1", "127.0.0.1"},
		{"::1", "::1"},
		{"hub.example", "hub.example"},
		{"edge2.example", "edge2.example"},
		{"10.0.0.1", "10.0.0.1"},
		{"x.edge1.example", "x.edge1.example"},
		{"*.edge1.example", "x.edge1.example"},
		{"example", "example"},
		// The granted name beside a stolen one spoils the whole certificate.
		{"edge1.example,hub.example", "hub.example"},
		{"edge1.example,hub.example", "edge1.example"},
	} {
		t.Run("server "+tc.sans, func(t *testing.T) {
			rogue, _, _, err := e.IssueServer(strings.Split(tc.sans, ","), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyServer(rogue, roots, tc.host); err == nil {
				t.Fatalf("a server certificate for %s minted by the edge CA verifies for %s against the hub root", tc.sans, tc.host)
			}
			dialFails(t, rogue, roots, tc.host)
		})
	}

	t.Run("client certificate", func(t *testing.T) {
		rogue, _, _, err := e.IssueClient("someDevice", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyClient(rogue, roots); err == nil {
			t.Fatal("a device certificate minted by the edge CA verifies against the hub root")
		}
		// A TLS server requiring client certificates from the root refuses it.
		server, _, _, err := root.IssueServer([]string{"hub.example"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		peers, _ := handshake(t, server, roots, &tls.Config{RootCAs: roots, ServerName: "hub.example", Certificates: []tls.Certificate{rogue}, MinVersion: tls.VersionTLS12})
		if peers != nil {
			t.Fatal("TLS server accepted a client certificate minted by the edge CA")
		}
	})

	t.Run("sub-CA", func(t *testing.T) {
		sub, err := e.NewIntermediate("rogue sub-CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		server, _, _, err := sub.IssueServer([]string{"edge1.example"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyServer(server, roots, "edge1.example"); err == nil {
			t.Fatal("a server certificate from a sub-CA of the edge CA verifies")
		}
		dialFails(t, server, roots, "edge1.example")
		client, _, _, err := sub.IssueClient("someDevice", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyClient(client, roots); err == nil {
			t.Fatal("a client certificate from a sub-CA of the edge CA verifies")
		}
	})
}

// TestEdgeCAHostKinds covers edge CAs granted loopback names or only an
// IP address: each serves its names and nothing of the other kind.
func TestEdgeCAHostKinds(t *testing.T) {
	root := mustRoot(t, "Outpost root")
	roots, _ := Pool(root.CertPEM)
	tests := []struct {
		hostname string
		ok, bad  []string
	}{
		{"localhost", []string{"localhost", "127.0.0.1"}, []string{"hub.example", "::1", "127.0.0.2", "a.localhost"}},
		{"10.0.0.5", []string{"10.0.0.5"}, []string{"10.0.0.6", "edge.example", "localhost"}},
		{"edge.example", []string{"edge.example"}, []string{"localhost", "127.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.hostname, func(t *testing.T) {
			e := edgeCA(t, root, "edge", EdgeHosts(tt.hostname)...)
			for _, h := range tt.ok {
				if !e.Permits(h) {
					t.Errorf("Permits(%s) = false", h)
				}
				cert, _, _, err := e.IssueServer([]string{h}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				if err := verifyServer(cert, roots, h); err != nil {
					t.Errorf("server certificate for granted %s: %v", h, err)
				}
			}
			for _, h := range tt.bad {
				if e.Permits(h) {
					t.Errorf("Permits(%s) = true", h)
				}
				cert, _, _, err := e.IssueServer([]string{h}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				if err := verifyServer(cert, roots, h); err == nil {
					t.Errorf("server certificate for %s, not granted, verifies", h)
				}
			}
		})
	}
	inter, err := root.NewIntermediate("unconstrained", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !inter.Permits("anything.example") || !root.Permits("127.0.0.1") {
		t.Error("an unconstrained CA does not permit every name")
	}
	under := edgeCA(t, inter, "edge", "edge.example")
	if !under.Permits("EDGE.example.") || under.Permits("other.example") {
		t.Error("Permits of an edge CA under an intermediate")
	}
}

func TestCanonicalHost(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Edge1.Example.", "edge1.example"},
		{"edge1.example:8883", "edge1.example"},
		{"[::1]:8883", "::1"},
		{"0:0:0:0:0:0:0:1", "::1"},
		{"127.0.0.1", "127.0.0.1"},
		{"under_score.example", "under_score.example"},
		{"*.example", ""},
		{"a..example", ""},
		{"-a.example", ""},
		{"a b", ""},
		{"", ""},
		{"0.0.0.0", ""},
		{strings.Repeat("a", 64) + ".example", ""},
	} {
		got, err := CanonicalHost(tc.in)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("CanonicalHost(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for h, want := range map[string]bool{"localhost": true, "a.localhost": true, "127.0.0.9": true, "::1": true, "localhost.example": false, "10.0.0.1": false} {
		if IsLoopback(h) != want {
			t.Errorf("IsLoopback(%s) = %v", h, !want)
		}
	}
	for h, want := range map[string]string{"localhost": "localhost,127.0.0.1", "127.0.0.1": "127.0.0.1,localhost", "gw.example": "gw.example"} {
		if got := strings.Join(EdgeHosts(h), ","); got != want {
			t.Errorf("EdgeHosts(%s) = %s, want %s", h, got, want)
		}
	}
}
