package hub

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"outpost/internal/sas"
)

func TestBootstrap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "hub")
	c1, err := Bootstrap(dir, "hub.example:8443")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", ServiceKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	st, err := os.Stat(filepath.Join(dir, ServiceKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	leaf, err := x509.ParseCertificate(c1.ServerCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"hub.example", "localhost", "127.0.0.1"} {
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("server certificate does not cover %s: %v", host, err)
		}
	}

	c2, err := Bootstrap(dir, "hub.example:8443")
	if err != nil {
		t.Fatal(err)
	}
	if c2.ServiceKey != c1.ServiceKey || !c2.CA.Cert.Equal(c1.CA.Cert) {
		t.Fatal("second start made new credentials")
	}

	if err := c2.WriteConnectionString("hub.example:8443"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ServiceConnectionStringFile))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := sas.ParseConnectionString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if cs.HostName != "hub.example:8443" || cs.SharedAccessKeyName != ServicePolicy || cs.SharedAccessKey != c1.ServiceKey {
		t.Fatalf("connection string %+v", cs)
	}

	if err := os.WriteFile(filepath.Join(dir, ServiceKeyFile), []byte("not base64!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Bootstrap(dir, "hub.example"); err == nil {
		t.Fatal("a corrupt key file was accepted")
	}
}
