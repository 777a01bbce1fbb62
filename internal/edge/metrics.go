package edge

import (
	"net/http"

	"outpost/internal/gateway"
	"outpost/internal/metrics"
	"outpost/internal/status"
)

// The edge's metrics are internal/metrics fed by the adapters below: the
// store's queues and usage, the link's state, the gateway's clients and
// authentication failures are read at scrape time; the gateway reports
// PUBACKs and refusals as they happen (gateway.Config.Observer) and the
// link its state changes (metricsLink, from linkChanged).
var _ gateway.Observer = (*metrics.Metrics)(nil)

// newMetrics builds the edge's metrics, read from e at scrape time.
func newMetrics(e *Edge) (*metrics.Metrics, error) {
	src := metricsSource{e}
	return metrics.New(metrics.Config{
		Queues:  src,
		Link:    src,
		Clients: gateway.MetricsSource(e.gw.Load),
		Auth:    gateway.MetricsSource(e.gw.Load),
		Storage: src,
		Drops:   src,
		Certs:   src,
		Now:     e.now,
	})
}

// metricsHandler serves /metrics under the rule of /status: open on the
// loopback interface, else only with the edge device's own SAS token,
// since queue names name modules and devices. Prometheus sends one with
// `authorization: {type: SharedAccessSignature, credentials: "sr=…&sig=…&se=…"}`.
func metricsHandler(e *Edge, m *metrics.Metrics) http.Handler {
	h := m.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !e.statusAllowed(r) {
			status.WriteHTTP(w, errUnauthorized, e.now())
			return
		}
		h.ServeHTTP(w, r)
	})
}

// metricsLink is the link state as internal/metrics sees it.
func metricsLink(s LinkState) metrics.Link {
	return metrics.Link{Connected: s.Connected, Since: s.Since, OfflinePeriods: s.OfflinePeriods, LastOffline: s.LastOffline}
}

// metricsSource adapts the edge to internal/metrics' sources.
type metricsSource struct{ e *Edge }

func (s metricsSource) Queues() []metrics.Queue {
	stats := s.e.st.Stats()
	out := make([]metrics.Queue, 0, len(stats))
	for name, st := range stats {
		out = append(out, metrics.Queue{
			Endpoint: name,
			Length:   st.Len,
			Bytes:    st.Bytes,
			Oldest:   st.Oldest,
			Counters: &metrics.QueueCounters{Stored: st.Stored, Forwarded: st.Forwarded, Expired: st.Expired},
		})
	}
	return out
}

func (s metricsSource) Link() metrics.Link { return metricsLink(s.e.up.State()) }

func (s metricsSource) Storage() metrics.Storage {
	u := s.e.st.Usage()
	return metrics.Storage{Bytes: u.Bytes, MaxBytes: u.MaxBytes, DiskBytes: u.DiskBytes}
}

// Dropped: messages no route took, and those the drain set aside. TTL
// drops come from the queues' own counters, quota and size refusals from
// the gateway's Observer calls.
func (s metricsSource) Dropped() map[string]uint64 {
	d := map[string]uint64{metrics.ReasonNoRoute: s.e.noRoute.Load()}
	s.e.setAside.dropped(d)
	return d
}

func (s metricsSource) Certificates() metrics.Certificates {
	var c metrics.Certificates
	if ca := s.e.ca.Load(); ca != nil {
		c.EdgeCANotAfter = ca.Cert.NotAfter
	}
	if sc := s.e.srvCert.Load(); sc != nil {
		c.ServerNotAfter = sc.cert.Leaf.NotAfter
	}
	return c
}
