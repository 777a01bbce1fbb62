package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustRoot(t *testing.T, cn string) *CA {
	t.Helper()
	ca, err := NewRootCA(cn, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// edgeCA obtains an edge CA the way an edge does at first sync: a CSR
// for its hosts signed by the parent, then rebuilt from the returned PEM
// and its key.
func edgeCA(t *testing.T, parent *CA, cn string, hosts ...string) *CA {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{cn + ".local"}
	}
	csr, key, err := NewCSR(cn, hosts...)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := parent.SignEdgeCA(csr, hosts, 0)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := CAFromPEM(certPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// handshake runs one TLS handshake over 127.0.0.1 and returns the client
// certificates the server verified and the client's error.
func handshake(t *testing.T, server tls.Certificate, clientCAs *x509.CertPool, client *tls.Config) ([]*x509.Certificate, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvCfg := &tls.Config{Certificates: []tls.Certificate{server}, MinVersion: tls.VersionTLS12}
	if clientCAs != nil {
		srvCfg.ClientCAs = clientCAs
		srvCfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	type result struct{ peers []*x509.Certificate }
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() { done <- r }()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, srvCfg)
		if tc.Handshake() == nil {
			r.peers = tc.ConnectionState().PeerCertificates
			// Read until the client closes, so TLS 1.3 client-side errors
			// about the client certificate reach the client first.
			tc.Read(make([]byte, 1))
		}
	}()
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), client)
	if err == nil {
		conn.Close()
	}
	r := <-done
	return r.peers, err
}

func TestTLSChain(t *testing.T) {
	root := mustRoot(t, "Outpost root")
	edge1 := edgeCA(t, root, "edge1", "edge1.local", "127.0.0.1")
	inter, err := root.NewIntermediate("operator's intermediate", 0)
	if err != nil {
		t.Fatal(err)
	}
	edge2 := edgeCA(t, inter, "edge2", "edge1.local", "127.0.0.1") // an edge CA under an intermediate
	otherRoot := mustRoot(t, "someone else")

	rootPool, err := Pool(root.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	otherPool, err := Pool(otherRoot.CertPEM)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		ca         *CA
		serverName string
		roots      *x509.CertPool
		chainLen   int
		ok         bool
	}{
		{"root-issued", root, "hub.local", rootPool, 2, true},
		{"edge CA from CSR", edge1, "edge1.local", rootPool, 2, true},
		{"edge CA, IP SAN", edge1, "127.0.0.1", rootPool, 2, true},
		{"edge CA under an intermediate", edge2, "edge1.local", rootPool, 3, true},
		{"wrong hostname", edge1, "other.local", rootPool, 2, false},
		{"wrong CA", edge1, "edge1.local", otherPool, 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hosts := []string{"edge1.local", "127.0.0.1"}
			if tt.ca == root {
				hosts = append(hosts, "hub.local:8883")
			}
			cert, certPEM, keyPEM, err := tt.ca.IssueServer(hosts, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if len(cert.Certificate) != tt.chainLen {
				t.Fatalf("chain has %d certificates, want %d", len(cert.Certificate), tt.chainLen)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Fatalf("PEM pair: %v", err)
			}
			_, err = handshake(t, cert, nil, &tls.Config{RootCAs: tt.roots, ServerName: tt.serverName, MinVersion: tls.VersionTLS12})
			if tt.ok && err != nil {
				t.Fatalf("handshake failed: %v", err)
			}
			var verr *tls.CertificateVerificationError
			if !tt.ok && !errors.As(err, &verr) {
				t.Fatalf("handshake error %v, want a certificate verification error", err)
			}
		})
	}
}

