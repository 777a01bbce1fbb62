package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"outpost/internal/message"
)

// Entry is one stored message as a reader sees it.
type Entry struct {
	Endpoint string
	// Seq is unique in the store and never reused, so it can serve as the
	// message's EdgeSeq for de-duplication at the hub.
	Seq      uint64
	StoredAt time.Time
	// ExpiresAt is when the entry expires under the TTL in force when read.
	ExpiresAt time.Time
	Msg       *message.Message
	// Size is the bytes the entry counts against the quota.
	Size int
}

// Reader reads one endpoint in stored order. It remembers how far it has
// read; acks are shared by every reader of the endpoint. A Reader is not
// safe for concurrent use.
type Reader struct {
	s    *Store
	ep   *endpoint
	next uint64 // next sequence to read
}

// NewReader returns a reader of endpoint, creating the endpoint if needed.
// It starts at the first entry not yet acked.
func (s *Store) NewReader(endpoint string) (*Reader, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	ep, err := s.endpoint(endpoint)
	if err != nil {
		return nil, fmt.Errorf("new reader: %w", err)
	}
	return &Reader{s: s, ep: ep}, nil
}

// Endpoint returns the name of the reader's endpoint.
func (r *Reader) Endpoint() string { return r.ep.name }

// Rewind makes the next read start again at the first entry not yet
// acked, for redelivery after a failed forward.
func (r *Reader) Rewind() { r.next = 0 }

// Ack deletes the endpoint's entries up to and including seq.
func (r *Reader) Ack(seq uint64) error { return r.s.ack(r.ep, seq) }

// Next returns up to max entries after those already returned, in stored
// order, skipping (and deleting) expired ones. It blocks until at least
// one entry is available, ctx ends or the store closes.
func (r *Reader) Next(ctx context.Context, max int) ([]Entry, error) {
	if max <= 0 {
		return nil, errors.New("next: max must be positive")
	}
	for {
		r.s.mu.Lock()
		wait := r.ep.notify
		r.s.mu.Unlock()
		entries, err := r.tryNext(max)
		if err != nil || len(entries) > 0 {
			return entries, err
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.s.done:
			return nil, ErrClosed
		}
	}
}

// maxExpiredPerRead bounds the deletions one read collects, so a long run
// of expired entries is deleted in pieces.
const maxExpiredPerRead = 4096

// tryNext is Next without blocking: it may return no entries.
func (r *Reader) tryNext(max int) ([]Entry, error) {
	if max <= 0 {
		return nil, errors.New("next: max must be positive")
	}
	if err := r.s.enter(); err != nil {
		return nil, err
	}
	defer r.s.leave()
	for {
		entries, more, err := r.read(max)
		if err != nil || len(entries) > 0 || !more {
			return entries, err
		}
	}
}

// read reads once; more reports that it stopped at maxExpiredPerRead.
func (r *Reader) read(max int) (entries []Entry, more bool, err error) {
	s := r.s
	now := s.now()
	s.mu.Lock()
	epTTL := s.ttlLocked(r.ep)
	s.mu.Unlock()

	// Start at the reader's position, never below the deleted head; the
	// bound keeps the seek off the tombstones there.
	lo, hi := r.ep.liveBounds()
	if from := queueKey(r.ep.id, r.next); bytes.Compare(from, lo) > 0 {
		lo = from
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, false, fmt.Errorf("next: %w", pebbleErr(err))
	}
	var expired [][]byte
	for ok := it.First(); ok && len(entries) < max; ok = it.Next() {
		if len(expired) == maxExpiredPerRead {
			more = true
			break
		}
		_, seq, _ := parseQueueKey(it.Key())
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return nil, false, fmt.Errorf("next: %w", pebbleErr(err))
		}
		h, err := decodeHeader(v)
		if err != nil {
			_ = it.Close()
			return nil, false, fmt.Errorf("next: entry %d: %w", seq, err)
		}
		exp := expiresAt(h, epTTL)
		if !now.Before(exp) {
			r.next = seq + 1
			expired = append(expired, append([]byte(nil), it.Key()...))
			continue
		}
		_, msg, err := decodeValue(v)
		if err != nil {
			_ = it.Close()
			return nil, false, fmt.Errorf("next: entry %d: %w", seq, err)
		}
		r.next = seq + 1
		entries = append(entries, Entry{
			Endpoint:  r.ep.name,
			Seq:       seq,
			StoredAt:  h.storedAt,
			ExpiresAt: exp,
			Msg:       msg,
			Size:      len(it.Key()) + len(v),
		})
	}
	if err := it.Close(); err != nil {
		return nil, false, fmt.Errorf("next: %w", pebbleErr(err))
	}
	if len(expired) > 0 {
		if err := s.deleteKeys(r.ep, expired, true); err != nil {
			return nil, false, fmt.Errorf("next: delete expired: %w", err)
		}
	}
	return entries, more, nil
}

