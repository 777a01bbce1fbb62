package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/edgeproto"
	"outpost/internal/metrics"
	"outpost/internal/status"
)

// BucketEdgeStores holds, per edge store, a sequence past every one the
// hub has stored from that store (what store-position answers), and the
// store's next-high sequence when that record was raised: "next high".
// A record of one number is from before the second was kept.
const BucketEdgeStores = "EDGE_STORES"

// positionBlock is how far past a stored sequence a record is raised, so
// a draining edge costs one record write per positionBlock messages, not
// one per batch. A store asked to move on skips at most that many
// numbers, of 2^64.
const positionBlock = 1 << 16

// storePositions caches the records this replica read or wrote. A record
// only grows, by compare-and-set, so a cached value is a lower bound of
// the bucket's and never lets a record fall behind a stored sequence.
//
// The record runs up to positionBlock ahead of what was stored, so an
// edge that merely restarted is behind it. Whether a store is behind
// what the hub stored (restored, or copied) is told by the next-high
// sequence instead: one past the highest this replica stored, or the
// record's, whichever is higher. Both are lower bounds of the true one,
// so a restarted edge is never taken for a rewound store.
type storePositions struct {
	kv jetstream.KeyValue

	mu sync.Mutex
	// mu guards the following fields.
	known map[string]uint64
	high  map[string]uint64
}

// position is a record: next, and the next-high when it was written.
type position struct{ next, high uint64 }

func parsePosition(v []byte) (position, error) {
	f := strings.Fields(string(v))
	var p position
	var err error
	if len(f) < 1 || len(f) > 2 {
		return p, fmt.Errorf("edge store position %q: not one or two numbers", v)
	}
	if p.next, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return p, fmt.Errorf("edge store position %q: %w", v, err)
	}
	if len(f) == 2 {
		if p.high, err = strconv.ParseUint(f[1], 10, 64); err != nil {
			return p, fmt.Errorf("edge store position %q: %w", v, err)
		}
	}
	return p, nil
}

func (p position) String() string {
	return strconv.FormatUint(p.next, 10) + " " + strconv.FormatUint(p.high, 10)
}

func positionKey(edgeID, storeID string) string { return enc(edgeID) + "." + storeID }

// get reads the record of key; zero if there is none.
func (sp *storePositions) get(ctx context.Context, key string) (p position, rev uint64, err error) {
	e, err := sp.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return position{}, 0, nil
	}
	if err != nil {
		return position{}, 0, fmt.Errorf("edge store position: %w", err)
	}
	if p, err = parsePosition(e.Value()); err != nil {
		return position{}, 0, err
	}
	return p, e.Revision(), nil
}

// raise makes the record of key at least next, and its next-high at
// least high, and returns the record.
func (sp *storePositions) raise(ctx context.Context, key string, next, high uint64) (position, error) {
	for {
		cur, rev, err := sp.get(ctx, key)
		if err != nil {
			return position{}, err
		}
		if cur.next >= next && cur.high >= high {
			sp.remember(key, cur)
			return cur, nil
		}
		want := position{next: max(cur.next, next), high: max(cur.high, high)}
		val := []byte(want.String())
		if rev == 0 {
			_, err = sp.kv.Create(ctx, key, val)
		} else {
			_, err = sp.kv.Update(ctx, key, val, rev)
		}
		if err == nil {
			sp.remember(key, want)
			return want, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return position{}, fmt.Errorf("edge store position: %w", err)
		}
		// Another replica wrote it meanwhile: again.
	}
}

func (sp *storePositions) remember(key string, p position) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.known[key] = max(sp.known[key], p.next)
	sp.high[key] = max(sp.high[key], p.high)
}

// nextHigh is the next-high sequence of key this replica knows.
func (sp *storePositions) nextHigh(key string) uint64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.high[key]
}

// covers reports whether the record of key is known to be past seq.
func (sp *storePositions) covers(key string, seq uint64) bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.known[key] > seq
}

// stored makes the records cover the highest sequence of each store in a
// batch of edgeID's messages, before the batch is acknowledged.
func (sp *storePositions) stored(ctx context.Context, edgeID string, high map[string]uint64) error {
	for sid, seq := range high {
		key := positionKey(edgeID, sid)
		if sp.covers(key, seq) {
			sp.remember(key, position{high: seq + 1})
			continue
		}
		if _, err := sp.raise(ctx, key, seq+positionBlock, seq+1); err != nil {
			return err
		}
	}
	return nil
}

// storePosition answers an edge's store-position request: the record of
// its store, raised to what the edge says it has numbered. A next-high
// sequence past the edge's next means the store is older than what the
// hub has stored from it: a backup restored, or a copy. A record past it
// alone is not (see storePositions); the edge moves past it all the same.
func (p *Plane) storePosition(ctx context.Context, edgeID string, payload []byte) ([]byte, error) {
	var req edgeproto.StorePosition
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, badArgument("store position: %v", err)
	}
	if err := req.Check(); err != nil {
		return nil, badArgument("store position: %v", err)
	}
	key := positionKey(edgeID, req.StoreID)
	cur, err := p.positions.raise(ctx, key, req.Next, 0)
	if err != nil {
		return nil, unavailable(err)
	}
	high := max(cur.high, p.positions.nextHigh(key))
	behind := high > req.Next
	if behind {
		p.edgeStats.rewound(edgeID)
		p.log.Warn("edge store is behind what the hub stored from it (restored from a backup, or copied); the edge continues past it",
			"edge", edgeID, "store", req.StoreID, "edge_next", req.Next, "hub_next_high", high, "hub_next", cur.next)
	}
	return json.Marshal(edgeproto.StorePositionReply{Next: cur.next, Behind: behind})
}

// unavailable is the status of a request the hub's state could not serve
// now; the edge asks again on its next connection.
func unavailable(err error) error {
	return &status.Error{Status: http.StatusServiceUnavailable, Code: status.CodeServiceUnavailable, Message: err.Error()}
}

// edgeStats counts, per edge, what its drains cost the hub: replays
// dropped as duplicates and stores found behind the hub's record.
type edgeStats struct {
	mu sync.Mutex
	// mu guards m.
	m map[string]*metrics.Edge
}

func (s *edgeStats) at(edgeID string) *metrics.Edge {
	c := s.m[edgeID]
	if c == nil {
		c = &metrics.Edge{}
		s.m[edgeID] = c
	}
	return c
}

func (s *edgeStats) duplicates(edgeID string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.at(edgeID).Duplicates += uint64(n)
}

func (s *edgeStats) rewound(edgeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.at(edgeID).StoreRewinds++
}

// EdgeCounts returns a copy of every edge's counters since this replica
// started.
func (p *Plane) EdgeCounts() map[string]metrics.Edge {
	s := p.edgeStats
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]metrics.Edge, len(s.m))
	for id, c := range s.m {
		out[id] = *c
	}
	return out
}
