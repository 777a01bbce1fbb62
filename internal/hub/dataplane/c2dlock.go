package dataplane

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// An HTTPS C2D lock token is base64url, without padding, of
//
//	payload | mac
//	payload = <JetStream ack subject> " " <lock time, Unix ns>
//	mac     = HMAC-SHA256(lock key, "outpost c2d lock\x00" <device id> "\x00" payload)
//
// The ack subject names the stream sequence that a settle deletes, so a
// device must not be able to edit it: the MAC makes the token the hub's
// word, bound to the device it was handed to. The key lives in the KV
// bucket DATAPLANE_KEYS, made once by the first replica, so tokens
// survive restarts and any replica on the NATS server settles them.
const (
	keyC2DLock  = "c2d-lock"
	lockKeySize = 32
	lockMACSize = sha256.Size
	// maxLockToken bounds what openLock decodes: a genuine token holds an
	// ack subject (a consumer name of at most 171 characters for a
	// 128-character device id, a domain and an account hash) and is far
	// shorter.
	maxLockToken = 2048
)

var lockContext = []byte("outpost c2d lock\x00")

// loadLockKey reads the lock key from kv or, on the first start of any
// replica, creates it; replicas racing to create it all end with the
// one that was stored first.
func loadLockKey(ctx context.Context, kv jetstream.KeyValue) ([]byte, error) {
	for {
		e, err := kv.Get(ctx, keyC2DLock)
		if err == nil {
			if k := e.Value(); len(k) == lockKeySize {
				return k, nil
			}
			return nil, fmt.Errorf("c2d lock key %s/%s is %d bytes, want %d: delete it to make a new one (outstanding locks are lost)",
				BucketKeys, keyC2DLock, len(e.Value()), lockKeySize)
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("read c2d lock key: %w", err)
		}
		k := make([]byte, lockKeySize)
		_, _ = rand.Read(k) // crypto/rand.Read never fails
		_, err = kv.Create(ctx, keyC2DLock, k)
		if err == nil {
			return k, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("create c2d lock key: %w", err)
		}
		// Another replica stored one first: read it.
	}
}

func lockMAC(key []byte, deviceID string, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(lockContext)
	m.Write([]byte(deviceID))
	m.Write([]byte{0})
	m.Write(payload)
	return m.Sum(nil)
}

// sealLock makes the lock token of the message delivered with ack
// subject reply, locked at locked, for deviceID.
func sealLock(key []byte, deviceID, reply string, locked time.Time) string {
	payload := []byte(reply + " " + strconv.FormatInt(locked.UnixNano(), 10))
	return base64.RawURLEncoding.EncodeToString(append(payload, lockMAC(key, deviceID, payload)...))
}

// openLock checks that token is one sealLock made for deviceID with key,
// and returns what it holds. Only the exact encoding sealLock writes is
// accepted, so one lock has one token.
func openLock(key []byte, deviceID, token string) (ackSubject, bool) {
	if len(token) > maxLockToken {
		return ackSubject{}, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	// The decoder skips CR and LF and ignores stray low bits.
	if err != nil || len(raw) <= lockMACSize || base64.RawURLEncoding.EncodeToString(raw) != token {
		return ackSubject{}, false
	}
	payload, mac := raw[:len(raw)-lockMACSize], raw[len(raw)-lockMACSize:]
	if !hmac.Equal(mac, lockMAC(key, deviceID, payload)) {
		return ackSubject{}, false
	}
	return parseLock(string(payload))
}

// ackSubject is what a lock token holds: the parts of a JetStream
// acknowledgement subject the plane checks.
type ackSubject struct {
	reply     string
	stream    string
	consumer  string
	delivered uint64
	seq       uint64
	at        time.Time // when the stream stored the message
	locked    time.Time // when C2DReceive handed it out
}

// parseLock reads a lock token's payload: "$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending> <lock ns>",
// the subject also in its newer form with domain and account hash after ACK.
func parseLock(token string) (ackSubject, bool) {
	reply, lockedAt, ok := strings.Cut(token, " ")
	if !ok {
		return ackSubject{}, false
	}
	lns, err := strconv.ParseInt(lockedAt, 10, 64)
	if err != nil {
		return ackSubject{}, false
	}
	t := strings.Split(reply, ".")
	if len(t) < 9 || t[0] != "$JS" || t[1] != "ACK" {
		return ackSubject{}, false
	}
	if len(t) >= 11 {
		t = t[2:] // domain and account hash
	}
	a := ackSubject{reply: reply, stream: t[2], consumer: t[3]}
	var err1, err2, err3 error
	var ns int64
	a.delivered, err1 = strconv.ParseUint(t[4], 10, 64)
	a.seq, err2 = strconv.ParseUint(t[5], 10, 64)
	ns, err3 = strconv.ParseInt(t[7], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return ackSubject{}, false
	}
	a.at, a.locked = time.Unix(0, ns), time.Unix(0, lns)
	return a, true
}
