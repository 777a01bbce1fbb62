package store

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// The KV API keeps the edge's caches (identities, twins, settings) in the
// same database as its queues, under their own key prefix. KV data does not
// count against the message quota.

func kvKey(key []byte) []byte {
	return append([]byte{prefixKV}, key...)
}

// Put stores value under key, synced.
func (s *Store) Put(key, value []byte) error {
	if len(key) == 0 {
		return errors.New("put: empty key")
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.write(func(db *pebble.DB) error { return db.Set(kvKey(key), value, pebble.Sync) }); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	return nil
}

// KV is one key and value of PutBatch.
type KV struct{ Key, Value []byte }

// PutBatch stores every pair in one synced batch: all of them are
// durable when it returns nil, and none when a power cut comes first.
func (s *Store) PutBatch(kvs ...KV) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	for _, kv := range kvs {
		if len(kv.Key) == 0 {
			return errors.New("put: empty key")
		}
	}
	err := s.write(func(db *pebble.DB) error {
		b := db.NewBatch()
		defer b.Close()
		for _, kv := range kvs {
			if err := b.Set(kvKey(kv.Key), kv.Value, nil); err != nil {
				return err
			}
		}
		return b.Commit(pebble.Sync)
	})
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	return nil
}

// Get returns a copy of the value under key, or ErrNotFound.
func (s *Store) Get(key []byte) ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	v, err := s.get(kvKey(key))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("get: %w", err)
	}
	return v, err
}

// Delete removes key, synced. A missing key is not an error.
func (s *Store) Delete(key []byte) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.write(func(db *pebble.DB) error { return db.Delete(kvKey(key), pebble.Sync) }); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}

// Scan calls fn, in key order, for every key starting with prefix, with
// the key (without the prefix of the KV space) and value. It reads
// everything first, so fn may use the store. An error from fn stops the
// scan and is returned.
func (s *Store) Scan(prefix []byte, fn func(key, value []byte) error) error {
	type kv struct{ k, v []byte }
	var all []kv
	if err := s.enter(); err != nil {
		return err
	}
	err := s.scan(kvKey(prefix), func(k, v []byte) error {
		all = append(all, kv{append([]byte(nil), k[1:]...), append([]byte(nil), v...)})
		return nil
	})
	s.leave()
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	for _, e := range all {
		if err := fn(e.k, e.v); err != nil {
			return err
		}
	}
	return nil
}
