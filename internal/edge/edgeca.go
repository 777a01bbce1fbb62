package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"outpost/internal/certs"
	"outpost/internal/edge/store"
)

// storedCA is the edge CA as kept in the store (sealed: it holds the key).
type storedCA struct {
	ChainPEM string `json:"chainPEM"` // edge CA first, then intermediates
	RootPEM  string `json:"rootPEM"`
	KeyPEM   string `json:"keyPEM"`
}

// loadEdgeCA returns the operator's CA when configured, else the one the
// hub signed at first sync, else nil (not obtained yet).
func (e *Edge) loadEdgeCA() (*certs.CA, error) {
	if e.cfg.EdgeCACert != "" {
		ca, err := certs.LoadCA(e.cfg.EdgeCACert, e.cfg.EdgeCAKey)
		if err != nil {
			return nil, fmt.Errorf("edge CA: %w", err)
		}
		if !ca.Permits(e.cfg.Hostname) {
			return nil, fmt.Errorf("edge CA %s: its name constraints do not permit the edge's host name %q", e.cfg.EdgeCACert, e.cfg.Hostname)
		}
		return ca, nil
	}
	v, err := e.st.Get([]byte(kvEdgeCA))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("edge CA: %w", err)
	}
	plain, err := e.seal.open(kvEdgeCA, v)
	if err != nil {
		return nil, fmt.Errorf("edge CA: %w", err)
	}
	var s storedCA
	if err := json.Unmarshal(plain, &s); err != nil {
		return nil, fmt.Errorf("edge CA: %w", err)
	}
	key, err := certs.ParseKeyPEM([]byte(s.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("edge CA: %w", err)
	}
	ca, err := certs.CAFromPEM([]byte(s.ChainPEM), key)
	if err != nil {
		return nil, fmt.Errorf("edge CA: %w", err)
	}
	// One signed before edge CAs were constrained, or for another host
	// name, is replaced.
	if !certs.IsEdgeCA(ca.Cert) {
		return nil, errors.New("edge CA: signed without the constraints of an edge CA")
	}
	if !ca.Permits(e.cfg.Hostname) {
		return nil, fmt.Errorf("edge CA: signed for other host names than %q", e.cfg.Hostname)
	}
	return ca, nil
}

// obtainEdgeCA has the hub sign a new edge CA (CN = the edge's id, SANs
// its host names, certs.EdgeHosts) and keeps it, sealed, in the store.
// The hub constrains the CA to those names, or refuses.
func (e *Edge) obtainEdgeCA(ctx context.Context) (*certs.CA, error) {
	ca, root, err := e.requestEdgeCA(ctx)
	if err != nil {
		return nil, err
	}
	if err := e.storeCA(ca, root); err != nil {
		return nil, err
	}
	e.log.Info("edge CA obtained from the hub", "subject", ca.Cert.Subject.CommonName, "notAfter", ca.Cert.NotAfter)
	return ca, nil
}

// requestEdgeCA has the hub sign a new edge CA, with a new key; it
// returns it with the hub's root, not yet kept.
func (e *Edge) requestEdgeCA(ctx context.Context) (*certs.CA, []byte, error) {
	csr, key, err := certs.NewCSR(e.cfg.DeviceID, certs.EdgeHosts(e.cfg.Hostname)...)
	if err != nil {
		return nil, nil, fmt.Errorf("edge CA: %w", err)
	}
	chain, root, err := e.up.SignEdgeCA(ctx, csr)
	if err != nil {
		return nil, nil, fmt.Errorf("edge CA: hub signing: %w", err)
	}
	ca, err := certs.CAFromPEM(chain, key)
	if err != nil {
		return nil, nil, fmt.Errorf("edge CA from hub: %w", err)
	}
	if !ca.Permits(e.cfg.Hostname) {
		return nil, nil, fmt.Errorf("edge CA from hub: it does not permit the edge's host name %q", e.cfg.Hostname)
	}
	return ca, root, nil
}

// storeCA keeps ca, with the hub's root, sealed in the store.
func (e *Edge) storeCA(ca *certs.CA, rootPEM []byte) error {
	keyPEM, err := certs.EncodeKeyPEM(ca.Key)
	if err != nil {
		return fmt.Errorf("edge CA: %w", err)
	}
	plain, err := json.Marshal(storedCA{ChainPEM: string(ca.ChainPEM()), RootPEM: string(rootPEM), KeyPEM: string(keyPEM)})
	if err != nil {
		return fmt.Errorf("edge CA: %w", err)
	}
	if err := e.st.Put([]byte(kvEdgeCA), e.seal.seal(kvEdgeCA, plain)); err != nil {
		return fmt.Errorf("edge CA: %w", err)
	}
	return nil
}
