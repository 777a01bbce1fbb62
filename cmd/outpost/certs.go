package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"outpost/internal/certs"
	"outpost/internal/service"
)

// Files written by `outpost certs create-edge-ca`.
const (
	edgeCACertFile = "edge-ca.pem"
	edgeCAKeyFile  = "edge-ca-key.pem"
	rootCAFile     = "root-ca.pem"
)

func runCerts(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "create-edge-ca" {
		return errors.New("certs: usage: outpost certs create-edge-ca --device-id EDGE --hostname NAME --out DIR")
	}
	return runCreateEdgeCA(ctx, args[1:])
}

// runCreateEdgeCA makes an edge CA key here, has the hub's root CA sign
// its certificate through the service API, and writes both, so that an
// edge can be started with --edge-ca-cert and --edge-ca-key. The key
// never leaves this machine. The hub constrains the CA as it does the
// one an edge obtains by itself: to the edge's host name.
func runCreateEdgeCA(ctx context.Context, args []string) error {
	c := newHubCommand("certs create-edge-ca", "--device-id EDGE --hostname NAME --out DIR")
	id := c.requiredString("device-id", "the IoT Edge device the CA is for")
	host := c.requiredString("hostname", "the edge's --hostname: the CA may issue server certificates for this name only (with localhost and 127.0.0.1 when it is a loopback name)")
	out := c.requiredString("out", "folder to write edge-ca.pem, edge-ca-key.pem and root-ca.pem into")
	c.check(func() error {
		_, err := certs.CanonicalHost(*host)
		return err
	})
	c.check(func() error {
		for _, name := range []string{edgeCACertFile, edgeCAKeyFile} {
			if _, err := os.Stat(filepath.Join(*out, name)); err == nil {
				return fmt.Errorf("%s already exists: not overwriting an edge CA", filepath.Join(*out, name))
			}
		}
		return nil
	})
	return c.run(args, func(svc *service.Client) (any, error) { return nil, createEdgeCA(ctx, svc, *id, *host, *out) })
}

// createEdgeCA has the hub sign a new edge CA for device id and host name
// host and writes it into the folder out.
func createEdgeCA(ctx context.Context, svc *service.Client, id, host, out string) error {
	csr, key, err := certs.NewCSR(id, certs.EdgeHosts(host)...)
	if err != nil {
		return err
	}
	signed, err := svc.SignEdgeCA(ctx, id, csr)
	if err != nil {
		return err
	}
	keyPEM, err := certs.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	// The signed chain must match the key and chain to the root.
	ca, err := certs.CAFromPEM([]byte(signed.Certificate), key)
	if err != nil {
		return fmt.Errorf("hub's answer: %w", err)
	}
	if !certs.IsEdgeCA(ca.Cert) {
		return errors.New("hub's answer: an edge CA without the constraints of one (path length, names, usage); upgrade the hub")
	}
	roots, err := certs.Pool([]byte(signed.RootCA))
	if err != nil {
		return fmt.Errorf("hub's root CA: %w", err)
	}
	inter := x509.NewCertPool()
	if chain, err := certs.ParseCertsPEM([]byte(signed.Certificate)); err == nil {
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
	}
	if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		return fmt.Errorf("hub's answer does not chain to its root CA: %w", err)
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{edgeCAKeyFile, keyPEM, 0o600},
		{edgeCACertFile, []byte(signed.Certificate), 0o644},
		{rootCAFile, []byte(signed.RootCA), 0o644},
	} {
		if err := os.WriteFile(filepath.Join(out, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s, %s and %s\nstart the edge with: --hostname %s --edge-ca-cert %s --edge-ca-key %s\n",
		filepath.Join(out, edgeCACertFile), filepath.Join(out, edgeCAKeyFile), filepath.Join(out, rootCAFile),
		host, filepath.Join(out, edgeCACertFile), filepath.Join(out, edgeCAKeyFile))
	return nil
}
