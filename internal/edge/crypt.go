package edge

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
)

// sealVersion prefixes sealed values so the format can change later.
const sealVersion = 1

// errUnseal means a sealed value cannot be opened with this edge's key:
// the key was regenerated, or the value is corrupt.
var errUnseal = errors.New("cannot decrypt with this edge's key (key regenerated, or data corrupt)")

// sealer encrypts the edge's secrets at rest (identity keys, the edge CA's
// private key) with AES-256-GCM. The key is derived from the edge's own
// SAS key, which the operator already protects as the edge's credential,
// so a copied storage folder alone reveals no child's key.
type sealer struct {
	aead cipher.AEAD
}

func newSealer(edgeID, sasKey string) (*sealer, error) {
	secret, err := base64.StdEncoding.DecodeString(sasKey)
	if err != nil || len(secret) == 0 {
		return nil, errors.New("edge key is not base64")
	}
	k, err := hkdf.Key(sha256.New, secret, []byte("outpost edge cache"), "aes-256-gcm v1 "+edgeID, 32)
	if err != nil {
		return nil, fmt.Errorf("derive cache key: %w", err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal encrypts plain; slot (the KV key) is authenticated with it so a
// value cannot be moved to another key.
func (s *sealer) seal(slot string, plain []byte) []byte {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	rand.Read(out[1:]) // never fails (crypto/rand)
	return s.aead.Seal(out, out[1:], plain, []byte(slot))
}

func (s *sealer) open(slot string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n || sealed[0] != sealVersion {
		return nil, errUnseal
	}
	plain, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(slot))
	if err != nil {
		return nil, errUnseal
	}
	return plain, nil
}
