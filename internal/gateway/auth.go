package gateway

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edgeproto"
	"outpost/internal/identity"
	"outpost/internal/sas"
)

// VerifySAS checks a device or module SAS token against the identity's
// keys (primary and secondary; constant time), its audience against
// host/devices/{deviceID}[/modules/{moduleID}], and its expiry with the
// given skew. Hub and edge backends call it from Authenticate. Failures
// are *AuthError.
func VerifySAS(tok *sas.Token, keys []string, host, deviceID, moduleID string, now time.Time, skew time.Duration) error {
	if tok == nil {
		return AuthFailed(ReasonNoCredentials, errors.New("no sas token"))
	}
	if !sas.MatchesDevice(tok, host, deviceID, moduleID) {
		return AuthFailed(ReasonWrongAudience, fmt.Errorf("token resource %q", tok.Resource))
	}
	if err := sas.Validate(tok, now, skew); err != nil {
		return AuthFailed(ReasonExpired, err)
	}
	if !tok.Verify(keys...) {
		return AuthFailed(ReasonBadSignature, sas.ErrBadSignature)
	}
	return nil
}

// VerifyX509 checks a client certificate chain (leaf first) for clientID
// (deviceId or deviceId/moduleId). The leaf is accepted when its SHA-1 or
// SHA-256 thumbprint (hex, any case, as IoT Hub registers them) is one of
// thumbprints, or, when caPool is not nil, when the chain verifies to
// caPool for client authentication, is no CA itself, and its CN is
// clientID. In both cases the leaf must be within its validity period
// at now.
//
// caPool must hold only the CAs that may sign devices (the hub's root).
// Verifying for client authentication is what refuses a leaf chained
// through an edge CA under that root: an edge CA is for server
// authentication only (certs.SignEdgeCA), and Go checks the usage along
// the whole chain.
func VerifyX509(chain []*x509.Certificate, thumbprints []string, caPool *x509.CertPool, clientID string, now time.Time) error {
	if len(chain) == 0 {
		return AuthFailed(ReasonNoCredentials, errors.New("no client certificate"))
	}
	leaf := chain[0]
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return AuthFailed(ReasonBadCert, fmt.Errorf("certificate not valid at %s", now.UTC().Format(time.RFC3339)))
	}
	if len(thumbprints) > 0 {
		h1, h256 := certs.Thumbprint(leaf), certs.ThumbprintSHA256(leaf)
		for _, t := range thumbprints {
			t = strings.ReplaceAll(strings.TrimSpace(t), ":", "")
			if t != "" && (strings.EqualFold(t, h1) || strings.EqualFold(t, h256)) {
				return nil
			}
		}
		if caPool == nil {
			return AuthFailed(ReasonBadCert, errors.New("certificate thumbprint not registered"))
		}
	}
	if caPool == nil {
		return AuthFailed(ReasonBadCert, errors.New("no thumbprint or CA to check the certificate against"))
	}
	// A CA certificate carries no extended key usage, which Verify takes
	// for any usage: without this, a CA whose CN is a device id would
	// pass for that device.
	if leaf.IsCA {
		return AuthFailed(ReasonBadCert, fmt.Errorf("certificate %q is a CA certificate, not a device's", leaf.Subject.CommonName))
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         caPool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return AuthFailed(ReasonBadCert, err)
	}
	if leaf.Subject.CommonName != clientID {
		return AuthFailed(ReasonBadCert, fmt.Errorf("certificate CN %q is not %q", leaf.Subject.CommonName, clientID))
	}
	return nil
}

// parseClientID splits deviceId or deviceId/moduleId and checks the ids
// against IoT Hub's rules.
func parseClientID(clientID string) (deviceID, moduleID string, err error) {
	d, m, hasModule := strings.Cut(clientID, "/")
	if err := identity.ValidateDeviceID(d); err != nil {
		return "", "", fmt.Errorf("client id: %w", err)
	}
	if hasModule {
		if err := identity.ValidateModuleID(m); err != nil {
			return "", "", fmt.Errorf("client id: %w", err)
		}
	}
	return d, m, nil
}

