package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"outpost/internal/message"
)

// Record is one message to append to one endpoint.
type Record struct {
	Endpoint string
	Msg      *message.Message
	// TTL is an explicit per-message TTL a route gave; 0 means the
	// endpoint's or the store's TTL in force when the entry is read.
	TTL time.Duration
}

type pendingRec struct {
	ep       *endpoint
	key      []byte
	value    []byte
	storedAt time.Time
}

type appendReq struct {
	recs []pendingRec
	seqs []uint64
	size int64
	done func([]uint64, error)
}

// appendAsync queues recs for the next group commit, all or none.
//
// If it returns an error, nothing was queued and done is never called.
// Otherwise done is called exactly once: with err == nil after the records
// were committed and synced, with their sequences in recs order; or with
// the commit's error, and then none was stored. Calls to done happen in
// append order on the committer goroutine, so done must not block, call
// AppendRecords or Close: hand slow work (a network write) to another goroutine.
func (s *Store) appendAsync(recs []Record, done func(seqs []uint64, err error)) error {
	if len(recs) == 0 {
		return errors.New("append: no records")
	}
	if done == nil {
		return errors.New("append: nil callback")
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	now := s.now()
	req := &appendReq{recs: make([]pendingRec, len(recs)), seqs: make([]uint64, len(recs)), done: done}
	for i, r := range recs {
		if r.Msg == nil {
			return errors.New("append: nil message")
		}
		if messageSize(r.Msg) > message.MaxSize {
			return ErrTooLarge
		}
		if r.TTL < 0 || r.TTL > MaxTTL {
			return fmt.Errorf("append: ttl %v out of range [0, %v]", r.TTL, MaxTTL)
		}
		ep, err := s.endpoint(r.Endpoint)
		if err != nil {
			return fmt.Errorf("append: %w", err)
		}
		v := encodeValue(header{storedAt: now, ttl: r.TTL}, r.Msg)
		req.recs[i] = pendingRec{ep: ep, value: v, storedAt: now}
		req.size += int64(queueKeyLen + len(v))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return ErrClosed
	}
	if s.failed != nil {
		return fmt.Errorf("append: store is reopening its database after a failed write: %w", s.failed)
	}
	if s.cfg.MaxBytes > 0 && s.bytes+s.reserved+req.size > s.cfg.MaxBytes {
		return s.errQuota
	}
	s.reserved += req.size
	for i := range req.recs {
		// Assigned under mu in the order the committer will write them,
		// so sequence order is stored order.
		req.seqs[i] = s.nextSeq
		req.recs[i].key = queueKey(req.recs[i].ep.id, s.nextSeq)
		s.nextSeq++
	}
	s.pending = append(s.pending, req)
	s.commitCond.Signal()
	return nil
}

// AppendRecords stores recs atomically, e.g. one routed message in every
// endpoint its routes name, and returns their sequences once durable.
// If ctx ends first, it returns ctx.Err() and the records may or may not
// be stored.
func (s *Store) AppendRecords(ctx context.Context, recs []Record) ([]uint64, error) {
	type result struct {
		seqs []uint64
		err  error
	}
	ch := make(chan result, 1)
	err := s.appendAsync(recs, func(seqs []uint64, err error) { ch <- result{seqs, err} })
	if err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.seqs, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// commitLoop is the single committer: it takes every queued append (up to
// maxBatchBytes), writes one batch, syncs once and then answers all.
func (s *Store) commitLoop() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		for len(s.pending) == 0 && !s.stopping {
			s.commitCond.Wait()
		}
		if len(s.pending) == 0 {
			s.mu.Unlock()
			return
		}
		n, size := 0, int64(0)
		for n < len(s.pending) && (n == 0 || size+s.pending[n].size <= maxBatchBytes) {
			size += s.pending[n].size
			n++
		}
		reqs := make([]*appendReq, n)
		copy(reqs, s.pending)
		s.pending = append(s.pending[:0], s.pending[n:]...)
		s.mu.Unlock()

		// closeMu keeps heal from swapping db under the commit.
		s.closeMu.RLock()
		err := s.commit(reqs, size)
		s.closeMu.RUnlock()
		if err != nil {
			s.log.Error("store commit failed", "records", len(reqs), "err", err)
		}
		for _, r := range reqs {
			if err != nil {
				r.done(nil, err)
			} else {
				r.done(r.seqs, nil)
			}
		}
	}
}

