package gateway

import (
	"errors"
	"time"
)

// Observer is told of device-endpoint events worth counting, for
// metrics (internal/metrics implements it). Its methods are called on
// connection goroutines, on the path of every message: they must be
// quick and must not block.
type Observer interface {
	// ObservePuback: a PUBACK was written for a QoS 1 publish, latency
	// after its PUBLISH was read. For telemetry that includes the
	// backend's durable commit.
	ObservePuback(latency time.Duration)
	// ObserveAccepted: the backend made n telemetry messages durable.
	ObserveAccepted(n int)
	// ObserveRefused: n telemetry messages were refused, for reason
	// RefusedQuota or RefusedTooLarge.
	ObserveRefused(reason string, n int)
}

// Reasons given to Observer.ObserveRefused.
const (
	RefusedQuota    = "quota"
	RefusedTooLarge = "too_large"
)

// observeRefusal reports a batch the backend refused, if the error says
// why in a way worth counting. A too-large message fails its whole batch,
// but only it was refused: the others are sent again.
func (s *Server) observeRefusal(err error, n int) {
	o := s.cfg.Observer
	if o == nil {
		return
	}
	switch {
	case errors.Is(err, ErrQuotaExceeded):
		o.ObserveRefused(RefusedQuota, n)
	case errors.Is(err, ErrMessageTooLarge):
		o.ObserveRefused(RefusedTooLarge, 1)
	}
}

// ConnectedClients counts the identities connected now: on a connection
// of their own, and reached through an edge connected here.
func (s *Server) ConnectedClients() (direct, viaEdge int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.direct), len(s.viaEdge)
}
