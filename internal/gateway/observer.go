package gateway

import (
	"errors"
	"time"

	"outpost/internal/metrics"
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

// MetricsSource adapts the server its function returns, which is nil
// until the server first listens, to package metrics' ClientSource and
// AuthSource; the hub and the edge both serve it.
type MetricsSource func() *Server

// ConnectedClients implements metrics.ClientSource.
func (f MetricsSource) ConnectedClients() metrics.Clients {
	s := f()
	if s == nil {
		return metrics.Clients{}
	}
	d, v := s.ConnectedClients()
	return metrics.Clients{Direct: d, ViaEdge: v}
}

// AuthFailures implements metrics.AuthSource.
func (f MetricsSource) AuthFailures() map[string]uint64 {
	s := f()
	if s == nil {
		return nil
	}
	out := make(map[string]uint64)
	for r, n := range s.AuthFailures() {
		out[string(r)] = n
	}
	return out
}
