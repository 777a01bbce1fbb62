package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"outpost/internal/certs"
)

// The edge issues its own server certificate from its edge CA, locally,
// so it renews offline as well as online: it is served through
// tls.Config.GetCertificate and issued again once serverRenewAfter of its
// life has passed, by the edge's clock. The edge CA itself is the hub's
// to sign (or the operator's to replace): within CAExpiryWarning of its
// expiry the edge warns, shows it in /status and asks the hub to sign a
// new one whenever online.
const (
	// serverRenewAfter is the share of a server certificate's life after
	// which the edge issues the next one: a third of it is left for a
	// clock that was wrong, or an edge that was off.
	serverRenewAfter = 2.0 / 3
	// CAExpiryWarning is how long before its edge CA expires the edge
	// warns and, when the hub signed it, asks the hub for a new one.
	CAExpiryWarning = 30 * 24 * time.Hour
	// caWarnEvery spaces the warnings of an edge CA about to expire.
	caWarnEvery = 24 * time.Hour
	// caRenewTimeout bounds the hub's signing of a renewed edge CA.
	caRenewTimeout = 30 * time.Second
)

// issuedCert is a server certificate and the edge CA it came from.
type issuedCert struct {
	ca   *certs.CA
	cert *tls.Certificate
}

// renewAt is when c is due for renewal.
func (c *issuedCert) renewAt() time.Time {
	l := c.cert.Leaf
	return l.NotBefore.Add(time.Duration(float64(l.NotAfter.Sub(l.NotBefore)) * serverRenewAfter))
}

// due reports whether c must be issued again at now: the edge CA
// changed; the clock is before c's start (c was issued while the clock
// was ahead, and children with a right clock refuse it); or c is past
// renewAt and a new one would outlive it (one capped at the CA's expiry
// gains nothing).
func (c *issuedCert) due(ca *certs.CA, now time.Time) bool {
	if c.ca != ca || now.Before(c.cert.Leaf.NotBefore) {
		return true
	}
	if now.Before(c.renewAt()) {
		return false
	}
	next := now.Add(certs.DefaultLeafValidity)
	if next.After(ca.Cert.NotAfter) {
		next = ca.Cert.NotAfter
	}
	return next.After(c.cert.Leaf.NotAfter)
}

// serverHosts are the names of the server certificate: the edge's host
// name and, where the CA permits them, localhost and 127.0.0.1 (a
// verifier refuses a certificate with any name its CA does not permit).
func (e *Edge) serverHosts(ca *certs.CA) ([]string, error) {
	if !ca.Permits(e.cfg.Hostname) {
		return nil, fmt.Errorf("server certificate: the edge CA does not permit the host name %q", e.cfg.Hostname)
	}
	hosts := []string{e.cfg.Hostname}
	for _, h := range []string{"localhost", "127.0.0.1"} {
		if ca.Permits(h) {
			hosts = append(hosts, h)
		}
	}
	return hosts, nil
}

// serverCert returns the certificate to serve, issuing a new one from the
// current edge CA when it is due. A renewal that fails keeps the current
// certificate, still valid, and is tried again at the next handshake.
func (e *Edge) serverCert() (*tls.Certificate, error) {
	ca, now := e.ca.Load(), e.now()
	if c := e.srvCert.Load(); c != nil && !c.due(ca, now) {
		return c.cert, nil
	}
	e.srvMu.Lock()
	defer e.srvMu.Unlock()
	old := e.srvCert.Load()
	if old != nil && !old.due(ca, now) {
		return old.cert, nil
	}
	c, err := e.issueServerCert(ca, now)
	if err != nil {
		if old != nil && now.Before(old.cert.Leaf.NotAfter) {
			e.log.Error("server certificate renewal failed; serving the current one", "error", err, "notAfter", old.cert.Leaf.NotAfter)
			return old.cert, nil
		}
		return nil, err
	}
	e.srvCert.Store(c)
	if old != nil {
		e.log.Info("server certificate renewed", "notAfter", c.cert.Leaf.NotAfter, "previousNotAfter", old.cert.Leaf.NotAfter,
			"newEdgeCA", old.ca != ca)
	}
	return c.cert, nil
}

func (e *Edge) issueServerCert(ca *certs.CA, now time.Time) (*issuedCert, error) {
	if ca == nil {
		return nil, errors.New("server certificate: no edge CA")
	}
	hosts, err := e.serverHosts(ca)
	if err != nil {
		return nil, err
	}
	cert, _, _, err := ca.IssueServerAt(now, hosts, 0)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	return &issuedCert{ca: ca, cert: &cert}, nil
}

// serverTLS is the TLS configuration of the edge's listeners: the server
// certificate comes from serverCert at each handshake, so a renewal
// needs no restart. It fails now if no certificate can be issued.
func (e *Edge) serverTLS() (*tls.Config, error) {
	if _, err := e.serverCert(); err != nil {
		return nil, err
	}
	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return e.serverCert() },
		MinVersion:     tls.VersionTLS12,
		// X.509 children are verified by the backend (thumbprint or hub
		// root), so certificates are requested, not verified by TLS.
		ClientAuth: tls.RequestClientCert,
	}, nil
}