func (s *Store) commit(reqs []*appendReq, size int64) error {
	var last uint64
	for _, r := range reqs {
		last = r.seqs[len(r.seqs)-1]
	}
	// The queues' totals after this commit, written in its batch. Only
	// the committer (and heal, which excludes it) changes ep.added.
	added := make(map[*endpoint]tally)
	s.mu.Lock()
	for _, r := range reqs {
		for _, p := range r.recs {
			t, ok := added[p.ep]
			if !ok {
				t = p.ep.added
			}
			added[p.ep] = t.plus(1, int64(len(p.key)+len(p.value)))
		}
	}
	s.mu.Unlock()
	err := s.write(func(db *pebble.DB) error {
		b := db.NewBatchWithSize(int(size) + 64 + 24*len(added))
		defer b.Close()
		for _, r := range reqs {
			for _, p := range r.recs {
				if err := b.Set(p.key, p.value, nil); err != nil {
					return err
				}
			}
		}
		for ep, t := range added {
			if err := b.Set(counterKey(metaAddedPfx, ep.id), encodeAdded(t), nil); err != nil {
				return err
			}
		}
		// The high-water mark rides in every commit, so a sequence is
		// never reused even after its queue was drained and deleted.
		if err := b.Set(metaSeqKey, binary.AppendUvarint(nil, last), nil); err != nil {
			return err
		}
		// So does the clock, so a restart keeps it from running back.
		if err := b.Set(metaNowKey, binary.AppendVarint(nil, s.seenNanos()), nil); err != nil {
			return err
		}
		if err := s.checkFree(size); err != nil {
			return err
		}
		return b.Commit(pebble.Sync)
	})
	return s.commitDone(reqs, size, added, err)
}

// checkFree refuses a commit that would leave the file system with less
// than MinFreeBytes, before Pebble can fail on it.
func (s *Store) checkFree(size int64) error {
	if s.cfg.MinFreeBytes < 0 {
		return nil
	}
	u, err := s.cfg.FS.GetDiskUsage(s.cfg.Dir)
	if err != nil {
		// Not every file system can tell (in-memory ones cannot).
		return nil
	}
	if int64(u.AvailBytes)-size < s.cfg.MinFreeBytes {
		return fmt.Errorf("%w: %d bytes free, %d kept in reserve", ErrDiskFull, u.AvailBytes, s.cfg.MinFreeBytes)
	}
	return nil
}

// commitDone accounts for a commit and wakes the readers of every endpoint
// it touched.
func (s *Store) commitDone(reqs []*appendReq, size int64, added map[*endpoint]tally, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reserved -= size
	if err != nil {
		return fmt.Errorf("commit: %w", pebbleErr(err))
	}
	for ep, t := range added {
		ep.added = t
	}
	s.bytes += size
	s.commits++
	for _, r := range reqs {
		for _, p := range r.recs {
			ep := p.ep
			if ep.count == 0 {
				ep.oldest = p.storedAt
			}
			ep.count++
			ep.bytes += int64(len(p.key) + len(p.value))
			ep.stored++
			s.appended++
			if ep.notify != nil {
				close(ep.notify)
				ep.notify = nil
			}
		}
	}
	for _, r := range reqs {
		for _, p := range r.recs {
			if p.ep.notify == nil {
				p.ep.notify = make(chan struct{})
			}
		}
	}
	close(s.notify)
	s.notify = make(chan struct{})
	return nil
}