func TestTLSClientCert(t *testing.T) {
	root := mustRoot(t, "root")
	edge := edgeCA(t, root, "edge")
	server, _, _, err := root.IssueServer([]string{"hub.local"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	rootPool, _ := Pool(root.CertPEM)
	tests := []struct {
		name   string
		issuer *CA
		ok     bool
	}{
		{"device cert from the root", root, true},
		{"device cert from edge CA", edge, false},
		{"device cert from foreign CA", mustRoot(t, "foreign"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, _, _, err := tt.issuer.IssueClient("dev1", 0)
			if err != nil {
				t.Fatal(err)
			}
			peers, err := handshake(t, server, rootPool, &tls.Config{
				RootCAs: rootPool, ServerName: "hub.local", Certificates: []tls.Certificate{client}, MinVersion: tls.VersionTLS12,
			})
			if !tt.ok {
				if peers != nil {
					t.Fatal("server accepted the client certificate")
				}
				return
			}
			if err != nil || len(peers) == 0 {
				t.Fatalf("handshake: %v, peers %d", err, len(peers))
			}
			if cn := peers[0].Subject.CommonName; cn != "dev1" {
				t.Fatalf("peer CN = %q, want dev1", cn)
			}
		})
	}
}

func TestSelfSignedThumbprint(t *testing.T) {
	cert, certPEM, keyPEM, err := SelfSigned("dev-x509")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf.Subject.CommonName != "dev-x509" || leaf.IsCA {
		t.Fatalf("subject %q IsCA %v", leaf.Subject.CommonName, leaf.IsCA)
	}
	want := fmt.Sprintf("%X", sha1.Sum(leaf.Raw))
	if got := Thumbprint(leaf); got != want || len(got) != 40 {
		t.Fatalf("Thumbprint = %q, want %q", got, want)
	}
	if got := ThumbprintSHA256(leaf); len(got) != 64 || strings.ToUpper(got) != got {
		t.Fatalf("ThumbprintSHA256 = %q", got)
	}
}

func TestSignCSRLeafAndLimits(t *testing.T) {
	root, err := NewRootCA("root", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "gw", Organization: []string{"ignored"}},
		DNSNames:    []string{"gw.local"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	certPEM, err := root.SignCSR(csrPEM, 0)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertsPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	c := certs[0]
	if c.IsCA || c.Subject.CommonName != "gw" || len(c.Subject.Organization) != 0 {
		t.Fatalf("leaf: IsCA %v subject %v", c.IsCA, c.Subject)
	}
	if err := c.VerifyHostname("gw.local"); err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyHostname("10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if c.NotAfter.After(root.Cert.NotAfter) {
		t.Fatalf("leaf outlives its CA: %v > %v", c.NotAfter, root.Cert.NotAfter)
	}
	if _, err := root.SignCSR([]byte("junk"), 0); err == nil {
		t.Fatal("SignCSR(junk): no error")
	}
	if _, err := root.SignEdgeCA([]byte("junk"), []string{"gw.local"}, 0); err == nil {
		t.Fatal("SignEdgeCA(junk): no error")
	}
	// A CSR whose signature does not match its key is refused.
	bad := bytes.Clone(der)
	bad[len(bad)-5] ^= 0xff
	if _, err := root.SignEdgeCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: bad}), []string{"gw.local"}, 0); err == nil {
		t.Fatal("SignEdgeCA(tampered): no error")
	}
	if _, err := root.SignEdgeCA(csrPEM, nil, 0); err == nil {
		t.Fatal("SignEdgeCA(no hosts): no error")
	}
}

func TestChains(t *testing.T) {
	root := mustRoot(t, "root")
	e1, err := root.NewIntermediate("e1", 0)
	if err != nil {
		t.Fatal(err)
	}
	e2, err := e1.NewIntermediate("e2", 0)
	if err != nil {
		t.Fatal(err)
	}
	e3 := edgeCA(t, e2, "e3")
	tests := []struct {
		ca   *CA
		want []*x509.Certificate
	}{
		{root, nil},
		{e1, nil},
		{e2, []*x509.Certificate{e1.Cert}},
		{e3, []*x509.Certificate{e2.Cert, e1.Cert}},
	}
	for _, tt := range tests {
		t.Run(tt.ca.Cert.Subject.CommonName, func(t *testing.T) {
			if len(tt.ca.Chain) != len(tt.want) {
				t.Fatalf("Chain has %d certificates, want %d", len(tt.ca.Chain), len(tt.want))
			}
			for i, c := range tt.want {
				if !bytes.Equal(tt.ca.Chain[i], c.Raw) {
					t.Fatalf("Chain[%d] is not %s", i, c.Subject.CommonName)
				}
			}
		})
	}
	// A CA loaded from a PEM that also holds the root drops the root.
	withRoot := append(e3.ChainPEM(), root.CertPEM...)
	loaded, err := CAFromPEM(withRoot, e3.Key)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded.Chain) != 2 {
		t.Fatalf("loaded chain has %d certificates, want 2", len(loaded.Chain))
	}
	if _, err := CAFromPEM(e3.ChainPEM(), e2.Key); err == nil {
		t.Fatal("CAFromPEM with the wrong key: no error")
	}
	leafPEM := func() []byte { _, p, _, _ := e1.IssueClient("d", 0); return p }()
	if _, err := CAFromPEM(leafPEM, e1.Key); err == nil {
		t.Fatal("CAFromPEM of a leaf: no error")
	}
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ca1, created, err := LoadOrCreateCA(dir, "Outpost root")
	if err != nil || !created {
		t.Fatalf("first: created %v, %v", created, err)
	}
	ca2, created, err := LoadOrCreateCA(dir, "Outpost root")
	if err != nil || created {
		t.Fatalf("second: created %v, %v", created, err)
	}
	if !bytes.Equal(ca1.Cert.Raw, ca2.Cert.Raw) || !ca1.Key.Public().(*ecdsa.PublicKey).Equal(ca2.Key.Public()) {
		t.Fatal("second load gave a different CA")
	}
	st, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, want 0600", st.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func TestLoadOrCreateCAErrors(t *testing.T) {
	tests := []struct {
		name     string
		corrupt  func(dir string) error
		wantFile string
	}{
		{"corrupt ca.pem", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, CAFile), []byte("not a certificate"), 0o644)
		}, CAFile},
		{"truncated ca.pem", func(dir string) error {
			b, err := os.ReadFile(filepath.Join(dir, CAFile))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, CAFile), b[:len(b)/2], 0o644)
		}, CAFile},
		{"corrupt key", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, CAKeyFile), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
		}, CAKeyFile},
		{"key missing", func(dir string) error { return os.Remove(filepath.Join(dir, CAKeyFile)) }, CAKeyFile},
		{"cert missing", func(dir string) error { return os.Remove(filepath.Join(dir, CAFile)) }, CAFile},
		{"key of another CA", func(dir string) error {
			other, err := NewRootCA("other", 0)
			if err != nil {
				return err
			}
			p, err := EncodeKeyPEM(other.Key)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, CAKeyFile), p, 0o600)
		}, CAKeyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, _, err := LoadOrCreateCA(dir, "root"); err != nil {
				t.Fatal(err)
			}
			if err := tt.corrupt(dir); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(filepath.Join(dir, CAFile))
			_, _, err := LoadOrCreateCA(dir, "root")
			if err == nil || !strings.Contains(err.Error(), tt.wantFile) {
				t.Fatalf("error %v, want one naming %s", err, tt.wantFile)
			}
			after, _ := os.ReadFile(filepath.Join(dir, CAFile))
			if !bytes.Equal(before, after) {
				t.Fatal("ca.pem was replaced")
			}
		})
	}
}

