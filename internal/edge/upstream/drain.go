package upstream

import (
	"context"
	"errors"
	"strconv"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/message"
	"outpost/internal/topic"
)

// flight is a drained entry awaiting its PUBACK.
type flight struct {
	seq    uint64
	done   <-chan error
	stored time.Time // zero for dropped entries, which are not forwarded
}

// resolved stands for an entry that needs no PUBACK (it was dropped).
var resolved = func() <-chan error {
	ch := make(chan error, 1)
	ch <- nil
	return ch
}()

// publishLoop reads the queue in stored order and publishes each entry at
// QoS 1. The inflight channel, of capacity Window-1, plus the entry the
// ackLoop waits on, bound the PUBACKs outstanding to Window.
func (s *session) publishLoop(inflight chan<- flight) {
	l := s.l
	batch := min(l.cfg.Window, 256)
	for {
		entries, err := s.next(batch)
		if err != nil {
			if s.ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
				l.log.Warn("upstream drain: read store", "error", err)
			}
			return
		}
		for _, e := range entries {
			t, ok := telemetryTopic(l.cfg.DeviceID, e)
			if !ok {
				// The hub would drop the link over it, again after every
				// reconnect: drop the message instead.
				l.log.Warn("upstream drain: dropping message with invalid identity", "seq", e.Seq,
					"identity", clip(message.ClientID(e.Msg.DeviceID, e.Msg.ModuleID)))
				if !s.push(inflight, flight{seq: e.Seq, done: resolved}) {
					return
				}
				continue
			}
			ch := make(chan error, 1)
			// Queued before it is sent, so the window holds.
			if !s.push(inflight, flight{seq: e.Seq, done: ch, stored: e.StoredAt}) {
				return
			}
			if err := s.c.publish1(t, e.Msg.Body, ch); err != nil {
				return
			}
		}
	}
}

func (s *session) push(inflight chan<- flight, f flight) bool {
	select {
	case inflight <- f:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// next returns the next entries, waiting for a store commit or a Kick.
func (s *session) next(max int) ([]store.Entry, error) {
	l := s.l
	for {
		l.kickMu.Lock()
		l.kicked = false
		l.kickMu.Unlock()
		entries, err := l.reader.TryNext(max)
		if err != nil || len(entries) > 0 {
			return entries, err
		}
		ctx, cancel := context.WithCancel(s.ctx)
		l.kickMu.Lock()
		if l.kicked {
			l.kickMu.Unlock()
			cancel()
			continue
		}
		l.kickCancel = cancel
		l.kickMu.Unlock()
		entries, err = l.reader.Next(ctx, max)
		l.kickMu.Lock()
		l.kickCancel = nil
		l.kickMu.Unlock()
		cancel()
		if errors.Is(err, context.Canceled) && s.ctx.Err() == nil {
			continue // kicked
		}
		return entries, err
	}
}

// ackLoop waits for PUBACKs in publish order and records the highest
// sequence up to which all arrived.
func (s *session) ackLoop(inflight <-chan flight) {
	for {
		var f flight
		select {
		case f = <-inflight:
		case <-s.ctx.Done():
			return
		}
		select {
		case err := <-f.done:
			if err != nil {
				return // the connection ended; the rest is sent again
			}
		case <-s.ctx.Done():
			return
		}
		if o := s.l.cfg.Observer; o != nil && !f.stored.IsZero() {
			o.ObserveForwarded(s.l.now().Sub(f.stored))
		}
		s.drained.Store(f.seq + 1)
		s.pubacks.Add(1)
		select {
		case s.ackWake <- struct{}{}:
		default:
		}
	}
}

// Store acks are batched: each costs a scan of the queue's head, so the
// loop writes one per ackBatch PUBACKs, or ackDelay after the first one
// not yet written. What is not written when the edge crashes is sent
// again, and the hub drops it as a replay.
const ackDelay = 20 * time.Millisecond

// storeAckLoop deletes acknowledged entries from the store. It runs apart
// from ackLoop so that store acks coalesce while PUBACKs keep arriving.
func (s *session) storeAckLoop() {
	batch := uint64(max(s.l.cfg.Window/2, 1))
	var acked, flushedAt uint64 // store mark, and the PUBACK count when written
	timer := time.NewTimer(ackDelay)
	timer.Stop()
	armed := false
	flush := func() {
		if armed {
			timer.Stop()
			armed = false
		}
		flushedAt = s.pubacks.Load()
		acked = s.flushStoreAck(acked)
	}
	for {
		select {
		case <-s.ackWake:
			if s.pubacks.Load()-flushedAt >= batch {
				flush()
			} else if !armed {
				timer.Reset(ackDelay)
				armed = true
			}
		case <-timer.C:
			armed = false
			flush()
		case <-s.ctx.Done():
			timer.Stop()
			return
		}
	}
}

// flushStoreAck acks the store up to what ackLoop recorded, if beyond
// acked, and returns the new mark.
func (s *session) flushStoreAck(acked uint64) uint64 {
	d := s.drained.Load()
	if d <= acked {
		return acked
	}
	if err := s.l.reader.Ack(d - 1); err != nil {
		if !errors.Is(err, store.ErrClosed) {
			s.l.log.Warn("upstream drain: ack store", "error", err)
		}
		return acked
	}
	return d
}

// telemetryTopic is the topic a stored message goes upstream on: its
// device's or module's own telemetry topic, with the edge id and store
// sequence in the bag for the hub's de-duplication.
func telemetryTopic(edgeID string, e store.Entry) (string, bool) {
	m := e.Msg
	if m == nil || !topic.ValidID(m.DeviceID) || (m.ModuleID != "" && !topic.ValidID(m.ModuleID)) {
		return "", false
	}
	bag := topic.FromMessage(m)
	// The gateway stamps these from the identity in the topic.
	delete(bag, message.KeyConnDeviceID)
	delete(bag, message.KeyConnModuleID)
	bag[BagEdgeID] = edgeID
	bag[BagEdgeSeq] = strconv.FormatUint(e.Seq, 10)
	return topic.Telemetry(m.DeviceID, m.ModuleID, bag), true
}
