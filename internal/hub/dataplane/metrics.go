package dataplane

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/gateway"
	"outpost/internal/metrics"
)

// Queue names of the hub's streams in the endpoint label.
const (
	MetricsTelemetry = "telemetry"
	MetricsC2D       = "c2d"
)

// streamInfoTimeout bounds the stream lookups of one scrape, so a slow
// JetStream makes a scrape miss the queues rather than hang.
const streamInfoTimeout = 2 * time.Second

// NewMetrics builds this replica's metrics: the telemetry and C2D
// streams as queues (shared by every replica), and the clients and
// authentication failures of the gateway given to SetGateway (this
// replica's). Pass the result as gateway.Config.Observer too, for PUBACK
// latency and refusals.
func (p *Plane) NewMetrics() (*metrics.Metrics, error) {
	src := metricsSource{p}
	return metrics.New(metrics.Config{Queues: src, Clients: gateway.MetricsSource(p.gw.Load), Auth: gateway.MetricsSource(p.gw.Load), Edges: src, Now: p.now})
}

var _ gateway.Observer = (*metrics.Metrics)(nil)

// MetricsHandler serves m to callers on the loopback interface and to
// holders of a service token, as the REST routes take it: the hub's
// HTTPS listener faces devices, which have no business reading it.
// Prometheus sends a token with
// `authorization: {type: SharedAccessSignature, credentials: "sr=…&sig=…&se=…&skn=…"}`.
func (p *Plane) MetricsHandler(m *metrics.Metrics) http.Handler {
	h := m.Handler()
	authed := p.authed(h.ServeHTTP)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fromLoopback(r) {
			h.ServeHTTP(w, r)
			return
		}
		authed(w, r)
	})
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// metricsSource adapts the plane to internal/metrics' sources.
type metricsSource struct{ p *Plane }

func (s metricsSource) Edges() map[string]metrics.Edge { return s.p.EdgeCounts() }

func (s metricsSource) Queues() []metrics.Queue {
	ctx, cancel := context.WithTimeout(s.p.ctx, streamInfoTimeout)
	defer cancel()
	var out []metrics.Queue
	for _, q := range []struct {
		name   string
		stream jetstream.Stream
	}{{MetricsTelemetry, s.p.tel}, {MetricsC2D, s.p.c2d}} {
		info, err := q.stream.Info(ctx)
		if err != nil {
			s.p.log.Debug("metrics: stream info", "stream", q.name, "error", err)
			continue
		}
		st := info.State
		mq := metrics.Queue{Endpoint: q.name, Length: int64(st.Msgs), Bytes: int64(st.Bytes)}
		if st.Msgs > 0 {
			mq.Oldest = st.FirstTime
		}
		out = append(out, mq)
	}
	return out
}
