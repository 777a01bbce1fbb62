package api

import (
	"errors"
	"net/http"

	"outpost/internal/sas"
)

// Policy is a shared access policy: a key name (skn) and its keys. A token
// signed with either key is accepted, as Azure does during key rotation.
type Policy struct {
	Name         string
	PrimaryKey   string
	SecondaryKey string
}

// authenticate checks the service SAS token of r. The error is worded for
// the 401 body; it never says which part of a signature was wrong.
func (a *Handler) authenticate(r *http.Request) error {
	raw := r.Header.Get("Authorization")
	if raw == "" {
		return errors.New("missing Authorization header")
	}
	tok, err := sas.ParseToken(raw)
	if err != nil {
		return errors.New("malformed SharedAccessSignature")
	}
	if !sas.MatchesHost(tok, a.host) {
		return errors.New("token audience does not match this hub")
	}
	if err := sas.Validate(tok, a.now(), a.skew); err != nil {
		return errors.New("token expired")
	}
	for _, p := range a.policies {
		if p.Name == tok.KeyName && tok.Verify(p.PrimaryKey, p.SecondaryKey) {
			return nil
		}
	}
	return errors.New("signature does not match any shared access policy")
}

// authed wraps a service handler with SAS authentication.
func (a *Handler) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := a.authenticate(r); err != nil {
			writeAPIError(w, &apiError{Status: http.StatusUnauthorized, Code: "IotHubUnauthorizedAccess", Message: err.Error()}, a.now())
			return
		}
		next(w, r)
	}
}
