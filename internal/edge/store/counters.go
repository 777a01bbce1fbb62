package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Each queue's statistics are persisted, so that Open reads a few keys
// per endpoint instead of every entry: restart-to-serving does not grow
// with the backlog.
//
//	'm' 2 endpoint-id:4   entries ever committed to the queue: count, bytes
//	'm' 3 endpoint-id:4   entries ever deleted from it: count, bytes, low
//	'm' 0 "ctr"           present once a store keeps these counters
//
// A queue's length is the first count less the second. Each key has one
// writer at a time: the committer writes the first, in the batch of the
// entries it counts (synced); a deletion writes the second under the
// endpoint's delMu, in the batch of the deletions it counts. Keys written
// by concurrent writers could be overwritten by a stale total; totals of
// one writer each cannot. Pebble recovers a prefix of its log after a
// crash, so the counters always describe the entries recovered with them.
//
// A store written before the counters existed has no "ctr" key: Open
// scans its queues once and writes them, synced, before serving.

var (
	metaCountersKey = []byte{prefixMeta, 0, 'c', 't', 'r'}
	metaAddedPfx    = []byte{prefixMeta, 2}
	metaRemovedPfx  = []byte{prefixMeta, 3}
)

// tally is a running total of entries and their bytes.
type tally struct{ n, bytes uint64 }

func (t tally) plus(n, bytes int64) tally {
	return tally{n: t.n + uint64(n), bytes: t.bytes + uint64(bytes)}
}

func counterKey(pfx []byte, id uint32) []byte {
	return binary.BigEndian.AppendUint32(append([]byte(nil), pfx...), id)
}

func encodeAdded(t tally) []byte {
	return binary.AppendUvarint(binary.AppendUvarint(nil, t.n), t.bytes)
}

func encodeRemoved(t tally, low uint64) []byte {
	return binary.AppendUvarint(encodeAdded(t), low)
}

// setRemoved writes ep's deletion totals and low into b, the batch of the
// deletions they count. The caller holds ep.delMu.
func setRemoved(b *pebble.Batch, ep *endpoint, t tally, low uint64) error {
	return b.Set(counterKey(metaRemovedPfx, ep.id), encodeRemoved(t, low), nil)
}

// readTally reads a counter key; a missing one is zero (an endpoint that
// never had an entry, or never had one deleted).
func (s *Store) readTally(key []byte, withLow bool) (t tally, low uint64, err error) {
	v, err := s.get(key)
	if errors.Is(err, ErrNotFound) {
		return tally{}, 0, nil
	}
	if err != nil {
		return tally{}, 0, err
	}
	d := decoder{b: v}
	t.n, t.bytes = d.uvarint(), d.uvarint()
	if withLow {
		low = d.uvarint()
	}
	if d.err != nil || len(d.b) != 0 {
		return tally{}, 0, fmt.Errorf("counter %x: %w", key, errCorrupt)
	}
	return t, low, nil
}

// loadCounters rebuilds the queues' statistics from their counters and
// one read of each non-empty queue's head. ok is false for a store that
// has no counters yet.
func (s *Store) loadCounters(byID map[uint32]*endpoint) (q queueScan, ok bool, err error) {
	if _, err := s.get(metaCountersKey); errors.Is(err, ErrNotFound) {
		return q, false, nil
	} else if err != nil {
		return q, false, err
	}
	q.eps = make(map[*endpoint]*queueState, len(byID))
	for id, ep := range byID {
		added, _, err := s.readTally(counterKey(metaAddedPfx, id), false)
		if err != nil {
			return q, false, err
		}
		removed, low, err := s.readTally(counterKey(metaRemovedPfx, id), true)
		if err != nil {
			return q, false, err
		}
		if removed.n > added.n || removed.bytes > added.bytes {
			return q, false, fmt.Errorf("endpoint %q: %d of %d entries deleted: %w", ep.name, removed.n, added.n, errCorrupt)
		}
		st := &queueState{count: int64(added.n - removed.n), bytes: int64(added.bytes - removed.bytes), low: low, added: added, removed: removed}
		q.eps[ep] = st
		q.bytes += st.bytes
		if st.count == 0 {
			continue
		}
		ep.low.Store(low)
		k, v, err := s.head(ep)
		if err != nil {
			return q, false, err
		}
		if k == nil {
			return q, false, fmt.Errorf("endpoint %q: counted %d entries, found none: %w", ep.name, st.count, errCorrupt)
		}
		h, err := decodeHeader(v)
		if err != nil {
			return q, false, fmt.Errorf("queue key %x: %w", k, err)
		}
		st.oldest = h.storedAt
	}
	return q, true, nil
}

// writeCounters persists the counters of a scanned store, synced, so that
// later opens read them instead of the queues.
func (s *Store) writeCounters(q queueScan) error {
	b := s.db.NewBatch()
	defer b.Close()
	for ep, st := range q.eps {
		if err := b.Set(counterKey(metaAddedPfx, ep.id), encodeAdded(st.added), nil); err != nil {
			return err
		}
		if err := setRemoved(b, ep, st.removed, st.low); err != nil {
			return err
		}
	}
	if err := b.Set(metaCountersKey, nil, nil); err != nil {
		return err
	}
	return s.write(func(*pebble.DB) error { return b.Commit(pebble.Sync) })
}