// checkUsername checks an IoT Hub MQTT username,
// "{HostName}/{clientId}/?api-version=…", against the hub's host name
// (with or without :port on either side) and the CONNECT client id.
func checkUsername(username, hubHost, clientID string) error {
	host, rest, ok := strings.Cut(username, "/")
	if !ok {
		return fmt.Errorf("username %q: want {HostName}/{clientId}/?api-version=…", truncate(username))
	}
	if !sameHost(host, hubHost) {
		return fmt.Errorf("username host %q is not this hub (%q)", truncate(host), hubHost)
	}
	if rest != clientID && !strings.HasPrefix(rest, clientID+"/") {
		return fmt.Errorf("username %q does not name client id %q", truncate(username), clientID)
	}
	return nil
}

// hasCap reports whether an MQTT username's query names capability
// cap in its edgeproto.CapParam.
func hasCap(username, cap string) bool {
	_, q, ok := strings.Cut(username, "/?")
	if !ok {
		return false
	}
	v, err := url.ParseQuery(q)
	if err != nil {
		return false
	}
	for _, caps := range v[edgeproto.CapParam] {
		if slices.Contains(strings.Split(caps, ","), cap) {
			return true
		}
	}
	return false
}

func sameHost(a, b string) bool {
	a, b = stripPort(a), stripPort(b)
	return a != "" && strings.EqualFold(a, b)
}

func stripPort(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// authenticate is the part of authentication shared by MQTT and HTTPS:
// screen the token (audience, expiry), ask the backend, count failures.
func (s *Server) authenticate(ctx context.Context, c Credentials) (Identity, error) {
	id, err := s.screenAndAuthenticate(ctx, c)
	if err != nil {
		var ae *AuthError
		if !errors.As(err, &ae) {
			err = &AuthError{Reason: ReasonBackend, Err: err}
			errors.As(err, &ae)
		}
		s.countAuthFailure(ae.Reason)
		return Identity{}, err
	}
	return id, nil
}

func (s *Server) screenAndAuthenticate(ctx context.Context, c Credentials) (Identity, error) {
	if c.Token == nil && len(c.PeerCerts) == 0 {
		return Identity{}, AuthFailed(ReasonNoCredentials, errors.New("neither sas token nor client certificate"))
	}
	if c.Token != nil {
		if !sas.MatchesDevice(c.Token, s.cfg.HubHostName, c.DeviceID, c.ModuleID) {
			return Identity{}, AuthFailed(ReasonWrongAudience, fmt.Errorf("token resource %q is not %s", c.Token.Resource, c.ClientID))
		}
		if err := sas.Validate(c.Token, s.cfg.Now(), s.skew); err != nil {
			return Identity{}, AuthFailed(ReasonExpired, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.BackendTimeout)
	defer cancel()
	id, err := s.cfg.Backend.Authenticate(ctx, c)
	if err != nil {
		return Identity{}, err
	}
	// The backend must not authenticate anyone but the identity asked
	// about; checking here keeps a backend bug from becoming a hole.
	if id.DeviceID != c.DeviceID || id.ModuleID != c.ModuleID {
		return Identity{}, fmt.Errorf("backend returned identity %s for %s", id.ClientID(), c.ClientID)
	}
	if c.Token != nil && id.TokenExpiry.IsZero() {
		id.TokenExpiry = c.Token.Expiry
	}
	return id, nil
}

func (s *Server) countAuthFailure(r AuthReason) {
	s.statsMu.Lock()
	s.authFailures[r]++
	s.statsMu.Unlock()
}

// AuthFailures returns how many authentications failed, by reason, since
// the server started.
func (s *Server) AuthFailures() map[AuthReason]uint64 {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	out := make(map[AuthReason]uint64, len(s.authFailures))
	for k, v := range s.authFailures {
		out[k] = v
	}
	return out
}