func expiresAt(h header, epTTL time.Duration) time.Time {
	if h.ttl != 0 {
		return h.storedAt.Add(h.ttl)
	}
	return h.storedAt.Add(epTTL)
}

// NextByPriority returns the next entries of the highest-priority reader
// that has any (0 is highest; among equal priorities, the earlier reader in
// readers), blocking until one has entries. All entries returned come from
// one reader; Entry.Endpoint names it. Serving live, high-priority data
// first keeps a backlog from starving it.
func (s *Store) NextByPriority(ctx context.Context, readers []*Reader, max int) ([]Entry, error) {
	if len(readers) == 0 {
		return nil, errors.New("next by priority: no readers")
	}
	if max <= 0 {
		return nil, errors.New("next by priority: max must be positive")
	}
	for _, r := range readers {
		if r.s != s {
			return nil, errors.New("next by priority: reader of another store")
		}
	}
	order := make([]*Reader, len(readers))
	for {
		s.mu.Lock()
		wait := s.notify
		copy(order, readers)
		sort.SliceStable(order, func(i, j int) bool { return order[i].ep.priority < order[j].ep.priority })
		s.mu.Unlock()
		for _, r := range order {
			entries, err := r.tryNext(max)
			if err != nil || len(entries) > 0 {
				return entries, err
			}
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.done:
			return nil, ErrClosed
		}
	}
}

func (s *Store) ack(ep *endpoint, upto uint64) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	ep.delMu.Lock()
	defer ep.delMu.Unlock()
	lo, _ := ep.liveBounds()
	hi := queueKey(ep.id, upto)
	hi = append(hi[:len(hi):len(hi)], 0) // the key right after seq upto
	if bytes.Compare(lo, hi) >= 0 {
		return nil // acked before
	}
	// Only the entries being acked are read, to count them exactly:
	// the bound skips the deleted head.
	d, err := s.measure(lo, hi, nil)
	if err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	if err := s.deleteRange(ep, d, false); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	return nil
}

// liveBounds returns the key range [lo, hi) holding every entry of ep
// still queued: it starts at ep.low, past the deleted head.
func (ep *endpoint) liveBounds() (lo, hi []byte) {
	return queueKey(ep.id, ep.low.Load()), queueKey(ep.id+1, 0)
}

// span is a measured run of consecutive entries.
type span struct {
	first, last []byte
	n, bytes    int64
}

// measure counts the entries in [lo, hi), stopping before the first entry
// for which stop (if not nil) returns true. The caller holds ep.delMu, so
// nothing it measures can be deleted by someone else before it deletes it;
// commits only add keys after every existing one.
func (s *Store) measure(lo, hi []byte, stop func(v []byte) bool) (span, error) {
	var d span
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return d, pebbleErr(err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return d, pebbleErr(err)
		}
		if stop != nil && stop(v) {
			break
		}
		if d.first == nil {
			d.first = append([]byte(nil), it.Key()...)
		}
		d.last = append(d.last[:0], it.Key()...)
		d.n++
		d.bytes += int64(len(it.Key()) + len(v))
	}
	return d, pebbleErr(it.Close())
}

