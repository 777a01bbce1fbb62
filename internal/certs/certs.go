// Package certs makes and loads the certificates Outpost runs on: the
// hub's root CA, an edge's intermediate CA (signed by the root from a
// CSR, or brought by the operator), server certificates for the device
// endpoints, and client certificates for X.509 devices.
//
// An edge CA signed here (SignEdgeCA) can only issue TLS server
// certificates for the host names it was granted: whoever holds its key
// can neither mint device certificates nor pose as the hub or as another
// edge.
//
// Keys are ECDSA P-256. A CA remembers the chain above it (not the root),
// so every leaf it issues is served with the full path a client needs to
// reach the root it trusts; that is what lets a child device trust only
// the hub's root and still verify its edge gateway.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"time"
)

// Default validities, used when a caller passes zero.
const (
	DefaultRootValidity         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateValidity = 5 * 365 * 24 * time.Hour
	DefaultLeafValidity         = 365 * 24 * time.Hour
)

// backdate allows for clocks behind ours: a certificate is valid from a
// little before it was made.
const backdate = 5 * time.Minute

// CA is a certificate authority that can issue certificates.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte // Cert alone, PEM
	// Chain holds, in DER, the intermediates between Cert and the root,
	// nearest first; empty for a root or a CA signed directly by it.
	Chain [][]byte
}

// NewKey returns a new ECDSA P-256 private key.
func NewKey() (crypto.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never zero
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// NewRootCA makes a self-signed root CA.
func NewRootCA(commonName string, validity time.Duration) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(commonName, orDefault(validity, DefaultRootValidity))
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create root CA: %w", err)
	}
	return newCA(der, key, nil)
}

// template is what every certificate here has: a fresh serial, the
// subject's CN, validity from a little before now, basic constraints.
func template(commonName string, validity time.Duration) (*x509.Certificate, error) {
	return templateAt(time.Now(), commonName, validity)
}

func templateAt(now time.Time, commonName string, validity time.Duration) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		BasicConstraintsValid: true,
	}, nil
}

func caTemplate(commonName string, validity time.Duration) (*x509.Certificate, error) {
	tmpl, err := template(commonName, validity)
	if err != nil {
		return nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	tmpl.IsCA = true
	return tmpl, nil
}

func newCA(der []byte, key crypto.Signer, chain [][]byte) (*CA, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: EncodeCertPEM(der), Chain: chain}, nil
}

// isRoot reports whether c is self-signed, i.e. a trust anchor that
// chains should not carry.
func isRoot(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// childChain is the Chain of a CA that ca signs: ca itself and what is
// above it, without the root.
func (ca *CA) childChain() [][]byte {
	if isRoot(ca.Cert) {
		return nil
	}
	return append([][]byte{ca.Cert.Raw}, ca.Chain...)
}

// ChainPEM returns the CA's certificate followed by its chain, the form
// LoadCA reads and WriteFiles writes.
func (ca *CA) ChainPEM() []byte {
	out := append([]byte(nil), ca.CertPEM...)
	for _, der := range ca.Chain {
		out = append(out, EncodeCertPEM(der)...)
	}
	return out
}

// NewIntermediate makes a CA signed by ca.
func (ca *CA) NewIntermediate(commonName string, validity time.Duration) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(commonName, orDefault(validity, DefaultIntermediateValidity))
	if err != nil {
		return nil, err
	}
	der, err := ca.sign(tmpl, key.Public())
	if err != nil {
		return nil, fmt.Errorf("create intermediate CA: %w", err)
	}
	return newCA(der, key, ca.childChain())
}

// sign issues tmpl, never past the CA's own expiry: a longer-lived child
// would fail verification at the end anyway, and later than expected.
func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
}

// leaf issues an end-entity certificate and returns it as a tls.Certificate
// with the chain, plus the PEM of leaf and chain and of the key.
func (ca *CA) leaf(tmpl *x509.Certificate) (tls.Certificate, []byte, []byte, error) {
	key, err := NewKey()
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	der, err := ca.sign(tmpl, key.Public())
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("issue certificate: %w", err)
	}
	chain := append([][]byte{der, ca.Cert.Raw}, ca.Chain...)
	return assemble(chain, key)
}

