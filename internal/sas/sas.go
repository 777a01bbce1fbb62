// Package sas creates and checks Azure IoT Hub shared access signatures
// (SAS tokens) and parses device, module and service connection strings.
//
// Tokens are verified over the resource (sr) exactly as the client sent it:
// SDKs differ in how they URL-encode the resource, and any re-encoding on
// our side would break the HMAC for some of them. The resource is decoded
// only to decide which identity the token is for.
package sas

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors, so callers can map them to protocol answers (a CONNACK
// code, an HTTP 401) without matching on text.
var (
	ErrExpired      = errors.New("sas token expired")
	ErrBadSignature = errors.New("sas token signature does not match")
)

const tokenPrefix = "SharedAccessSignature"

// GenerateKey returns a new random 256-bit key, standard base64, the form
// Azure uses for primary and secondary keys.
func GenerateKey() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand: " + err.Error()) // the kernel RNG does not fail
	}
	return base64.StdEncoding.EncodeToString(b[:])
}

// DeviceResource returns the unencoded resource a device or module token is
// scoped to: host/devices/{d}[/modules/{m}].
func DeviceResource(host, deviceID, moduleID string) string {
	r := host + "/devices/" + deviceID
	if moduleID != "" {
		r += "/modules/" + moduleID
	}
	return r
}

// Sign returns a token for resource (unencoded; see DeviceResource, or the
// bare host name for a service token) signed with the base64 key. keyName
// is the policy name (skn) and is empty for device and module keys.
func Sign(resource, keyB64, keyName string, expiry time.Time) (string, error) {
	if resource == "" {
		return "", errors.New("sign sas token: empty resource")
	}
	key, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil || len(key) == 0 {
		return "", errors.New("sign sas token: key is not base64")
	}
	sr := Escape(resource)
	se := strconv.FormatInt(expiry.Unix(), 10)
	var b strings.Builder
	b.WriteString(tokenPrefix + " sr=")
	b.WriteString(sr)
	b.WriteString("&sig=")
	b.WriteString(Escape(base64.StdEncoding.EncodeToString(mac(key, sr, se))))
	b.WriteString("&se=")
	b.WriteString(se)
	if keyName != "" {
		b.WriteString("&skn=")
		b.WriteString(Escape(keyName))
	}
	return b.String(), nil
}

func mac(key []byte, sr, se string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(sr))
	h.Write([]byte{'\n'})
	h.Write([]byte(se))
	return h.Sum(nil)
}

// Escape is the strict URL encoding the Azure SDKs apply to sr, sig and
// skn: JavaScript's encodeURIComponent that also escapes !'()*, so only
// RFC 3986 unreserved characters stay as they are.
func Escape(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(b)
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}

// Token is a parsed SAS token. The raw fields keep the token's text as
// sent, because the signature covers that text, not its decoding.
type Token struct {
	RawResource string    // sr exactly as sent; the signed text
	Resource    string    // sr URL-decoded; what the token is for
	Signature   string    // sig URL-decoded: base64 of the HMAC
	KeyName     string    // skn URL-decoded; empty for device keys
	Expiry      time.Time // se

	rawSig, rawExpiry, rawKeyName string
	mac                           []byte // Signature decoded
}