// deleteRange deletes a measured span; the caller holds ep.delMu.
func (s *Store) deleteRange(ep *endpoint, d span, expired bool) error {
	if d.n == 0 {
		return nil
	}
	end := append(d.last[:len(d.last):len(d.last)], 0)
	low := ep.low.Load()
	if _, seq, ok := parseQueueKey(d.last); ok && seq >= low {
		low = seq + 1
	}
	removed := s.removedPlus(ep, d.n, d.bytes)
	if err := s.write(func(db *pebble.DB) error {
		b := db.NewBatch()
		defer b.Close()
		if err := b.DeleteRange(d.first, end, nil); err != nil {
			return err
		}
		if err := setRemoved(b, ep, removed, low); err != nil {
			return err
		}
		return b.Commit(pebble.NoSync)
	}); err != nil {
		return err
	}
	ep.low.Store(low)
	return s.deleted(ep, d.n, d.bytes, removed, expired)
}

// removedPlus is ep's deletion totals once n more entries of size bytes
// are deleted; the caller holds ep.delMu.
func (s *Store) removedPlus(ep *endpoint, n, size int64) tally {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ep.removed.plus(n, size)
}

// deleteKeys deletes those of keys that still exist; it takes ep.delMu.
func (s *Store) deleteKeys(ep *endpoint, keys [][]byte, expired bool) error {
	ep.delMu.Lock()
	defer ep.delMu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	var n, size int64
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if seen[string(k)] {
			continue
		}
		seen[string(k)] = true
		v, closer, err := s.db.Get(k)
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return pebbleErr(err)
		}
		size += int64(len(k) + len(v))
		n++
		_ = closer.Close()
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	if n == 0 {
		return nil
	}
	removed := s.removedPlus(ep, n, size)
	if err := setRemoved(b, ep, removed, ep.low.Load()); err != nil {
		return err
	}
	if err := s.write(func(*pebble.DB) error { return b.Commit(pebble.NoSync) }); err != nil {
		return err
	}
	return s.deleted(ep, n, size, removed, expired)
}