// assemble builds a tls.Certificate and PEM forms from a DER chain
// (leaf first) and the leaf's key.
func assemble(chain [][]byte, key crypto.Signer) (tls.Certificate, []byte, []byte, error) {
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("parse certificate: %w", err)
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	var certPEM []byte
	for _, der := range chain {
		certPEM = append(certPEM, EncodeCertPEM(der)...)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, certPEM, keyPEM, nil
}

func leafTemplate(commonName string, validity time.Duration, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	return leafTemplateAt(time.Now(), commonName, validity, usage)
}

func leafTemplateAt(now time.Time, commonName string, validity time.Duration, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	tmpl, err := templateAt(now, commonName, orDefault(validity, DefaultLeafValidity))
	if err != nil {
		return nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	return tmpl, nil
}

// IssueServer issues a TLS server certificate for hosts (DNS names or IP
// addresses; a :port is ignored). The first host is the subject's CN.
// The tls.Certificate carries leaf, CA and the CA's chain; certPEM holds
// the same chain, leaf first.
func (ca *CA) IssueServer(hosts []string, validity time.Duration) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	return ca.IssueServerAt(time.Now(), hosts, validity)
}

// IssueServerAt is IssueServer by the clock reading now: the certificate
// is valid from a little before now, for validity (never past the CA's
// own expiry). An edge issues by its own clock, the one that decides
// when to renew.
func (ca *CA) IssueServerAt(now time.Time, hosts []string, validity time.Duration) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	hosts = normalizeHosts(hosts)
	if len(hosts) == 0 {
		return tls.Certificate{}, nil, nil, errors.New("issue server certificate: no host names")
	}
	tmpl, err := leafTemplateAt(now, hosts[0], validity, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.leaf(tmpl)
}

// normalizeHosts drops ports, brackets, empties and duplicates.
func normalizeHosts(hosts []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, h := range hosts {
		if hh, _, err := net.SplitHostPort(h); err == nil {
			h = hh
		}
		h = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(h), "["), "]")
		if h == "" || seen[strings.ToLower(h)] {
			continue
		}
		seen[strings.ToLower(h)] = true
		out = append(out, h)
	}
	return out
}

// IssueClient issues a TLS client certificate for an X.509 device or
// module authenticated by CA: the CN is the device id.
func (ca *CA) IssueClient(commonName string, validity time.Duration) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return tls.Certificate{}, nil, nil, errors.New("issue client certificate: empty common name")
	}
	tmpl, err := leafTemplate(commonName, validity, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	return ca.leaf(tmpl)
}

// SelfSigned makes a self-signed client certificate for a device that
// authenticates by thumbprint, valid for DefaultLeafValidity.
func SelfSigned(commonName string) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	key, err := NewKey()
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	tmpl, err := leafTemplate(commonName, 0, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("create self-signed certificate: %w", err)
	}
	return assemble([][]byte{der}, key)
}

// NewCSR makes a key and a certificate signing request for commonName
// and hosts (DNS names or IP addresses, as SANs), which an edge sends to
// its parent to obtain its CA certificate.
func NewCSR(commonName string, hosts ...string) (csrPEM []byte, key crypto.Signer, err error) {
	key, err = NewKey()
	if err != nil {
		return nil, nil, err
	}
	req := &x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}
	for _, h := range normalizeHosts(hosts) {
		if ip := net.ParseIP(h); ip != nil {
			req.IPAddresses = append(req.IPAddresses, ip)
		} else {
			req.DNSNames = append(req.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, req, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), key, nil
}

// ParseCSR decodes a PEM CSR and checks its signature. The signer must
// decide whether the subject is acceptable (an edge may only ask for its
// own device id) and which of its names to grant before signing it.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("parse CSR: no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	return csr, nil
}

// CSRHosts returns the host names a CSR asks for: its DNS names, then
// its IP addresses.
func CSRHosts(csr *x509.CertificateRequest) []string {
	hosts := append([]string(nil), csr.DNSNames...)
	for _, ip := range csr.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	return hosts
}

