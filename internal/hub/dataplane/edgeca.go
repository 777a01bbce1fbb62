package dataplane

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/certs"
	"outpost/internal/edgeproto"
	"outpost/internal/status"
)

// BucketEdgeHosts records, for each host name an edge CA was granted,
// the edge it went to: key base64url(host), value the edge's device id.
// A grant is never taken back, because the CA that carries it stays
// valid until it expires.
const BucketEdgeHosts = "EDGE_CA_HOSTS"

// maxEdgeHosts bounds the names one CSR may ask for.
const maxEdgeHosts = 16

// signEdgeCA signs the CA of an edge, from a CSR whose common name is the
// edge's device id and whose SANs are the edge's host names. The CA is
// constrained to the host names grantEdgeHosts allows (certs.SignEdgeCA).
func (p *Plane) signEdgeCA(ctx context.Context, edgeID string, csrPEM []byte) ([]byte, error) {
	if p.cfg.CA == nil {
		return nil, &status.Error{Status: http.StatusServiceUnavailable, Code: status.CodeServiceUnavailable, Message: "this hub has no CA to sign with"}
	}
	csr, err := certs.ParseCSR(csrPEM)
	if err != nil {
		return nil, badArgument("%v", err)
	}
	if csr.Subject.CommonName != edgeID {
		return nil, refused("CSR common name %q is not the edge's device id %q", csr.Subject.CommonName, edgeID)
	}
	hosts, err := p.grantEdgeHosts(ctx, edgeID, certs.CSRHosts(csr))
	if err != nil {
		return nil, err
	}
	chain, err := p.cfg.CA.SignEdgeCA(csrPEM, hosts, 0)
	if err != nil {
		return nil, fmt.Errorf("sign edge CA: %w", err)
	}
	p.log.Info("edge CA signed", "edge", edgeID, "hosts", hosts)
	return json.Marshal(edgeproto.SignedCA{Certificate: string(chain), RootCA: string(p.cfg.CA.CertPEM)})
}

// grantEdgeHosts decides which host names an edge's CA may carry: those
// its CSR asks for, when the hub can justify each one.
//
//   - A loopback name (localhost, *.localhost, 127.0.0.0/8, ::1) only
//     with Config.EdgeLoopbackNames: such a name reaches whatever listens
//     on the client's own machine, so it is shared by the hub (whose
//     certificate always carries localhost and 127.0.0.1) and every edge
//     there, and certificates cannot keep them apart. It suits only
//     one-machine setups (demo, tests).
//   - Never the hub's own host name: an edge could pose as the hub.
//   - Any other name only if no other edge was granted it: the first edge
//     to ask gets it, for good (BucketEdgeHosts), so that an edge cannot
//     pose as another one.
//
// Grants are exact names: the CA excludes their subdomains.
func (p *Plane) grantEdgeHosts(ctx context.Context, edgeID string, asked []string) ([]string, error) {
	if len(asked) == 0 {
		return nil, badArgument("the CSR names no host: an edge CA is constrained to the edge's host names, which the CSR must carry as DNS or IP SANs")
	}
	if len(asked) > maxEdgeHosts {
		return nil, badArgument("the CSR names %d hosts; at most %d", len(asked), maxEdgeHosts)
	}
	hubHost, _ := certs.CanonicalHost(p.h.HostName())
	var hosts, claims []string
	for _, a := range asked {
		h, err := certs.CanonicalHost(a)
		if err != nil {
			return nil, badArgument("CSR: %v", err)
		}
		if slices.Contains(hosts, h) {
			continue
		}
		switch {
		case certs.IsLoopback(h):
			if !p.cfg.EdgeLoopbackNames {
				return nil, refused("host name %q is a loopback name, which this hub grants no edge (start it with --edge-loopback-names for a one-machine setup); give the edge a --hostname of its own", h)
			}
		case h == hubHost:
			return nil, refused("host name %q is the hub's own: an edge CA may not carry it", h)
		default:
			claims = append(claims, h)
		}
		hosts = append(hosts, h)
	}
	// All are checked before any is recorded, so a refused CSR claims
	// nothing (unless two edges race for the same names).
	var free []string
	for _, h := range claims {
		held, err := p.edgeHostHeld(ctx, edgeID, h)
		if err != nil {
			return nil, err
		}
		if !held {
			free = append(free, h)
		}
	}
	for _, h := range free {
		_, err := p.edgeHosts.Create(ctx, edgeHostKey(h), []byte(edgeID))
		if errors.Is(err, jetstream.ErrKeyExists) {
			_, err = p.edgeHostHeld(ctx, edgeID, h)
		}
		if err != nil {
			return nil, err
		}
	}
	return hosts, nil
}

func edgeHostKey(host string) string { return base64.RawURLEncoding.EncodeToString([]byte(host)) }

// edgeHostHeld reports whether host is already edgeID's; it is an error
// when another edge holds it.
func (p *Plane) edgeHostHeld(ctx context.Context, edgeID, host string) (bool, error) {
	e, err := p.edgeHosts.Get(ctx, edgeHostKey(host))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("edge host names: %w", err)
	}
	if holder := string(e.Value()); holder != edgeID {
		return false, refused("host name %q was granted to edge %q: an edge CA may not carry another edge's name", host, holder)
	}
	return true, nil
}

func refused(format string, args ...any) error {
	return &status.Error{Status: http.StatusForbidden, Code: status.CodeUnauthorized, Message: fmt.Sprintf(format, args...)}
}
