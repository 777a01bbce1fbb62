package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// File names in a certificate directory.
const (
	CAFile        = "ca.pem"
	CAKeyFile     = "ca-key.pem"
	ServerFile    = "server.pem"
	ServerKeyFile = "server-key.pem"
)

// RenewBefore is how long before expiry LoadOrCreateServerCert replaces a
// server certificate, so a restart in the last weeks renews it in time.
const RenewBefore = 30 * 24 * time.Hour

// LoadCA reads a CA from a certificate PEM file (the CA first; it may be
// followed by intermediates, and a root at the end is ignored) and a key
// PEM file. Errors name the file at fault.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	if _, err := ParseCertsPEM(certPEM); err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	ca, err := CAFromPEM(certPEM, key)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	return ca, nil
}

// LoadOrCreateCA loads the CA in dir (ca.pem, ca-key.pem) or, when
// neither file exists, makes a root CA and writes it there. A file that
// is unreadable or corrupt, or one without the other, is an error naming
// the file: a CA is never replaced silently, because every certificate
// and every device that trusts it would break.
func LoadOrCreateCA(dir, commonName string) (ca *CA, created bool, err error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	certOK, err := exists(certPath)
	if err != nil {
		return nil, false, err
	}
	keyOK, err := exists(keyPath)
	if err != nil {
		return nil, false, err
	}
	switch {
	case certOK && keyOK:
		ca, err := LoadCA(certPath, keyPath)
		return ca, false, err
	case certOK:
		return nil, false, fmt.Errorf("%s exists but %s is missing", certPath, keyPath)
	case keyOK:
		return nil, false, fmt.Errorf("%s exists but %s is missing", keyPath, certPath)
	}
	ca, err = NewRootCA(commonName, 0)
	if err != nil {
		return nil, false, err
	}
	if err := ca.WriteFiles(dir); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("stat %s: %w", path, err)
}

// WriteFiles writes the CA to dir as ca.pem (certificate and chain) and
// ca-key.pem (mode 0600), each atomically. The key goes first so that a
// ca.pem on disk always has its key next to it.
func (ca *CA) WriteFiles(dir string) error {
	keyPEM, err := EncodeKeyPEM(ca.Key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, CAFile), ca.ChainPEM(), 0o644)
}

// LoadOrCreateServerCert returns the server certificate in dir
// (server.pem, server-key.pem) if it was issued by ca, covers every host
// and has more than RenewBefore left; otherwise it issues a new one and
// writes it. Unlike a CA, a server certificate can always be re-issued,
// so a corrupt one is replaced.
func LoadOrCreateServerCert(dir string, ca *CA, hosts []string) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, ServerFile), filepath.Join(dir, ServerKeyFile)
	if cert, ok, err := loadServerCert(certPath, keyPath, ca, hosts); err != nil || ok {
		return cert, err
	}
	cert, certPEM, keyPEM, err := ca.IssueServer(hosts, 0)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate directory: %w", err)
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return cert, nil
}

// loadServerCert reports ok=false when the certificate must be issued
// anew, and an error only when the files cannot be read at all.
func loadServerCert(certPath, keyPath string, ca *CA, hosts []string) (tls.Certificate, bool, error) {
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, false, nil
	} else if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("read server certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, false, nil
	} else if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("read server key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, false, nil
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return tls.Certificate{}, false, nil
	}
	now := time.Now()
	if leaf.NotAfter.Sub(now) < RenewBefore {
		return tls.Certificate{}, false, nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, h := range normalizeHosts(hosts) {
		_, err := leaf.Verify(x509.VerifyOptions{
			DNSName:     h,
			Roots:       roots,
			CurrentTime: now,
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return tls.Certificate{}, false, nil
		}
	}
	// The chain is rebuilt from ca rather than taken from the file, so a
	// CA whose own chain changed serves the right one.
	pair.Certificate = append([][]byte{leaf.Raw, ca.Cert.Raw}, ca.Chain...)
	pair.Leaf = leaf
	return pair, true, nil
}

// writeFileAtomic writes through a temporary file and a rename, so a
// crash leaves either the old file or the new one, never half of one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	// Sync the directory so the rename itself survives a power cut.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