// deleted accounts for n deleted entries and finds the queue's new head.
// The caller holds ep.delMu, so no other deletion moves the head meanwhile.
func (s *Store) deleted(ep *endpoint, n, size int64, removed tally, expired bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep.removed = removed
	ep.count -= n
	ep.bytes -= size
	s.bytes -= size
	if expired {
		ep.expired += uint64(n)
	} else {
		ep.forwarded += uint64(n)
	}
	ep.dirty = true
	s.unreclaimed += size
	if s.unreclaimed >= s.reclaimThresholdLocked() {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	// Under mu, so a concurrent commit sees either the old count and
	// leaves oldest to us, or count zero and sets it itself.
	ep.oldest = time.Time{}
	if ep.count == 0 {
		return nil
	}
	head, v, err := s.head(ep)
	if err != nil || head == nil {
		return err
	}
	h, err := decodeHeader(v)
	if err != nil {
		return err
	}
	ep.oldest = h.storedAt
	return nil
}

// reclaimLiveShare: a reclaim between ticks waits until at least this
// share of the bytes still queued was deleted. A reclaim compacts the
// deleted range up to the queue's head, and so rewrites the live entries
// in the tables around the head; while a long backlog drains, reclaiming
// every ReclaimBytes made those rewrites cost the edge more CPU than the
// drain itself. This bounds them to a few per halving of the queue, while
// the deleted bytes whose disk space is still held stay under a quarter
// of what is queued (and the tick still reclaims every ExpiryInterval).
const reclaimLiveShare = 4

// reclaimThresholdLocked is how many deleted bytes make the maintenance
// loop reclaim before its next tick; the caller holds s.mu.
func (s *Store) reclaimThresholdLocked() int64 {
	return max(s.cfg.ReclaimBytes, s.bytes/reclaimLiveShare)
}

// head returns the first key and value of ep's queue, or nil.
func (s *Store) head(ep *endpoint) (key, value []byte, err error) {
	lo, hi := ep.liveBounds()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, nil, pebbleErr(err)
	}
	if it.First() {
		key = append([]byte(nil), it.Key()...)
		v, verr := it.ValueAndErr()
		value, err = append([]byte(nil), v...), verr
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	return key, value, pebbleErr(err)
}

// expire deletes the expired head of every queue and returns how many
// entries it deleted. Entries behind a live head that expire earlier (a
// shorter per-message TTL) are deleted when a reader passes them.
func (s *Store) expire() (int64, error) {
	if err := s.enter(); err != nil {
		return 0, err
	}
	defer s.leave()
	now := s.now()
	s.mu.Lock()
	eps := make([]*endpoint, 0, len(s.endpoints))
	for _, ep := range s.endpoints {
		if ep.count > 0 {
			eps = append(eps, ep)
		}
	}
	s.mu.Unlock()
	var total int64
	for _, ep := range eps {
		n, err := s.expireEndpoint(ep, now)
		total += n
		if err != nil {
			return total, fmt.Errorf("expire %q: %w", ep.name, err)
		}
	}
	return total, nil
}

func (s *Store) expireEndpoint(ep *endpoint, now time.Time) (int64, error) {
	ep.delMu.Lock()
	defer ep.delMu.Unlock()
	s.mu.Lock()
	ttl := s.ttlLocked(ep)
	s.mu.Unlock()
	var bad error
	lo, hi := ep.liveBounds()
	d, err := s.measure(lo, hi, func(v []byte) bool {
		h, err := decodeHeader(v)
		if err != nil {
			bad = err
			return true
		}
		return now.Before(expiresAt(h, ttl))
	})
	if err == nil {
		err = bad
	}
	if err != nil {
		return 0, err
	}
	return d.n, s.deleteRange(ep, d, true)
}

// reclaim compacts the deleted ranges of endpoints with deletions since the
// last reclaim, so their space returns to the disk now rather than when
// Pebble's own heuristics get to it.
func (s *Store) reclaim(ctx context.Context) error {
	s.mu.Lock()
	var eps []*endpoint
	for _, ep := range s.endpoints {
		if ep.dirty {
			ep.dirty = false
			eps = append(eps, ep)
		}
	}
	s.unreclaimed = 0
	s.mu.Unlock()
	if len(eps) == 0 {
		return nil
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	for _, ep := range eps {
		lo, hi := queueBounds(ep.id)
		head, _, err := s.head(ep)
		if err != nil {
			return err
		}
		if head != nil {
			hi = head
		}
		if bytes.Compare(lo, hi) >= 0 {
			continue
		}
		if err := s.write(func(db *pebble.DB) error { return db.Compact(ctx, lo, hi, false) }); err != nil {
			return fmt.Errorf("reclaim %q: %w", ep.name, err)
		}
	}
	return nil
}

// maintain is the background loop: expiry on every tick, reclaim on every
// tick with deletions and whenever enough bytes were deleted.
func (s *Store) maintain(ctx context.Context) {
	defer s.wg.Done()
	defer close(s.maintained)
	t := time.NewTicker(s.cfg.ExpiryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s.failedErr() != nil {
				continue // healLoop reopens it first
			}
			if _, err := s.expire(); err != nil && !errors.Is(err, ErrClosed) {
				s.log.Error("store expiry failed", "err", err)
			}
		case <-s.kick:
			if s.failedErr() != nil {
				continue
			}
		}
		if err := s.reclaim(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
			s.log.Error("store reclaim failed", "err", err)
		}
	}
}