func TestLoadCAOperatorFiles(t *testing.T) {
	root := mustRoot(t, "root")
	edge := edgeCA(t, root, "edge")
	ec := edge.Key.(*ecdsa.PrivateKey)
	sec1, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "edge-ca.pem"), filepath.Join(dir, "edge-ca-key.pem")
	// An operator's bundle: the edge CA, then the root.
	if err := os.WriteFile(certFile, append(edge.ChainPEM(), root.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca.Cert.Raw, edge.Cert.Raw) || len(ca.Chain) != 0 {
		t.Fatalf("loaded %s with %d chain certificates", ca.Cert.Subject.CommonName, len(ca.Chain))
	}
	if _, err := LoadCA(filepath.Join(dir, "nope.pem"), keyFile); err == nil || !strings.Contains(err.Error(), "nope.pem") {
		t.Fatalf("missing file error %v", err)
	}
}

func TestLoadOrCreateServerCert(t *testing.T) {
	root := mustRoot(t, "root")
	other := mustRoot(t, "other")
	hosts := []string{"localhost", "127.0.0.1"}

	leafOf := func(c tls.Certificate) []byte { return c.Certificate[0] }
	tests := []struct {
		name   string
		before func(t *testing.T, dir string)
		ca     *CA
		hosts  []string
		reuse  bool
	}{
		{"reuse", nil, root, hosts, true},
		{"reuse, host with port", nil, root, []string{"localhost:18443"}, true},
		{"new host", nil, root, append(hosts, "hub.example"), false},
		{"other CA", nil, other, hosts, false},
		{"corrupt", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, ServerFile), []byte("junk"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, root, hosts, false},
		{"expiring", func(t *testing.T, dir string) {
			_, c, k, err := root.IssueServer(hosts, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, ServerFile), c, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, ServerKeyFile), k, 0o600); err != nil {
				t.Fatal(err)
			}
		}, root, hosts, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			first, err := LoadOrCreateServerCert(dir, root, hosts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.before != nil {
				tt.before(t, dir)
			}
			second, err := LoadOrCreateServerCert(dir, tt.ca, tt.hosts)
			if err != nil {
				t.Fatal(err)
			}
			if got := bytes.Equal(leafOf(first), leafOf(second)); got != tt.reuse {
				t.Fatalf("reused = %v, want %v", got, tt.reuse)
			}
			pool, _ := Pool(tt.ca.CertPEM)
			for _, h := range normalizeHosts(tt.hosts) {
				if _, err := second.Leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: pool}); err != nil {
					t.Fatalf("result does not verify for %s: %v", h, err)
				}
			}
			third, err := LoadOrCreateServerCert(dir, tt.ca, tt.hosts)
			if err != nil || !bytes.Equal(leafOf(second), leafOf(third)) {
				t.Fatalf("third call did not reuse: %v", err)
			}
		})
	}
}

func TestPool(t *testing.T) {
	root := mustRoot(t, "root")
	if _, err := Pool(root.CertPEM, []byte("junk")); err == nil || !strings.Contains(err.Error(), "PEM 2") {
		t.Fatalf("Pool with junk: %v", err)
	}
	if _, err := Pool(root.CertPEM, root.ChainPEM()); err != nil {
		t.Fatal(err)
	}
}

func TestIssueErrors(t *testing.T) {
	root := mustRoot(t, "root")
	if _, _, _, err := root.IssueServer(nil, 0); err == nil {
		t.Error("IssueServer(no hosts): no error")
	}
	if _, _, _, err := root.IssueServer([]string{" ", ":80"}, 0); err == nil {
		t.Error("IssueServer(blank hosts): no error")
	}
	if _, _, _, err := root.IssueClient("", 0); err == nil {
		t.Error("IssueClient(\"\"): no error")
	}
}