// ParseToken parses "SharedAccessSignature sr=…&sig=…&se=…[&skn=…]",
// fields in any order. Unknown fields are ignored, as Azure does.
func ParseToken(s string) (*Token, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), tokenPrefix)
	if !ok {
		return nil, errors.New("sas token: does not start with " + tokenPrefix)
	}
	trimmed := strings.TrimLeft(rest, " \t")
	if len(trimmed) == len(rest) {
		return nil, errors.New("sas token: no space after " + tokenPrefix)
	}
	t := &Token{}
	var seen [4]bool // sr, sig, se, skn
	for _, field := range strings.Split(trimmed, "&") {
		k, v, _ := strings.Cut(field, "=")
		var i int
		switch k {
		case "sr":
			i = 0
			t.RawResource = v
		case "sig":
			i = 1
			t.rawSig = v
		case "se":
			i = 2
			t.rawExpiry = v
		case "skn":
			i = 3
			t.rawKeyName = v
		default:
			continue
		}
		if seen[i] {
			return nil, fmt.Errorf("sas token: %s given twice", k)
		}
		seen[i] = true
	}
	for i, name := range []string{"sr", "sig", "se"} {
		if !seen[i] {
			return nil, fmt.Errorf("sas token: missing %s", name)
		}
	}
	var err error
	if t.RawResource == "" {
		return nil, errors.New("sas token: empty sr")
	}
	if t.Resource, err = url.PathUnescape(t.RawResource); err != nil {
		return nil, fmt.Errorf("sas token: bad sr: %w", err)
	}
	// PathUnescape, not QueryUnescape: an SDK that leaves sig unencoded
	// sends '+' from base64, which must not turn into a space.
	if t.Signature, err = url.PathUnescape(t.rawSig); err != nil {
		return nil, fmt.Errorf("sas token: bad sig: %w", err)
	}
	if t.mac, err = base64.StdEncoding.DecodeString(t.Signature); err != nil || len(t.mac) == 0 {
		return nil, errors.New("sas token: bad sig: not base64")
	}
	se, err := strconv.ParseInt(t.rawExpiry, 10, 64)
	if err != nil || se < 0 {
		return nil, fmt.Errorf("sas token: bad se %q: want epoch seconds", truncate(t.rawExpiry))
	}
	t.Expiry = time.Unix(se, 0)
	if seen[3] {
		if t.KeyName, err = url.PathUnescape(t.rawKeyName); err != nil {
			return nil, fmt.Errorf("sas token: bad skn: %w", err)
		}
	}
	return t, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// String renders the token as it was parsed, raw fields unchanged, so
// String of a parsed token verifies with the same keys.
func (t *Token) String() string {
	s := tokenPrefix + " sr=" + t.RawResource + "&sig=" + t.rawSig + "&se=" + t.rawExpiry
	if t.rawKeyName != "" || t.KeyName != "" {
		s += "&skn=" + t.rawKeyName
	}
	return s
}

// Verify reports whether the token was signed with any of the base64 keys
// (Azure accepts the primary or the secondary key). Keys that do not
// decode are skipped. It does not check expiry; see Validate.
func (t *Token) Verify(keysB64 ...string) bool {
	ok := 0
	for _, k := range keysB64 {
		key, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(key) == 0 {
			continue
		}
		// Every key is tried so the time taken does not say which matched.
		ok |= subtle.ConstantTimeCompare(mac(key, t.RawResource, t.rawExpiry), t.mac)
	}
	return ok == 1
}

// Validate returns ErrExpired (wrapped, with the expiry) when the token
// expired before now-skew; skew allows for clocks that disagree.
func Validate(tok *Token, now time.Time, skew time.Duration) error {
	if tok.Expiry.Before(now.Add(-skew)) {
		return fmt.Errorf("%w at %s", ErrExpired, tok.Expiry.UTC().Format(time.RFC3339))
	}
	return nil
}

// MatchesDevice reports whether the token's decoded resource is exactly
// the resource of the device or module. As in Azure, a device token does
// not authorise the device's modules, and a module token only its module.
// Host names compare case-insensitively and ignoring any :port on either
// side, so a hub on localhost:18443 accepts tokens for "localhost" and
// the reverse; ids compare exactly.
func MatchesDevice(tok *Token, host, deviceID, moduleID string) bool {
	if deviceID == "" {
		return false
	}
	h, path, ok := strings.Cut(tok.Resource, "/")
	if !ok || !sameHost(h, host) {
		return false
	}
	want := "devices/" + deviceID
	if moduleID != "" {
		want += "/modules/" + moduleID
	}
	return path == want
}

// MatchesHost reports whether the token is scoped to the whole hub, as
// service tokens are (sr is the bare host name; a trailing / is allowed).
func MatchesHost(tok *Token, host string) bool {
	h := strings.TrimSuffix(tok.Resource, "/")
	if strings.Contains(h, "/") {
		return false
	}
	return sameHost(h, host)
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