// caExpiresSoon reports whether ca is within CAExpiryWarning of its
// expiry at now, or past it.
func caExpiresSoon(ca *certs.CA, now time.Time) bool {
	return ca != nil && !now.Before(ca.Cert.NotAfter.Add(-CAExpiryWarning))
}

// checkCertificates renews the server certificate when due (also with no
// handshake to do it) and warns, at most every caWarnEvery, of an edge CA
// about to expire.
func (e *Edge) checkCertificates() {
	if _, err := e.serverCert(); err != nil {
		e.log.Error("server certificate", "error", err)
	}
	ca, now := e.ca.Load(), e.now()
	if !caExpiresSoon(ca, now) {
		return
	}
	e.srvMu.Lock()
	last := e.caWarned
	warn := last.IsZero() || now.Sub(last) >= caWarnEvery || now.Before(last)
	if warn {
		e.caWarned = now
	}
	e.srvMu.Unlock()
	if !warn {
		return
	}
	hint := "the edge asks its hub for a new one whenever online"
	if e.cfg.EdgeCACert != "" {
		hint = "replace the edge CA files " + e.cfg.EdgeCACert + " and " + e.cfg.EdgeCAKey + " and restart the edge"
	}
	e.log.Warn("edge CA expires soon: children will refuse the edge's certificates after it", "notAfter", ca.Cert.NotAfter,
		"in", ca.Cert.NotAfter.Sub(now).Round(time.Minute).String(), "action", hint)
}

// renewEdgeCA asks the hub, while online, for a new edge CA when the
// current one, signed by the hub, is within CAExpiryWarning of its
// expiry; the server certificate follows at once. An operator's CA is
// left to the operator.
func (e *Edge) renewEdgeCA(ctx context.Context) {
	old := e.ca.Load()
	if e.cfg.EdgeCACert != "" || !caExpiresSoon(old, e.now()) || !e.up.State().Connected {
		return
	}
	// Bounded, so that a link that died unnoticed holds the reconnect
	// work behind it no longer than this.
	ctx, cancel := context.WithTimeout(ctx, caRenewTimeout)
	defer cancel()
	ca, root, err := e.requestEdgeCA(ctx)
	if err != nil {
		e.log.Warn("edge CA renewal failed; tried again at the next reconnect or identity refresh", "error", err, "notAfter", old.Cert.NotAfter)
		return
	}
	if !ca.Cert.NotAfter.After(old.Cert.NotAfter) {
		e.log.Warn("edge CA renewal: the hub's new edge CA expires no later than the current one; kept the current one",
			"notAfter", old.Cert.NotAfter, "newNotAfter", ca.Cert.NotAfter)
		return
	}
	if err := e.storeCA(ca, root); err != nil {
		e.log.Error("edge CA renewal", "error", err)
		return
	}
	e.ca.Store(ca)
	e.log.Info("edge CA renewed by the hub", "notAfter", ca.Cert.NotAfter, "previousNotAfter", old.Cert.NotAfter)
	if _, err := e.serverCert(); err != nil {
		e.log.Error("server certificate", "error", err)
	}
}

// CertStatus is the expiry of the edge's TLS identity, in /status.
type CertStatus struct {
	EdgeCANotAfter *time.Time `json:"edgeCANotAfter,omitempty"`
	// EdgeCAExpiresSoon is set within CAExpiryWarning of the edge CA's
	// expiry, and past it.
	EdgeCAExpiresSoon bool `json:"edgeCAExpiresSoon"`
	// EdgeCASource is "hub" (signed by the hub, renewed by it) or
	// "operator" (--edge-ca-cert).
	EdgeCASource       string     `json:"edgeCASource,omitempty"`
	ServerCertNotAfter *time.Time `json:"serverCertNotAfter,omitempty"`
	// ServerCertRenewAt is when the edge issues its next server
	// certificate; absent when the edge CA's expiry caps it (the next
	// comes with a new edge CA).
	ServerCertRenewAt *time.Time `json:"serverCertRenewAt,omitempty"`
}

func (e *Edge) certStatus() CertStatus {
	var s CertStatus
	if ca := e.ca.Load(); ca != nil {
		t := ca.Cert.NotAfter
		s.EdgeCANotAfter = &t
		s.EdgeCAExpiresSoon = caExpiresSoon(ca, e.now())
		s.EdgeCASource = "hub"
		if e.cfg.EdgeCACert != "" {
			s.EdgeCASource = "operator"
		}
	}
	if c := e.srvCert.Load(); c != nil {
		t := c.cert.Leaf.NotAfter
		s.ServerCertNotAfter = &t
		if t.Before(c.ca.Cert.NotAfter) {
			r := c.renewAt()
			s.ServerCertRenewAt = &r
		}
	}
	return s
}
