package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"outpost/internal/identity"
	"outpost/internal/status"
)

// maxCASRetries bounds the retries of a server-side merge that keeps losing
// its compare-and-set to other writers.
const maxCASRetries = 20

// errTooBusy is the answer when maxCASRetries runs out.
var errTooBusy = status.Errorf(http.StatusTooManyRequests, status.CodeThrottling, "too many concurrent updates of the same entity; retry")

// etagOf renders a KV revision as an etag. The revision is the etag, so an
// If-Match maps onto a compare-and-set.
func etagOf(rev uint64) string { return identity.ETagFromRevision(rev) }

// isAny reports whether ifMatch asks for no etag check.
func isAny(ifMatch string) bool {
	s := strings.TrimSpace(ifMatch)
	return s == "" || s == "*" || s == `"*"`
}

// reload reads key from KV into t, for when the index may lag behind
// another replica's write. ok is false when the key does not exist.
func (h *Hub) reload(ctx context.Context, b *bucket, t *table, key string) (*row, bool, error) {
	raw, rev, err := b.get(ctx, key)
	if errors.Is(err, errNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	val, err := t.decode(key, rev, raw)
	if err != nil {
		return nil, false, err
	}
	t.applyPut(key, rev, raw, val, false)
	r, ok := t.get(key)
	return r, ok, nil
}

// lookup returns key's row from the index, falling back to KV on a miss
// so that a write on this replica can act on another replica's fresh
// creation.
func (h *Hub) lookup(ctx context.Context, b *bucket, t *table, key string) (*row, bool, error) {
	if r, ok := t.get(key); ok {
		return r, true, nil
	}
	return h.reload(ctx, b, t, key)
}

// write stores v at key: created when cur is nil, otherwise by a
// compare-and-set against cur's revision. It applies the result to t.
func (h *Hub) write(ctx context.Context, b *bucket, t *table, key string, cur *row, v any) (*row, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s entry: %w", b.name, err)
	}
	var rev uint64
	if cur == nil {
		rev, err = b.create(ctx, key, raw)
	} else {
		rev, err = b.update(ctx, key, raw, cur.rev)
	}
	if err != nil {
		return nil, err
	}
	return h.applied(t, key, rev, raw)
}

// put stores v at key unconditionally and applies it to t.
func (h *Hub) put(ctx context.Context, b *bucket, t *table, key string, v any) (*row, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s entry: %w", b.name, err)
	}
	rev, err := b.put(ctx, key, raw)
	if err != nil {
		return nil, err
	}
	return h.applied(t, key, rev, raw)
}

func (h *Hub) applied(t *table, key string, rev uint64, raw []byte) (*row, error) {
	val, err := t.decode(key, rev, raw)
	if err != nil {
		return nil, err
	}
	t.applyPut(key, rev, raw, val, false)
	return &row{rev: rev, raw: raw, val: val}, nil
}

// remove deletes key (only at revision rev when rev > 0) and applies the
// deletion to t.
func (h *Hub) remove(ctx context.Context, b *bucket, t *table, key string, rev uint64) error {
	drev, err := b.remove(ctx, key, rev)
	if err != nil {
		return err
	}
	t.applyDelete(key, drev, false)
	return nil
}

// mutate runs a read-modify-write of key under compare-and-set (see
// cas). fn gets the current decoded value and returns the next one.
func (h *Hub) mutate(ctx context.Context, b *bucket, t *table, key, ifMatch string, notFound func() error, fn func(cur any) (any, error)) (*row, error) {
	var next *row
	_, err := h.cas(ctx, b, t, key, ifMatch, notFound, func(cur *row) error {
		v, err := fn(cur.val)
		if err != nil {
			return err
		}
		next, err = h.write(ctx, b, t, key, cur, v)
		return err
	})
	return next, err
}

// removeIfMatch deletes key under compare-and-set (see cas) and returns
// the row it deleted.
func (h *Hub) removeIfMatch(ctx context.Context, b *bucket, t *table, key, ifMatch string, notFound func() error) (*row, error) {
	return h.cas(ctx, b, t, key, ifMatch, notFound, func(cur *row) error {
		return h.remove(ctx, b, t, key, cur.rev)
	})
}

// cas runs op, a write conditional on cur's revision, on key's current
// row and returns that row. ifMatch is checked against the current etag;
// with no etag (or "*") an op that loses its compare-and-set is retried
// on fresh data, since the caller asked for a merge, while with an etag
// it is a 412, since the caller's view is now stale. notFound builds the
// error for a missing key.
func (h *Hub) cas(ctx context.Context, b *bucket, t *table, key, ifMatch string, notFound func() error, op func(cur *row) error) (*row, error) {
	cur, ok, err := h.lookup(ctx, b, t, key)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if !ok {
			return nil, notFound()
		}
		if !identity.MatchETag(ifMatch, etagOf(cur.rev)) {
			// The index may lag another replica that made the etag the
			// caller holds; only KV can tell.
			if cur, ok, err = h.reload(ctx, b, t, key); err != nil {
				return nil, err
			}
			if !ok {
				return nil, notFound()
			}
			if !identity.MatchETag(ifMatch, etagOf(cur.rev)) {
				return nil, etagMismatch(ifMatch)
			}
		}
		err := op(cur)
		if err == nil {
			return cur, nil
		}
		if !errors.Is(err, errConflict) {
			return nil, err
		}
		if !isAny(ifMatch) {
			return nil, etagMismatch(ifMatch)
		}
		if attempt >= maxCASRetries {
			return nil, errTooBusy
		}
		if cur, ok, err = h.reload(ctx, b, t, key); err != nil {
			return nil, err
		}
	}
}

// etagMismatch is the 412 for an If-Match that is not the current etag.
func etagMismatch(ifMatch string) error {
	return status.PreconditionFailed("etag %s does not match the current etag", strings.Trim(ifMatch, `" `))
}