// SignCSR issues a TLS server certificate for the CSR, with its DNS and
// IP names. Only the CSR's common name and names are taken; key usages
// are ours. certPEM holds the certificate followed by the intermediates
// above it (not the root).
func (ca *CA) SignCSR(csrPEM []byte, validity time.Duration) (certPEM []byte, err error) {
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	tmpl, err := leafTemplate(csr.Subject.CommonName, validity, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	tmpl.DNSNames, tmpl.IPAddresses = csr.DNSNames, csr.IPAddresses
	return ca.signCSR(tmpl, csr)
}

// SignEdgeCA issues an edge's CA certificate for the CSR (its common
// name, its key), constrained to what an edge does with it: sign TLS
// server certificates for exactly hosts, and nothing else.
//
//   - Path length 0: it cannot sign another CA.
//   - Extended key usage server authentication only: verifiers refuse a
//     client certificate chained through it, so an edge cannot mint
//     device certificates that chain to the root.
//   - Name constraints (critical) permitting each of hosts and excluding
//     its subdomains, so each DNS name is granted exactly; a type of name
//     it has none of (DNS or IP) is excluded entirely.
//
// The names in the CSR are ignored: the caller decides which hosts the
// edge may have (see internal/hub/dataplane). certPEM holds the new
// certificate followed by the intermediates above it (not the root),
// ready for CAFromPEM.
func (ca *CA) SignEdgeCA(csrPEM []byte, hosts []string, validity time.Duration) (certPEM []byte, err error) {
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(csr.Subject.CommonName, orDefault(validity, DefaultIntermediateValidity))
	if err != nil {
		return nil, err
	}
	tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	if err := constrainNames(tmpl, hosts); err != nil {
		return nil, fmt.Errorf("sign edge CA: %w", err)
	}
	return ca.signCSR(tmpl, csr)
}

func (ca *CA) signCSR(tmpl *x509.Certificate, csr *x509.CertificateRequest) ([]byte, error) {
	der, err := ca.sign(tmpl, csr.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("sign CSR: %w", err)
	}
	certPEM := EncodeCertPEM(der)
	for _, c := range ca.childChain() {
		certPEM = append(certPEM, EncodeCertPEM(c)...)
	}
	return certPEM, nil
}

// constrainNames sets name constraints that permit exactly hosts.
func constrainNames(tmpl *x509.Certificate, hosts []string) error {
	if len(hosts) == 0 {
		return errors.New("no host names to constrain the CA to")
	}
	for _, h := range hosts {
		c, err := CanonicalHost(h)
		if err != nil {
			return err
		}
		if ip := net.ParseIP(c); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, &net.IPNet{IP: v4, Mask: net.CIDRMask(32, 32)})
			} else {
				tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)})
			}
			continue
		}
		// A DNS constraint also permits subdomains; a leading dot
		// matches only those, so excluding it leaves the name alone.
		tmpl.PermittedDNSDomains = append(tmpl.PermittedDNSDomains, c)
		tmpl.ExcludedDNSDomains = append(tmpl.ExcludedDNSDomains, "."+c)
	}
	// Without a permitted name of a type, names of that type would be
	// unconstrained: exclude them all (the empty DNS constraint matches
	// every name).
	if len(tmpl.PermittedDNSDomains) == 0 {
		tmpl.ExcludedDNSDomains = []string{""}
	}
	if len(tmpl.PermittedIPRanges) == 0 {
		tmpl.ExcludedIPRanges = []*net.IPNet{
			{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		}
	}
	tmpl.PermittedDNSDomainsCritical = true
	return nil
}

// IsEdgeCA reports whether c carries the constraints SignEdgeCA gives:
// a CA of path length 0 for server authentication only, with critical
// name constraints. An edge CA signed before they existed lacks them.
func IsEdgeCA(c *x509.Certificate) bool {
	return c.IsCA && c.MaxPathLen == 0 && c.MaxPathLenZero &&
		len(c.ExtKeyUsage) == 1 && c.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth && len(c.UnknownExtKeyUsage) == 0 &&
		c.PermittedDNSDomainsCritical
}

// Permits reports whether a server certificate for host issued by ca
// passes the name constraints of ca and of the CAs above it, as a
// verifier checks them: an edge issues its server certificate only for
// the names its CA was granted.
func (ca *CA) Permits(host string) bool {
	h, err := CanonicalHost(host)
	if err != nil {
		return false
	}
	if !permits(ca.Cert, h) {
		return false
	}
	for _, der := range ca.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil || !permits(c, h) {
			return false
		}
	}
	return true
}

