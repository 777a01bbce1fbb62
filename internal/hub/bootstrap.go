package hub

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"outpost/internal/certs"
	"outpost/internal/sas"
)

// Files Bootstrap keeps in a hub's data directory, besides the CA and
// server certificate files of the certs package.
const (
	ServiceKeyFile              = "iothubowner.key"
	ServiceConnectionStringFile = "service-connection-string"
	// ServicePolicy is the shared access policy the hub creates: full
	// rights, as IoT Hub's iothubowner.
	ServicePolicy = "iothubowner"
)

// Credentials are what a hub needs on disk besides its state: the root CA
// that devices and edges trust, a server certificate issued by it, and
// the iothubowner service key.
type Credentials struct {
	CA         *certs.CA
	ServerCert tls.Certificate
	ServiceKey string // base64, the iothubowner primary key
	Dir        string
}

// Bootstrap loads the hub's credentials from dir or, on first start,
// creates them: a root CA (dir/ca.pem), a server certificate for hostname,
// localhost and 127.0.0.1, and the iothubowner key (dir/iothubowner.key,
// mode 0600). Later calls reuse them; the server certificate is re-issued
// when it no longer covers the hosts or nears expiry.
func Bootstrap(dir, hostname string) (*Credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	ca, _, err := certs.LoadOrCreateCA(dir, "Outpost hub root CA")
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	hosts := []string{"localhost", "127.0.0.1"}
	if hostname != "" && hostname != "localhost" && hostname != "127.0.0.1" {
		hosts = append([]string{stripPort(hostname)}, hosts...)
	}
	cert, err := certs.LoadOrCreateServerCert(dir, ca, hosts)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	key, err := loadOrCreateKey(filepath.Join(dir, ServiceKeyFile))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return &Credentials{CA: ca, ServerCert: cert, ServiceKey: key, Dir: dir}, nil
}

// CAFile is the path of the root CA certificate clients should trust.
func (c *Credentials) CAFile() string { return filepath.Join(c.Dir, certs.CAFile) }

// ConnectionString is the iothubowner service connection string for a hub
// reached at host (with ":port" when the port is not 443).
func (c *Credentials) ConnectionString(host string) string {
	return sas.ConnectionString{HostName: host, SharedAccessKeyName: ServicePolicy, SharedAccessKey: c.ServiceKey}.String()
}

// WriteConnectionString stores the service connection string in
// dir/service-connection-string (0600: it carries the owner key).
func (c *Credentials) WriteConnectionString(host string) error {
	p := filepath.Join(c.Dir, ServiceConnectionStringFile)
	if err := os.WriteFile(p, []byte(c.ConnectionString(host)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write connection string: %w", err)
	}
	return nil
}

func loadOrCreateKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k := strings.TrimSpace(string(b))
		if raw, err := base64.StdEncoding.DecodeString(k); err != nil || len(raw) < 16 {
			return "", fmt.Errorf("service key %s is not a base64 key of at least 16 bytes", path)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read service key: %w", err)
	}
	k := sas.GenerateKey()
	// O_EXCL: two first starts racing must not end with two keys.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create service key: %w", err)
	}
	if _, err := f.WriteString(k + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("write service key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("write service key: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write service key: %w", err)
	}
	return k, nil
}

func stripPort(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}
