package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/mqttwire"
	"outpost/internal/status"
	"outpost/internal/topic"
)

// flight is a drained entry awaiting its PUBACK.
type flight struct {
	endpoint string
	seq      uint64
	msg      *message.Message
	done     <-chan error
	stored   time.Time
}

// refusedNow is the outcome of an entry the drain sets aside without
// sending it: the hub would drop the link over it, again after every
// reconnect.
func refusedNow(reason, msg string) <-chan error {
	ch := make(chan error, 1)
	ch <- &PermanentRefusal{Reason: reason, Message: msg}
	return ch
}

// initialWindow is the drain's window on a new connection. It grows by
// one per PUBACK (doubling each round trip) up to Config.Window: a link
// that resets every few tens of KiB then spends its bytes on messages
// the hub acks, not on a burst of 2,048 sent again after the reset.
const initialWindow = 64

// publishLoop reads the queues, a batch of one queue at a time, highest
// priority first and each in stored order, and publishes each entry at
// QoS 1. Each entry takes a credit (see initialWindow), which ackLoop
// returns with its PUBACK: the PUBACKs outstanding are at most the
// credits given, never over Window (the inflight channel, of capacity
// Window-1, plus the entry the ackLoop waits on).
func (s *session) publishLoop(inflight chan<- flight) {
	l := s.l
	// Smaller than the window, so a high-priority entry waits behind at
	// most one low-priority batch plus what is in flight.
	batch := min(l.cfg.Window, 256)
	if !s.agreePosition() {
		return
	}
	// Routes may have changed while the link was down.
	if err := l.relist(); err != nil {
		return
	}
	storeID := l.cfg.Store.ID()
	for {
		entries, err := s.next(batch)
		if err != nil {
			if s.ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
				l.log.Warn("upstream drain: read store", "error", err)
			}
			return
		}
		for _, e := range entries {
			f := flight{endpoint: e.Endpoint, seq: e.Seq, msg: e.Msg, stored: e.StoredAt}
			t, err := telemetryTopic(l.cfg.DeviceID, storeID, e)
			switch {
			case errors.Is(err, errInvalidIdentity):
				f.done = refusedNow(edgeproto.RefusedInvalid, "not a valid device or module id")
			case err != nil:
				f.done = refusedNow(edgeproto.RefusedTooLarge, err.Error())
			case publishSize(t, e.Msg.Body) > maxPacket:
				// The hub reads no further than the fixed header of a
				// packet over its limit (the same as this link's) and
				// can only drop the connection.
				f.done = refusedNow(edgeproto.RefusedTooLarge, fmt.Sprintf("a packet of %d bytes, over the hub's limit of %d", publishSize(t, e.Msg.Body), maxPacket))
			}
			if f.done != nil {
				if !s.push(inflight, f) {
					return
				}
				continue
			}
			ch := make(chan error, 1)
			f.done = ch
			// Queued before it is sent, so the window holds.
			if !s.push(inflight, f) {
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
	case <-s.credits:
	case <-s.ctx.Done():
		return false
	}
	select {
	case inflight <- f:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// credit returns the credit of an acked entry, and grows the window by
// one until it reaches Config.Window. Only ackLoop calls it.
func (s *session) credit() {
	n := 1
	if s.window < s.l.cfg.Window {
		s.window++
		n = 2
	}
	for range n {
		s.credits <- struct{}{} // capacity Window: never blocks
	}
}

// next returns the next entries of the highest-priority queue that has
// any, waiting for a store commit or a Kick; after a Kick it lists the
// queues again.
func (s *session) next(max int) ([]store.Entry, error) {
	l := s.l
	for {
		l.kickMu.Lock()
		kicked := l.kicked
		l.kicked = false
		l.kickMu.Unlock()
		if kicked {
			if err := l.relist(); err != nil {
				return nil, err
			}
		}
		ctx, cancel := context.WithCancel(s.ctx)
		l.kickMu.Lock()
		if l.kicked {
			// Kicked while listing: look once without waiting, then list
			// again. Entries present are returned even so, so a stream
			// of kicks cannot hold the drain up.
			cancel()
		} else {
			l.kickCancel = cancel
		}
		l.kickMu.Unlock()
		entries, err := l.cfg.Store.NextByPriority(ctx, l.active, max)
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

// relist makes the drain read the endpoints Config.Endpoints lists,
// opening readers for new ones. It runs on the publish goroutine.
func (l *Link) relist() error {
	names := []string{Endpoint}
	if l.cfg.Endpoints != nil {
		if n := l.cfg.Endpoints(); len(n) > 0 {
			names = n
		}
	}
	active := make([]*store.Reader, 0, len(names))
	seen := make(map[string]bool, len(names))
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		l.readersMu.Lock()
		r := l.readers[name]
		l.readersMu.Unlock()
		if r == nil {
			var err error
			r, err = l.cfg.Store.NewReader(name)
			if errors.Is(err, store.ErrClosed) {
				return err
			}
			if err != nil {
				if !l.refused[name] {
					l.refused[name] = true
					l.log.Warn("upstream drain: cannot read store endpoint", "endpoint", clip(name), "error", err)
				}
				continue
			}
			l.readersMu.Lock()
			l.readers[name] = r
			l.readersMu.Unlock()
		}
		active = append(active, r)
	}
	if len(active) == 0 {
		// NextByPriority needs a reader; the default one always exists.
		l.readersMu.Lock()
		active = append(active, l.readers[Endpoint])
		l.readersMu.Unlock()
	}
	l.active = active
	return nil
}

// reader returns the reader of endpoint, or nil.
func (l *Link) reader(endpoint string) *store.Reader {
	l.readersMu.Lock()
	defer l.readersMu.Unlock()
	return l.readers[endpoint]
}

// rewind makes every reader start again at its first entry not yet
// acked; the session's goroutines have ended.
func (l *Link) rewind() {
	l.readersMu.Lock()
	defer l.readersMu.Unlock()
	for _, r := range l.readers {
		r.Rewind()
	}
}

// ackLoop waits for PUBACKs in publish order and records, per endpoint,
// the highest sequence up to which all arrived. The mark is cumulative:
// PUBACKs are awaited in publish order, and one endpoint's entries go out
// in sequence order, so every entry of it below the mark was acked.
func (s *session) ackLoop(inflight <-chan flight) {
	for {
		var f flight
		select {
		case f = <-inflight:
		case <-s.ctx.Done():
			return
		}
		var refusal *PermanentRefusal
		select {
		case err := <-f.done:
			if err != nil && !errors.As(err, &refusal) {
				return // the connection ended; the rest is sent again
			}
		case <-s.ctx.Done():
			return
		}
		if refusal != nil {
			s.setAside(f, refusal)
		} else if o := s.l.cfg.Observer; o != nil {
			o.ObserveForwarded(s.l.now().Sub(f.stored))
		}
		s.ackMu.Lock()
		s.drained[f.endpoint] = f.seq + 1
		s.ackMu.Unlock()
		s.pubacks.Add(1)
		s.credit()
		select {
		case s.ackWake <- struct{}{}:
		default:
		}
	}
}

// setAside reports an entry refused for good, once. It is acked in the
// store as if delivered, so the drain goes on past it. Only ackLoop calls
// it, and sessions do not overlap.
func (s *session) setAside(f flight, r *PermanentRefusal) {
	s.l.readersMu.Lock()
	again := f.seq <= s.l.setAsideTo[f.endpoint]
	s.l.setAsideTo[f.endpoint] = max(s.l.setAsideTo[f.endpoint], f.seq)
	s.l.readersMu.Unlock()
	if again {
		return
	}
	sa := SetAside{Endpoint: f.endpoint, Seq: f.seq, Reason: r.Reason, Message: r.Message}
	if f.msg != nil {
		sa.DeviceID, sa.ModuleID, sa.MessageID = f.msg.DeviceID, f.msg.ModuleID, f.msg.System.MessageID
	}
	s.l.log.Warn("upstream drain: message refused for good; set aside", "endpoint", clip(f.endpoint), "seq", f.seq,
		"identity", clip(message.ClientID(sa.DeviceID, sa.ModuleID)), "messageId", clip(sa.MessageID), "reason", r.Reason, "error", clip(r.Message))
	if fn := s.l.cfg.OnSetAside; fn != nil {
		fn(sa)
	}
}

// publishSize is the size of a QoS 1 PUBLISH of topic and body as the
// hub's MQTT server holds it against its limit: the remaining length
// plus one.
func publishSize(topic string, body []byte) int { return 1 + 2 + len(topic) + 2 + len(body) }

// Store acks are batched: each costs a scan of the queue's head, so the
// loop writes one per ackBatch PUBACKs, or ackDelay after the first one
// not yet written. What is not written when the edge crashes is sent
// again, and the hub drops it as a replay.
const ackDelay = 20 * time.Millisecond

// storeAckLoop deletes acknowledged entries from the store. It runs apart
// from ackLoop so that store acks coalesce while PUBACKs keep arriving.
func (s *session) storeAckLoop() {
	batch := uint64(max(s.l.cfg.Window/2, 1))
	var flushedAt uint64 // the PUBACK count when last written
	timer := time.NewTimer(ackDelay)
	timer.Stop()
	armed := false
	flush := func() {
		if armed {
			timer.Stop()
			armed = false
		}
		flushedAt = s.pubacks.Load()
		s.flushStoreAck()
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

// flushStoreAck acks each endpoint in the store up to what ackLoop
// recorded, where beyond what it acked before. Only storeAckLoop, and stop
// once it ended, call it.
func (s *session) flushStoreAck() {
	s.ackMu.Lock()
	type mark struct {
		endpoint string
		next     uint64
	}
	marks := make([]mark, 0, len(s.drained))
	for ep, d := range s.drained {
		if d > s.storeAcked[ep] {
			marks = append(marks, mark{ep, d})
		}
	}
	s.ackMu.Unlock()
	for _, m := range marks {
		r := s.l.reader(m.endpoint)
		if r == nil {
			continue // cannot be: entries come from the link's readers
		}
		if err := r.Ack(m.next - 1); err != nil {
			if !errors.Is(err, store.ErrClosed) {
				s.l.log.Warn("upstream drain: ack store", "endpoint", m.endpoint, "error", err)
			}
			continue
		}
		s.storeAcked[m.endpoint] = m.next
	}
}

// telemetryTopic is the topic a stored message goes upstream on: its
// device's or module's own telemetry topic, with the edge id and the
// entry's replay key in the bag for the hub's de-duplication. It is not
// ok for a message no PUBLISH can carry.
func telemetryTopic(edgeID, storeID string, e store.Entry) (string, error) {
	return replayTopic(edgeID, e.Msg, edgeproto.ReplayKey{StoreID: storeID, Seq: e.Seq, StoredAt: e.StoredAt.UnixNano()})
}

// errInvalidIdentity is replayTopic's error for a message whose ids
// cannot be in a topic; any other error is properties too long for one.
var errInvalidIdentity = errors.New("invalid identity")

func replayTopic(edgeID string, m *message.Message, k edgeproto.ReplayKey) (string, error) {
	if m == nil || !topic.ValidID(m.DeviceID) || (m.ModuleID != "" && !topic.ValidID(m.ModuleID)) {
		return "", errInvalidIdentity
	}
	bag := topic.FromMessage(m)
	// The gateway stamps these from the identity in the topic.
	delete(bag, message.KeyConnDeviceID)
	delete(bag, message.KeyConnModuleID)
	k.Put(bag, edgeID)
	t := topic.Telemetry(m.DeviceID, m.ModuleID, bag)
	if err := mqttwire.CheckPublish(t, m.Body); err != nil {
		return "", fmt.Errorf("properties too long to forward: %w", err)
	}
	return t, nil
}

// CheckForwardable reports whether m, stored by the edge edgeID in the
// store storeID, can go upstream: its properties and the replay key the
// drain adds must fit a PUBLISH's topic. The edge refuses at intake what
// cannot, rather than acknowledge a message that would stop the drain.
func CheckForwardable(edgeID, storeID string, m *message.Message) error {
	// The longest replay key: the drain's is no longer.
	_, err := replayTopic(edgeID, m, edgeproto.ReplayKey{StoreID: storeID, Seq: math.MaxUint64, StoredAt: math.MinInt64})
	return err
}

// agreePosition tells the hub where the store's sequence stands and
// moves it past every sequence of this store the hub has stored, before
// anything is drained on this connection. A restored or copied store
// would otherwise number new entries as the hub has seen them already
// (their stored times still tell them apart, see edgeproto). A hub that
// does not know the request is drained to regardless; a failed request
// ends the connection, so the next one asks again.
func (s *session) agreePosition() bool {
	l := s.l
	st := l.cfg.Store
	pos := edgeproto.StorePosition{StoreID: st.ID(), Next: st.NextSeq()}
	body, err := json.Marshal(pos)
	if err != nil {
		return false // cannot be: two plain fields
	}
	r, err := s.request(s.ctx, edgeproto.ResFilter, extRequest(edgeproto.ReqStorePosition), body)
	if err == nil && r.status == http.StatusNotFound {
		l.log.Warn("the hub does not take store positions; a restored or copied store relies on stored times alone")
		return true
	}
	var rep edgeproto.StorePositionReply
	if err == nil && r.status != http.StatusOK {
		err = status.FromMQTT(r.status, r.body)
	}
	if err == nil {
		if err = json.Unmarshal(r.body, &rep); err != nil {
			err = fmt.Errorf("store position reply: %w", err)
		}
	}
	if err != nil {
		if s.ctx.Err() == nil {
			l.log.Warn("upstream store position failed; reconnecting", "error", err)
			s.c.close(false)
		}
		return false
	}
	st.AdvanceSeq(rep.Next)
	if rep.Behind {
		l.log.Warn("the hub has stored sequences of this store that it no longer holds (restored from a backup, or copied); it continues past them",
			"store", pos.StoreID, "next", pos.Next, "hub_next", rep.Next)
	}
	return true
}
