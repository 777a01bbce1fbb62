package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
	"outpost/internal/metrics"
)

// SetAsideReasons are the reasons a drained message is set aside: the
// hub refused it for good (edgeproto), so sending it again cannot help,
// and holding it would block its queue forever (IoT Edge #5364).
var SetAsideReasons = []string{edgeproto.RefusedNotInScope, edgeproto.RefusedTooLarge, edgeproto.RefusedInvalid}

// setAsideRecent is how many set-aside messages /status lists.
const setAsideRecent = 20

// SetAsideStatus is what /status says of messages set aside.
type SetAsideStatus struct {
	Total    uint64            `json:"total"`
	ByReason map[string]uint64 `json:"byReason"`
	// Recent lists the last ones, newest last.
	Recent []SetAsideEntry `json:"recent,omitempty"`
}

// SetAsideEntry is one message set aside.
type SetAsideEntry struct {
	At        time.Time `json:"at"`
	Endpoint  string    `json:"endpoint"`
	Seq       uint64    `json:"seq"`
	DeviceID  string    `json:"deviceId"`
	ModuleID  string    `json:"moduleId,omitempty"`
	MessageID string    `json:"messageId,omitempty"`
	Reason    string    `json:"reason"`
	Message   string    `json:"message,omitempty"`
}

// setAsides counts the messages the drain set aside, kept in the store
// (kvSetAside) so that the counts survive a restart.
type setAsides struct {
	st  *store.Store
	log *slog.Logger

	// writeMu orders the writes of the record: each is the state after
	// one more entry. Taken before mu.
	writeMu sync.Mutex

	mu sync.Mutex
	// mu guards the following field.
	rec setAsideRecord
}

// setAsideRecord is the stored form. Marks is, per endpoint, the highest
// sequence counted: an entry set aside just before a crash, before its
// ack reached the store, is refused again after the restart and must not
// count twice.
type setAsideRecord struct {
	ByReason map[string]uint64 `json:"byReason"`
	Recent   []SetAsideEntry   `json:"recent,omitempty"`
	Marks    map[string]uint64 `json:"marks"`
}

// load reads the counts kept by an earlier run.
func (s *setAsides) load() error {
	v, err := s.st.Get([]byte(kvSetAside))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read set-aside counts: %w", err)
	}
	var rec setAsideRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		// Only counts are lost: no reason to keep the edge from serving.
		s.log.Error("stored set-aside counts are corrupt; counting from 0", "error", err)
		return nil
	}
	s.mu.Lock()
	s.rec = rec
	s.mu.Unlock()
	return nil
}

// add records one, synced before the drain acks the entry in the store
// (ackLoop calls it first). Set-asides are rare; one write each is
// their whole cost on the drain's ack path.
func (s *setAsides) add(at time.Time, sa SetAside) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	r := &s.rec
	if sa.Seq <= r.Marks[sa.Endpoint] {
		s.mu.Unlock()
		return
	}
	if r.ByReason == nil {
		r.ByReason, r.Marks = map[string]uint64{}, map[string]uint64{}
	}
	r.ByReason[sa.Reason]++
	r.Marks[sa.Endpoint] = sa.Seq
	if len(r.Recent) == setAsideRecent {
		r.Recent = append(r.Recent[:0], r.Recent[1:]...)
	}
	r.Recent = append(r.Recent, SetAsideEntry{
		At: at, Endpoint: sa.Endpoint, Seq: sa.Seq, DeviceID: sa.DeviceID, ModuleID: sa.ModuleID,
		MessageID: sa.MessageID, Reason: sa.Reason, Message: sa.Message,
	})
	b, err := json.Marshal(r)
	s.mu.Unlock()
	if err == nil {
		err = s.st.Put([]byte(kvSetAside), b)
	}
	if err != nil {
		// The count stands in memory; a restart may count it again.
		s.log.Warn("keep set-aside counts", "error", err)
	}
}

func (s *setAsides) status() SetAsideStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SetAsideStatus{ByReason: map[string]uint64{}, Recent: append([]SetAsideEntry(nil), s.rec.Recent...)}
	for _, r := range SetAsideReasons {
		st.ByReason[r] = 0 // every reason shown, as the metric's series are
	}
	for r, n := range s.rec.ByReason {
		st.ByReason[r] = n
		st.Total += n
	}
	return st
}

// dropped adds the set-aside counts to the drop metric, each reason as
// metrics.ReasonSetAsidePrefix + reason.
func (s *setAsides) dropped(into map[string]uint64) {
	st := s.status()
	for r, n := range st.ByReason {
		into[metrics.ReasonSetAsidePrefix+r] = n
	}
}
