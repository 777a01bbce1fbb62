package edge

import (
	"sync"
	"time"

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

// setAsides counts the messages the drain set aside since start.
type setAsides struct {
	mu sync.Mutex
	// mu guards the following fields.
	byReason map[string]uint64
	recent   []SetAsideEntry
}

// add records one; it runs on the drain's ack path and must be quick.
func (s *setAsides) add(at time.Time, sa SetAside) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byReason == nil {
		s.byReason = map[string]uint64{}
	}
	s.byReason[sa.Reason]++
	if len(s.recent) == setAsideRecent {
		s.recent = append(s.recent[:0], s.recent[1:]...)
	}
	s.recent = append(s.recent, SetAsideEntry{
		At: at, Endpoint: sa.Endpoint, Seq: sa.Seq, DeviceID: sa.DeviceID, ModuleID: sa.ModuleID,
		MessageID: sa.MessageID, Reason: sa.Reason, Message: sa.Message,
	})
}

func (s *setAsides) status() SetAsideStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SetAsideStatus{ByReason: map[string]uint64{}, Recent: append([]SetAsideEntry(nil), s.recent...)}
	for _, r := range SetAsideReasons {
		st.ByReason[r] = 0 // every reason shown, as the metric's series are
	}
	for r, n := range s.byReason {
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
