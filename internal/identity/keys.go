package identity

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"strconv"
	"strings"
	"time"

	"outpost/internal/status"
)

// Key sizes. Generated keys have KeySize bytes, like Azure's; keys given
// by a client must decode to MinKeySize..MaxKeySize bytes, Azure's range.
const (
	KeySize    = 32
	MinKeySize = 16
	MaxKeySize = 64
)

// NewKey returns a fresh SAS key: KeySize random bytes, standard base64.
func NewKey() string {
	var b [KeySize]byte
	rand.Read(b[:]) // never fails: Go's crypto/rand aborts the program rather than return an error
	return base64.StdEncoding.EncodeToString(b[:])
}

func validateKey(which, k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		return status.BadRequest(status.CodeArgumentInvalid, "%s key is not valid base64", which)
	}
	if len(b) < MinKeySize || len(b) > MaxKeySize {
		return status.BadRequest(status.CodeArgumentInvalid, "%s key decodes to %d bytes: keys must be %d to %d bytes",
			which, len(b), MinKeySize, MaxKeySize)
	}
	return nil
}

func normThumb(t string) string {
	return strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(t), ":", ""))
}

func validateThumbprint(which, t string) error {
	if len(t) != 40 && len(t) != 64 {
		return status.BadRequest(status.CodeArgumentInvalid,
			"%s thumbprint has %d characters: it must be 40 (SHA-1) or 64 (SHA-256) hex digits", which, len(t))
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return status.BadRequest(status.CodeArgumentInvalid, "%s thumbprint: %q is not a hex digit", which, rune(c))
		}
	}
	return nil
}

// prepareAuth defaults and validates a's authentication. old, when not
// nil, is the stored authentication of the identity being updated: an
// update that says nothing about authentication keeps it, and an update
// that leaves a SAS key empty keeps the stored key.
func prepareAuth(a *Authentication, old *Authentication) error {
	emptyKeys := a.SymmetricKey == (SymmetricKey{})
	emptyThumbs := a.X509Thumbprint == (X509Thumbprint{})
	if a.Type == "" {
		switch {
		case old != nil && emptyKeys && emptyThumbs:
			*a = *old
			return nil
		case emptyKeys && !emptyThumbs:
			a.Type = AuthSelfSigned
		default:
			a.Type = AuthSAS
		}
	}
	switch a.Type {
	case AuthSAS:
		if !emptyThumbs {
			return status.BadRequest(status.CodeArgumentInvalid, "x509Thumbprint is only for selfSigned authentication, not sas")
		}
		k := &a.SymmetricKey
		if old != nil && old.Type == AuthSAS {
			if k.PrimaryKey == "" {
				k.PrimaryKey = old.SymmetricKey.PrimaryKey
			}
			if k.SecondaryKey == "" {
				k.SecondaryKey = old.SymmetricKey.SecondaryKey
			}
		}
		if k.PrimaryKey == "" {
			k.PrimaryKey = NewKey()
		}
		if k.SecondaryKey == "" {
			k.SecondaryKey = NewKey()
		}
		if err := validateKey("primary", k.PrimaryKey); err != nil {
			return err
		}
		return validateKey("secondary", k.SecondaryKey)
	case AuthSelfSigned:
		if !emptyKeys {
			return status.BadRequest(status.CodeArgumentInvalid, "symmetricKey is only for sas authentication, not selfSigned")
		}
		t := a.X509Thumbprint
		if t.PrimaryThumbprint == "" {
			return status.BadRequest(status.CodeArgumentInvalid, "selfSigned authentication needs a primary thumbprint")
		}
		if err := validateThumbprint("primary", t.PrimaryThumbprint); err != nil {
			return err
		}
		if t.SecondaryThumbprint != "" {
			return validateThumbprint("secondary", t.SecondaryThumbprint)
		}
		return nil
	case AuthCA, AuthNone:
		if !emptyKeys || !emptyThumbs {
			return status.BadRequest(status.CodeArgumentInvalid, "%s authentication takes neither keys nor thumbprints", a.Type)
		}
		return nil
	}
	return status.BadRequest(status.CodeArgumentInvalid,
		"authentication type %q is not one of sas, selfSigned, certificateAuthority, none", a.Type)
}

// ticksAtUnixEpoch is .NET's DateTime.Ticks (100 ns since year 1) at
// 1970-01-01, the base of Azure's generation ids.
const ticksAtUnixEpoch = 621355968000000000

// NewGenerationID returns an id in Azure's form (an 18-digit tick count)
// that tells apart two identities created with the same id at different
// times. Its last four digits are random so two creations in the same
// clock tick, or under a test clock, still differ.
func NewGenerationID(now time.Time) string {
	ticks := uint64(now.UnixNano()/100 + ticksAtUnixEpoch)
	return strconv.FormatUint(ticks/10000*10000+randUint64()%10000, 10)
}

func randUint64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

// NewETag returns a fresh opaque etag, unquoted; the API layer adds the
// quotes HTTP wants.
func NewETag() string {
	var b [9]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// ETagFromRevision renders a store revision as an etag in the form Azure
// gives twins ("AAAAAAAAAAE="), for stores whose revision is the etag.
func ETagFromRevision(rev uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], rev)
	return base64.StdEncoding.EncodeToString(b[:])
}

// RevisionFromETag undoes ETagFromRevision, accepting a quoted or weak
// etag as it arrives in If-Match.
func RevisionFromETag(etag string) (uint64, bool) {
	b, err := base64.StdEncoding.DecodeString(unquoteETag(etag))
	if err != nil || len(b) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b), true
}

func unquoteETag(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "W/")
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	return s
}

// QuoteETag returns etag as an HTTP entity tag: "etag".
func QuoteETag(etag string) string { return `"` + unquoteETag(etag) + `"` }

// MatchETag reports whether an If-Match header value allows a write to an
// entity whose etag is etag. An empty header is no precondition and "*"
// matches any existing entity (whether the entity exists is the caller's
// question). Values may be quoted, weak (W/"…") or a comma-separated list.
func MatchETag(ifMatch, etag string) bool {
	ifMatch = strings.TrimSpace(ifMatch)
	if ifMatch == "" {
		return true
	}
	want := unquoteETag(etag)
	for _, p := range strings.Split(ifMatch, ",") {
		// Azure's SDKs send the wildcard quoted ("*"), as they quote every etag.
		p = unquoteETag(strings.TrimSpace(p))
		if p == "*" {
			return true
		}
		if p != "" && p == want {
			return true
		}
	}
	return false
}
