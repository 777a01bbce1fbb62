package store

import (
	"context"
	"fmt"

	"outpost/internal/message"
)

// Test hooks: deletions no production caller makes. The edge acks
// through a Reader (Reader.Ack); these name the endpoint, or delete out
// of order, which leaves the holes that expiry also leaves.

// ackEndpoint is Reader.Ack of endpoint's queue.
func (s *Store) ackEndpoint(endpoint string, seq uint64) error {
	s.mu.Lock()
	ep := s.endpoints[endpoint]
	s.mu.Unlock()
	if ep == nil {
		return fmt.Errorf("ack: unknown endpoint %q", endpoint)
	}
	return s.ack(ep, seq)
}

// ackSeqs deletes the given entries of endpoint; sequences already gone
// are ignored.
func (s *Store) ackSeqs(endpoint string, seqs ...uint64) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	s.mu.Lock()
	ep := s.endpoints[endpoint]
	s.mu.Unlock()
	if ep == nil {
		return fmt.Errorf("ack: unknown endpoint %q", endpoint)
	}
	keys := make([][]byte, len(seqs))
	for i, seq := range seqs {
		keys[i] = queueKey(ep.id, seq)
	}
	if err := s.deleteKeys(ep, keys, false); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	return nil
}

// appendOne is AppendRecords of one message.
func (s *Store) appendOne(ctx context.Context, endpoint string, msg *message.Message) (uint64, error) {
	seqs, err := s.AppendRecords(ctx, []Record{{Endpoint: endpoint, Msg: msg}})
	if err != nil {
		return 0, err
	}
	return seqs[0], nil
}
