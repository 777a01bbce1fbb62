package hub

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket names. Changing them orphans the data of existing hubs.
const (
	bucketDevices = "devices"
	bucketModules = "modules"
	bucketTwins   = "twins"
)

var (
	errExists   = errors.New("key exists")
	errConflict = errors.New("revision mismatch")
	errNotFound = errors.New("key not found")
)

// encID turns an identity id into a KV key token. Device ids may hold
// characters NATS subjects forbid (`*`, `$`, `.`…) and are case-sensitive,
// so raw ids never become keys; base64url without padding keeps keys within
// [A-Za-z0-9_-] and decodes back exactly.
func encID(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

func decID(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("decode key %q: %w", tok, err)
	}
	return string(b), nil
}

// deviceKey is the key of a device and of its twin; moduleKey that of a
// module and its twin. A module key starts with its device's key and a dot,
// so one wildcard finds every module of a device.
func deviceKey(d string) string    { return encID(d) }
func moduleKey(d, m string) string { return encID(d) + "." + encID(m) }

// splitKey reverses deviceKey and moduleKey; m is empty for a device key.
func splitKey(key string) (d, m string, err error) {
	dt, mt, isModule := strings.Cut(key, ".")
	if d, err = decID(dt); err != nil {
		return "", "", err
	}
	if isModule {
		if m, err = decID(mt); err != nil {
			return "", "", err
		}
	}
	return d, m, nil
}

// bucket wraps one KV bucket with the operations the registry needs, each
// returning the revision it wrote so the caller can update its index
// without waiting for the watcher.
type bucket struct {
	name string
	js   jetstream.JetStream
	kv   jetstream.KeyValue
}

// openBucket opens or creates a bucket; a ttl > 0 drops entries not
// written for that long.
func openBucket(ctx context.Context, js jetstream.JetStream, name string, replicas int, ttl time.Duration) (*bucket, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:   name,
		History:  1,
		Storage:  jetstream.FileStorage,
		Replicas: replicas,
		TTL:      ttl,
	})
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", name, err)
	}
	return &bucket{name: name, js: js, kv: kv}, nil
}

func (b *bucket) get(ctx context.Context, key string) ([]byte, uint64, error) {
	e, err := b.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, errNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", b.name, err)
	}
	return e.Value(), e.Revision(), nil
}

// create writes key only if it is absent (or deleted).
func (b *bucket) create(ctx context.Context, key string, val []byte) (uint64, error) {
	rev, err := b.kv.Create(ctx, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errExists
	}
	if err != nil {
		return 0, fmt.Errorf("create in %s: %w", b.name, err)
	}
	return rev, nil
}

// update writes key only if its latest revision is rev.
func (b *bucket) update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	n, err := b.kv.Update(ctx, key, val, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errConflict
	}
	if err != nil {
		return 0, fmt.Errorf("update in %s: %w", b.name, err)
	}
	return n, nil
}

func (b *bucket) put(ctx context.Context, key string, val []byte) (uint64, error) {
	n, err := b.kv.Put(ctx, key, val)
	if err != nil {
		return 0, fmt.Errorf("put in %s: %w", b.name, err)
	}
	return n, nil
}

// remove purges key (dropping its history) and returns the revision of the
// purge marker, which the index needs as a tombstone. With rev > 0 it only
// removes that revision. The jetstream package's Delete does not return the
// revision, hence the hand-built marker, which follows the KV wire format.
func (b *bucket) remove(ctx context.Context, key string, rev uint64) (uint64, error) {
	m := nats.NewMsg("$KV." + b.name + "." + key)
	m.Header.Set("KV-Operation", "PURGE")
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	if rev > 0 {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	}
	ack, err := b.js.PublishMsg(ctx, m)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, errConflict
		}
		return 0, fmt.Errorf("delete in %s: %w", b.name, err)
	}
	return ack.Sequence, nil
}