// permits checks canonical host h against c's name constraints.
func permits(c *x509.Certificate, h string) bool {
	if ip := net.ParseIP(h); ip != nil {
		inAny := func(nets []*net.IPNet) bool {
			return slices.ContainsFunc(nets, func(n *net.IPNet) bool { return n.Contains(ip) })
		}
		return (len(c.PermittedIPRanges) == 0 || inAny(c.PermittedIPRanges)) && !inAny(c.ExcludedIPRanges)
	}
	inAny := func(domains []string) bool {
		return slices.ContainsFunc(domains, func(d string) bool { return matchDomain(h, d) })
	}
	return (len(c.PermittedDNSDomains) == 0 || inAny(c.PermittedDNSDomains)) && !inAny(c.ExcludedDNSDomains)
}

// matchDomain is RFC 5280's dNSName constraint match: the domain and its
// subdomains, or with a leading dot its subdomains only; "" matches all.
func matchDomain(h, constraint string) bool {
	d := strings.ToLower(constraint)
	switch {
	case d == "":
		return true
	case d[0] == '.':
		return len(h) > len(d) && strings.HasSuffix(h, d)
	}
	return h == d || strings.HasSuffix(h, "."+d)
}

// CanonicalHost checks a host name for a certificate: an IP address
// (returned in its canonical form) or a DNS name (returned lowercased,
// without a trailing dot) of letters, digits, hyphens and underscores.
// Wildcards are refused: an edge serves one name, not a domain.
func CanonicalHost(h string) (string, error) {
	hosts := normalizeHosts([]string{h})
	if len(hosts) != 1 {
		return "", fmt.Errorf("empty host name %q", h)
	}
	if ip := net.ParseIP(hosts[0]); ip != nil {
		if ip.IsUnspecified() {
			return "", fmt.Errorf("host name %q: the unspecified address names no host", h)
		}
		return ip.String(), nil
	}
	d := strings.TrimSuffix(strings.ToLower(hosts[0]), ".")
	if len(d) > 253 {
		return "", fmt.Errorf("host name %q: longer than 253 characters", clip(h))
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' ||
			strings.ContainsFunc(label, func(r rune) bool {
				return (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' && r != '_'
			}) {
			return "", fmt.Errorf("host name %q: not a DNS name or IP address", clip(h))
		}
	}
	return d, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// IsLoopback reports whether host (canonical, see CanonicalHost) names
// the local machine: localhost, a name under .localhost (RFC 6761), or a
// loopback address. Such a name reaches whatever listens on the client's
// own machine, so names cannot tell the processes there apart.
func IsLoopback(host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// EdgeHosts are the host names an edge with host name hostname serves,
// and asks its CA to be constrained to: hostname itself, and when it is
// a loopback name, localhost and 127.0.0.1 too, which one-machine setups
// use interchangeably.
func EdgeHosts(hostname string) []string {
	hosts := []string{hostname}
	if c, err := CanonicalHost(hostname); err == nil && IsLoopback(c) {
		hosts = append(hosts, "localhost", "127.0.0.1")
	}
	return normalizeHosts(hosts)
}

// CAFromPEM builds a CA from its certificate PEM (the CA first, then any
// intermediates; a root at the end is dropped) and its key, checking
// that the certificate is a CA and belongs to the key.
func CAFromPEM(chainPEM []byte, key crypto.Signer) (*CA, error) {
	certs, err := ParseCertsPEM(chainPEM)
	if err != nil {
		return nil, err
	}
	c := certs[0]
	if !c.IsCA || !c.BasicConstraintsValid {
		return nil, fmt.Errorf("certificate %q is not a CA", c.Subject.CommonName)
	}
	if !samePublicKey(c.PublicKey, key.Public()) {
		return nil, fmt.Errorf("certificate %q does not match the key", c.Subject.CommonName)
	}
	var chain [][]byte
	for _, ic := range certs[1:] {
		if !isRoot(ic) {
			chain = append(chain, ic.Raw)
		}
	}
	return newCA(c.Raw, key, chain)
}

func samePublicKey(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// Thumbprint is the SHA-1 thumbprint of a certificate, uppercase hex, as
// Azure shows and stores it.
func Thumbprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// ThumbprintSHA256 is the SHA-256 thumbprint, uppercase hex.
func ThumbprintSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
