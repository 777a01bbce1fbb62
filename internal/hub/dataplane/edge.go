package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"outpost/internal/certs"
	"outpost/internal/gateway"
	"outpost/internal/identity"
)

// Extension names served to edges over $outpost/req/{name} (edge
// contract items 2 and 3).
const (
	ExtSyncIdentities = "sync-identities"
	ExtSignEdgeCA     = "sign-edge-ca"
)

// Snapshot is the reply to sync-identities: what an edge needs to serve
// its scope offline. It carries keys: it only travels to the edge itself,
// over its authenticated TLS link.
type Snapshot struct {
	Edge        identity.Device   `json:"edge"`
	Devices     []identity.Device `json:"devices"`
	Modules     []identity.Module `json:"modules"`
	RootCA      string            `json:"rootCA"`
	HubHostName string            `json:"hubHostName"`
	SyncedAt    time.Time         `json:"syncedAt"`
}

// SignedCA is the reply to sign-edge-ca.
type SignedCA struct {
	Certificate string `json:"certificate"` // edge CA, then intermediates
	RootCA      string `json:"rootCA"`
}

// Extension serves an edge's identity sync and edge CA signing. Only an
// edge device, on its own connection, may ask.
func (p *Plane) Extension(ctx context.Context, id gateway.Identity, name string, payload []byte) ([]byte, error) {
	if !id.Edge || id.ModuleID != "" || id.Via != "" {
		return nil, &gateway.StatusError{Status: http.StatusForbidden, Code: "IotHubUnauthorizedAccess",
			Message: "only an IoT Edge device may call " + name}
	}
	switch name {
	case ExtSyncIdentities:
		s, err := p.Snapshot(id.DeviceID)
		if err != nil {
			return nil, err
		}
		return json.Marshal(s)
	case ExtSignEdgeCA:
		return p.signEdgeCA(id.DeviceID, payload)
	}
	return nil, &gateway.StatusError{Status: http.StatusNotFound, Code: "NotFound", Message: "no extension " + name}
}

// Snapshot returns the identities in an edge's scope: the edge, its
// children, and the modules of both.
func (p *Plane) Snapshot(edgeID string) (*Snapshot, error) {
	edge, err := p.h.GetDevice(edgeID)
	if err != nil {
		return nil, asStatus(err)
	}
	children, err := p.h.ListChildren(edgeID)
	if err != nil {
		return nil, asStatus(err)
	}
	s := &Snapshot{Edge: edge, Devices: []identity.Device{}, Modules: []identity.Module{}, HubHostName: p.h.HostName(), SyncedAt: p.now().UTC()}
	if p.cfg.CA != nil {
		s.RootCA = string(p.cfg.CA.CertPEM)
	}
	for _, d := range append([]identity.Device{edge}, children...) {
		if d.DeviceID != edgeID {
			s.Devices = append(s.Devices, d)
		}
		ms, err := p.h.ListModules(d.DeviceID)
		if err != nil {
			continue // deleted meanwhile
		}
		s.Modules = append(s.Modules, ms...)
	}
	return s, nil
}

func (p *Plane) signEdgeCA(edgeID string, csrPEM []byte) ([]byte, error) {
	if p.cfg.CA == nil {
		return nil, &gateway.StatusError{Status: http.StatusServiceUnavailable, Code: "ServiceUnavailable", Message: "this hub has no CA to sign with"}
	}
	csr, err := certs.ParseCSR(csrPEM)
	if err != nil {
		return nil, badArgument("%v", err)
	}
	if csr.Subject.CommonName != edgeID {
		return nil, &gateway.StatusError{Status: http.StatusForbidden, Code: "IotHubUnauthorizedAccess",
			Message: fmt.Sprintf("CSR common name %q is not the edge's device id %q", csr.Subject.CommonName, edgeID)}
	}
	chain, err := p.cfg.CA.SignCSR(csrPEM, true, 0)
	if err != nil {
		return nil, fmt.Errorf("sign edge CA: %w", err)
	}
	return json.Marshal(SignedCA{Certificate: string(chain), RootCA: string(p.cfg.CA.CertPEM)})
}
