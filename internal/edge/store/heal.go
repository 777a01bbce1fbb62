package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// A write that fails inside Pebble (ENOSPC on the write-ahead log or the
// MANIFEST) makes Pebble call Fatalf, and its commit pipeline is unusable
// from then on: the failed batch stays queued ahead of every later one.
// The store must neither crash the edge nor stay unusable until a
// restart. So every Pebble write goes through write, which recovers the
// Fatalf, marks the store failed and refuses further writes without
// reaching Pebble; healLoop then reopens the database as soon as the disk
// has MinFreeBytes free again, and the store takes writes again. Reopening
// replays the write-ahead log, so everything synced is kept; the
// statistics are rebuilt from what the reopened database holds.
//
// Pebble's own flushes and compactions run on Pebble's goroutines; a
// MANIFEST write failing there cannot be recovered. MinFreeBytes keeps
// room for them: appends stop before the disk is full.

// healInterval is how often a failed store checks whether it can reopen
// its database, so that intake resumes well within a second of space
// being freed.
const healInterval = 100 * time.Millisecond

// write runs one Pebble write on db; the caller is inside enter, or is
// the committer, or is Open. It refuses while the store is failed, and
// turns Pebble's Fatalf into an error that fails the store.
func (s *Store) write(fn func(db *pebble.DB) error) error {
	if err := s.failedErr(); err != nil {
		return err
	}
	err := guard(func() error { return fn(s.db) })
	if f, ok := err.(*fatalError); ok {
		s.fail(f)
		return s.failedErr()
	}
	return pebbleErr(err)
}

// fatalError is Pebble's Fatalf as an error, from guard.
type fatalError struct{ f *pebbleFatal }

func (e *fatalError) Error() string { return e.f.Error() }
func (e *fatalError) Unwrap() error { return e.f }

// guard runs fn and returns Pebble's Fatalf, if fn calls it, as a
// *fatalError. Other panics go on.
func guard(fn func() error) (err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		f, ok := r.(*pebbleFatal)
		if !ok {
			panic(r)
		}
		err = &fatalError{f}
	}()
	return fn()
}

// openDB opens Pebble, which may call Fatalf on a full disk.
func openDB(dir string, opts *pebble.Options) (*pebble.DB, error) {
	var db *pebble.DB
	err := guard(func() error {
		var err error
		db, err = pebble.Open(dir, opts)
		return err
	})
	// Pebble's check of its tables' sizes against the MANIFEST (a
	// truncated table) returns an unmarked error: only its text tells.
	if err != nil && !pebble.IsCorruptionError(err) && strings.Contains(err.Error(), "object size mismatch") {
		err = fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return db, pebbleErr(err)
}

// closeDB closes Pebble, which may call Fatalf after a failed write.
func closeDB(db *pebble.DB) error {
	return pebbleErr(guard(db.Close))
}

// fail marks the store failed by err and asks healLoop to reopen it.
func (s *Store) fail(err error) {
	err = pebbleErr(err)
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
	}
	s.mu.Unlock()
	s.log.Error("store write failed; refusing writes until the database is reopened", "err", err)
	select {
	case s.healKick <- struct{}{}:
	default:
	}
}

// failedErr is the error writes get while the store is failed, or nil.
// It matches ErrDiskFull when the disk was full.
func (s *Store) failedErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil {
		return nil
	}
	return fmt.Errorf("store is reopening its database after a failed write: %w", s.failed)
}

// healLoop reopens the database after a failed write, trying every
// healInterval until it succeeds.
func (s *Store) healLoop(ctx context.Context) {
	defer s.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.healKick:
		}
		t := time.NewTicker(healInterval)
		for {
			err := s.heal()
			if err == nil {
				break
			}
			s.log.Debug("store not reopened yet", "err", err)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		t.Stop()
	}
}

// heal reopens the database of a failed store once the disk has
// MinFreeBytes free, and rebuilds the statistics from it.
func (s *Store) heal() error {
	if s.failedErr() == nil {
		return nil
	}
	// Keep the old database, still readable, until there is room for a
	// new one: Pebble writes a new WAL and MANIFEST when it opens.
	if err := s.checkFree(0); err != nil {
		return err
	}
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.db != nil {
		if err := closeDB(s.db); err != nil {
			s.log.Warn("store: closing the failed database", "err", err)
		}
		s.db = nil
	}
	db, err := openDB(s.cfg.Dir, s.opts)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	s.db = db
	hwm, err := s.readHWM()
	var q queueScan
	if err == nil {
		s.mu.Lock()
		byID := make(map[uint32]*endpoint, len(s.endpoints))
		for _, ep := range s.endpoints {
			byID[ep.id] = ep
		}
		s.mu.Unlock()
		var ok bool
		if q, ok, err = s.loadCounters(byID); err == nil && !ok {
			q, err = s.scanQueues(byID)
		}
	}
	if err != nil {
		_ = closeDB(db)
		s.db = nil
		return fmt.Errorf("reopen: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Everything below the head, and entries of a failed commit that
	// reached the log, are back as they would be after a restart.
	q.apply(s)
	s.nextSeq = max(s.nextSeq, hwm+1, q.maxSeq+1)
	s.failed = nil
	s.reopens++
	for _, ep := range s.endpoints {
		if ep.notify != nil {
			close(ep.notify)
		}
		ep.notify = make(chan struct{})
	}
	close(s.notify)
	s.notify = make(chan struct{})
	s.log.Info("store reopened its database after a failed write", "bytes", s.bytes)
	return nil
}
