package api

import (
	"errors"
	"net/http"
	"time"

	"outpost/internal/sas"
	"outpost/internal/status"
)

// Policy is a shared access policy: a key name (skn) and its keys. A token
// signed with either key is accepted, as Azure does during key rotation.
type Policy struct {
	Name         string
	PrimaryKey   string
	SecondaryKey string
}

// CheckServiceToken checks the service SAS token of r: scoped to host,
// unexpired (up to skew past its expiry at now), signed with a key of one
// of policies. It is exported so that the data plane's service routes
// accept exactly the tokens this API accepts. The error is worded for the
// 401 body; it never says which part of a signature was wrong.
func CheckServiceToken(r *http.Request, host string, policies []Policy, skew time.Duration, now time.Time) error {
	raw := r.Header.Get("Authorization")
	if raw == "" {
		return errors.New("missing Authorization header")
	}
	tok, err := sas.ParseToken(raw)
	if err != nil {
		return errors.New("malformed SharedAccessSignature")
	}
	if !sas.MatchesHost(tok, host) {
		return errors.New("token audience does not match this hub")
	}
	if err := sas.Validate(tok, now, skew); err != nil {
		return errors.New("token expired")
	}
	for _, p := range policies {
		if p.Name == tok.KeyName && tok.Verify(p.PrimaryKey, p.SecondaryKey) {
			return nil
		}
	}
	return errors.New("signature does not match any shared access policy")
}

// authed wraps a service handler with SAS authentication.
func (a *Handler) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := CheckServiceToken(r, a.host, a.policies, a.skew, a.now()); err != nil {
			status.WriteHTTP(w, status.Unauthorized("%v", err), a.now())
			return
		}
		next(w, r)
	}
}
