package upstream

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"time"

	"outpost/internal/edgeproto"
	"outpost/internal/status"
)

// Presence: the hub shows a local client Connected while it is attached
// (connected to the edge) and the link is up. Each session of the link
// reports over $outpost/req/presence: first the whole attached set
// (full), then what changed, coalesced, so a burst of connects makes one
// or a few requests. Reports run on a goroutine of their own and are
// never stored: while offline only the current set matters, and the next
// session reports it whole. The hub ends the children's Connected itself
// when the link's connection ends.

const (
	// presenceLinger is how long the reporter waits after a change for
	// more, so a burst of connects makes one report.
	presenceLinger = 50 * time.Millisecond
	// presenceChunk bounds the ids in one request, keeping it far below
	// the hub's message size limit (256 KiB; an id is at most 257 bytes).
	presenceChunk = 500
	// presenceRetry is the wait after a report failed on a live link.
	presenceRetry = 5 * time.Second
)

// presenceSet is what the hub should show Connected through the edge:
// the attached clients, but for the edge itself, whose own connection
// the hub records.
func (l *Link) presenceSet() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := make(map[string]bool, len(l.attached))
	for cid, a := range l.attached {
		if a.moduleID != "" || a.deviceID != l.cfg.DeviceID {
			set[cid] = true
		}
	}
	return set
}

// reportPresence tells the hub the attached set, then its changes, until
// the session ends.
func (s *session) reportPresence() {
	l := s.l
	var told map[string]bool // nil until the full report went through
	for {
		want := l.presenceSet()
		var err error
		if told == nil {
			if err = s.sendPresence(true, slices.Sorted(maps.Keys(want)), nil); err == nil {
				told = want
			}
		} else {
			var on, off []string
			for cid := range want {
				if !told[cid] {
					on = append(on, cid)
				}
			}
			for cid := range told {
				if !want[cid] {
					off = append(off, cid)
				}
			}
			if len(on)+len(off) > 0 {
				slices.Sort(on)
				slices.Sort(off)
				if err = s.sendPresence(false, on, off); err == nil {
					told = want
				}
			}
		}
		var wait time.Duration
		if err != nil {
			if s.ctx.Err() != nil || s.c.Err() != nil {
				return
			}
			var se *status.Error
			if errors.As(err, &se) && se.Status == http.StatusNotFound {
				l.log.Info("the hub takes no presence reports: it shows the edge's clients Disconnected", "error", err)
				return
			}
			// A report is idempotent: the next one sends the same again.
			l.log.Warn("presence report failed; retrying", "error", err, "in", presenceRetry)
			wait = presenceRetry
		} else {
			select {
			case <-l.presenceChanged:
			case <-s.ctx.Done():
				return
			}
			wait = presenceLinger
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return
		}
	}
}

// sendPresence sends a report in requests of at most presenceChunk ids,
// the last one marked full if full is set.
func (s *session) sendPresence(full bool, on, off []string) error {
	for {
		var r edgeproto.PresenceReport
		n := min(len(on), presenceChunk)
		r.Connected, on = on[:n], on[n:]
		n = min(len(off), presenceChunk-len(r.Connected))
		r.Disconnected, off = off[:n], off[n:]
		r.Full = full && len(on)+len(off) == 0
		body, err := json.Marshal(r)
		if err != nil {
			return err
		}
		rep, err := s.request(s.ctx, edgeproto.ResFilter, extRequest(edgeproto.ReqPresence), body)
		if err != nil {
			return err
		}
		if rep.status != http.StatusOK {
			return status.FromMQTT(rep.status, rep.body)
		}
		var res edgeproto.PresenceReply
		if json.Unmarshal(rep.body, &res) == nil && len(res.Refused) > 0 {
			s.l.log.Warn("the hub refused presence of clients outside the edge's scope",
				"count", len(res.Refused), "first", clip(res.Refused[0]))
		}
		if len(on)+len(off) == 0 {
			return nil
		}
	}
}
