// Package metrics is the one place that names Outpost's Prometheus
// metrics, for the hub and the edge alike, and serves them on /metrics.
//
// Two kinds of value feed it. State (queues, the upstream link, connected
// clients, authentication failures, storage) is read from small source
// interfaces at scrape time, so there is nothing to keep in step and a
// scrape always sees the truth. Events (a PUBACK written, a message
// forwarded upstream, a link coming back) are observed as they happen,
// because a latency or an offline period cannot be read back afterwards.
//
// The package imports neither gateway, edge nor hub: it declares what it
// needs, and those packages adapt to it. Each process builds its own
// registry; nothing is registered with Prometheus' global default.
package metrics

import (
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "outpost"

// Metric names. Dashboards and alerts depend on them: change with care.
const (
	NameQueueLength    = Namespace + "_queue_length"
	NameQueueBytes     = Namespace + "_queue_bytes"
	NameQueueOldestAge = Namespace + "_queue_oldest_age_seconds"
	NameStored         = Namespace + "_messages_stored_total"
	NameForwarded      = Namespace + "_messages_forwarded_total"
	NameDropped        = Namespace + "_messages_dropped_total"
	NameReceived       = Namespace + "_messages_received_total"

	NameLinkConnected      = Namespace + "_upstream_connected"
	NameLinkSince          = Namespace + "_upstream_last_change_timestamp_seconds"
	NameLinkOfflinePeriods = Namespace + "_upstream_offline_periods_total"
	NameLinkOfflineNow     = Namespace + "_upstream_offline_seconds"
	NameLinkOfflineHist    = Namespace + "_upstream_offline_duration_seconds"
	NameDrainRate          = Namespace + "_upstream_drain_rate"

	NameConnectedClients = Namespace + "_connected_clients"
	NameAuthFailures     = Namespace + "_auth_failures_total"

	NameStorageBytes     = Namespace + "_storage_bytes"
	NameStorageMaxBytes  = Namespace + "_storage_max_bytes"
	NameStorageDiskBytes = Namespace + "_storage_disk_bytes"

	NameEdgeCAExpiry         = Namespace + "_edge_ca_expiry_timestamp_seconds"
	NameEdgeServerCertExpiry = Namespace + "_edge_server_cert_expiry_timestamp_seconds"

	NameEdgeDuplicates   = Namespace + "_hub_edge_duplicates_total"
	NameEdgeStoreRewinds = Namespace + "_hub_edge_store_rewinds_total"

	NamePubackLatency  = Namespace + "_puback_latency_seconds"
	NameForwardLatency = Namespace + "_forward_latency_seconds"
)

// Label names.
const (
	LabelEndpoint = "endpoint"
	LabelReason   = "reason"
	LabelVia      = "via"
	LabelEdge     = "edge"
)

// Reasons a message is dropped (label reason of NameDropped). Quota and
// too-large messages are refused at intake: the device gets no PUBACK
// (MQTT) or an error status (HTTPS) and may send again later.
const (
	ReasonTTL      = "ttl"       // expired in a queue before it was forwarded
	ReasonQuota    = "quota"     // refused: the store was full
	ReasonNoRoute  = "no_route"  // no route took it
	ReasonTooLarge = "too_large" // refused: larger than the message size limit
	// ReasonSetAsidePrefix + an edgeproto.Refused* name: a message the
	// edge's drain set aside because the hub refused it for good.
	ReasonSetAsidePrefix = "set_aside_"
)

// Values of label via of NameConnectedClients.
const (
	ViaDirect = "direct" // a client on its own connection
	ViaEdge   = "edge"   // a client an edge acts for
)

// DrainWindow is the span NameDrainRate averages over.
const DrainWindow = drainBuckets * time.Second

// Queue is one queue as seen at scrape time.
type Queue struct {
	Endpoint string
	Length   int64
	Bytes    int64
	// Oldest is when the head of the queue was stored; zero when empty.
	Oldest time.Time
	// Counters is nil when the source does not count per queue.
	Counters *QueueCounters
}

// QueueCounters count since the process started.
type QueueCounters struct {
	Stored    uint64
	Forwarded uint64
	Expired   uint64
}

// Link is the upstream link as seen at scrape time, or as reported on a
// change (ObserveLink).
type Link struct {
	Connected bool
	// Since is when Connected last changed; zero if never.
	Since time.Time
	// OfflinePeriods counts losses of an established link.
	OfflinePeriods int
	// LastOffline is how long the last completed offline period lasted.
	LastOffline time.Duration
}

// Edge is what the hub counts of one edge's drains.
type Edge struct {
	// Duplicates are replays of messages already stored, dropped.
	Duplicates uint64
	// StoreRewinds count connects of the edge whose store was behind
	// what the hub had stored from it: a backup restored, or a copy.
	StoreRewinds uint64
}

// Clients counts the connected clients.
type Clients struct {
	Direct  int
	ViaEdge int
}

// Storage is the store's size against its quota.
type Storage struct {
	Bytes     int64
	MaxBytes  int64 // 0: no quota
	DiskBytes uint64
}

// Certificates are an edge's TLS identity; a zero time is left out.
type Certificates struct {
	EdgeCANotAfter time.Time
	ServerNotAfter time.Time
}

// Sources read at scrape time. Each is one method, called without locks
// held by this package; they must be quick and safe for concurrent use.
type (
	QueueSource   interface{ Queues() []Queue }
	LinkSource    interface{ Link() Link }
	ClientSource  interface{ ConnectedClients() Clients }
	AuthSource    interface{ AuthFailures() map[string]uint64 }
	StorageSource interface{ Storage() Storage }
	// DropSource reports drops the source counts itself, by reason (for
	// the edge: no_route). TTL drops of queues with Counters, and refusals
	// observed with ObserveRefused, are added to these.
	DropSource interface{ Dropped() map[string]uint64 }
	// EdgeSource reports the hub's counts per edge id.
	EdgeSource interface{ Edges() map[string]Edge }
	// CertSource reports an edge's certificate expiries.
	CertSource interface{ Certificates() Certificates }
)

// Config says what a process has to report. A nil source leaves its
// metrics out: the hub has no upstream link and no drop source.
type Config struct {
	Queues  QueueSource
	Link    LinkSource
	Clients ClientSource
	Auth    AuthSource
	Storage StorageSource
	Drops   DropSource
	Edges   EdgeSource
	Certs   CertSource
	// Now is the clock for ages and the drain rate. Default time.Now.
	Now func() time.Time
	// NoProcessMetrics leaves out the Go runtime and process collectors
	// (go_*, process_*), which tests do not want.
	NoProcessMetrics bool
}

// Metrics holds one process's registry and event-time metrics. Its
// Observe methods are safe for concurrent use and never block on I/O.
type Metrics struct {
	cfg Config
	reg *prometheus.Registry
	d   descs

	puback  prometheus.Histogram
	forward prometheus.Histogram
	offline prometheus.Histogram

	received atomic.Uint64

	// mu guards the following fields.
	mu           sync.Mutex
	refused      map[string]uint64
	wasConnected bool
	drain        [drainBuckets]drainBucket
}

// drainBuckets is the number of one-second buckets in DrainWindow.
const drainBuckets = 60

// drainBucket counts the messages forwarded in one second.
type drainBucket struct {
	sec int64
	n   uint64
}

// descs are the descriptors of the scrape-time metrics.
type descs struct {
	queueLength, queueBytes, queueOldest  *prometheus.Desc
	stored, forwarded, dropped, received  *prometheus.Desc
	linkConnected, linkSince, linkPeriods *prometheus.Desc
	linkOfflineNow, drainRate             *prometheus.Desc
	clients, authFailures                 *prometheus.Desc
	storageBytes, storageMax, storageDisk *prometheus.Desc
	edgeDuplicates, edgeStoreRewinds      *prometheus.Desc
	edgeCAExpiry, serverCertExpiry        *prometheus.Desc
}

func newDescs() descs {
	ep := []string{LabelEndpoint}
	return descs{
		queueLength: prometheus.NewDesc(NameQueueLength, "Messages waiting in the queue of an endpoint.", ep, nil),
		queueBytes:  prometheus.NewDesc(NameQueueBytes, "Bytes of the messages waiting in the queue of an endpoint.", ep, nil),
		queueOldest: prometheus.NewDesc(NameQueueOldestAge, "Age of the oldest message in the queue of an endpoint; 0 when empty.", ep, nil),
		stored:      prometheus.NewDesc(NameStored, "Messages stored in the queue of an endpoint.", ep, nil),
		forwarded:   prometheus.NewDesc(NameForwarded, "Messages forwarded from the queue of an endpoint and acknowledged by the receiver (the hub for $upstream, a module or device for local endpoints).", ep, nil),
		dropped:     prometheus.NewDesc(NameDropped, "Messages dropped or refused, by reason: ttl (expired in a queue), quota (store full), no_route, too_large; on an edge also set_aside_{not_in_scope,too_large,invalid} (refused for good by the hub, set aside so the drain goes on).", []string{LabelReason}, nil),
		received:    prometheus.NewDesc(NameReceived, "Telemetry messages the device endpoint accepted and made durable.", nil, nil),

		linkConnected:  prometheus.NewDesc(NameLinkConnected, "1 while the upstream link is connected, else 0.", nil, nil),
		linkSince:      prometheus.NewDesc(NameLinkSince, "When the upstream link last connected or disconnected, as a Unix time.", nil, nil),
		linkPeriods:    prometheus.NewDesc(NameLinkOfflinePeriods, "Losses of an established upstream link.", nil, nil),
		linkOfflineNow: prometheus.NewDesc(NameLinkOfflineNow, "How long the upstream link has been down; 0 while connected.", nil, nil),
		drainRate:      prometheus.NewDesc(NameDrainRate, "Messages forwarded upstream per second, averaged over the last minute.", nil, nil),

		clients:      prometheus.NewDesc(NameConnectedClients, "Connected clients: on their own connection (via=direct) or through an edge (via=edge).", []string{LabelVia}, nil),
		authFailures: prometheus.NewDesc(NameAuthFailures, "Failed authentications, by reason.", []string{LabelReason}, nil),

		storageBytes: prometheus.NewDesc(NameStorageBytes, "Bytes of stored messages, as the storage quota counts them.", nil, nil),
		storageMax:   prometheus.NewDesc(NameStorageMaxBytes, "The storage quota in bytes.", nil, nil),
		storageDisk:  prometheus.NewDesc(NameStorageDiskBytes, "Bytes the store's files take on disk.", nil, nil),

		edgeDuplicates:   prometheus.NewDesc(NameEdgeDuplicates, "Messages an edge sent again that the hub had stored already, dropped as duplicates.", []string{LabelEdge}, nil),
		edgeStoreRewinds: prometheus.NewDesc(NameEdgeStoreRewinds, "Connects of an edge whose store was behind what the hub had stored from it (restored from a backup, or copied).", []string{LabelEdge}, nil),

		edgeCAExpiry:     prometheus.NewDesc(NameEdgeCAExpiry, "When the edge CA expires, as a Unix time; the edge cannot renew its server certificate past it.", nil, nil),
		serverCertExpiry: prometheus.NewDesc(NameEdgeServerCertExpiry, "When the edge's current server certificate expires, as a Unix time; the edge issues the next one after two thirds of its life.", nil, nil),
	}
}

// New builds the registry for one process.
func New(cfg Config) (*Metrics, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Metrics{
		cfg:     cfg,
		reg:     prometheus.NewRegistry(),
		d:       newDescs(),
		refused: map[string]uint64{},
		puback: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: NamePubackLatency,
			Help: "Time from reading a QoS 1 PUBLISH to writing its PUBACK, which waits for the message to be durable.",
			// 250 µs to about 8 s: a synced group commit takes a few ms.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
		}),
		forward: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: NameForwardLatency,
			Help: "Time from storing a message at the edge to the hub's PUBACK for it, offline time included.",
			// 1 ms to 7 days: a backlog drained after a long outage is
			// as much the point as the online case.
			Buckets: prometheus.ExponentialBucketsRange(0.001, 7*24*3600, 24),
		}),
		offline: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    NameLinkOfflineHist,
			Help:    "Durations of completed upstream offline periods.",
			Buckets: prometheus.ExponentialBucketsRange(1, 7*24*3600, 16),
		}),
	}
	cs := []prometheus.Collector{collector{m}, m.puback}
	if cfg.Link != nil {
		cs = append(cs, m.forward, m.offline)
	}
	if !cfg.NoProcessMetrics {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("register metrics"), err)
		}
	}
	return m, nil
}

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// ObservePuback records one PUBACK written, latency after its PUBLISH
// was read. It and the two below make Metrics a gateway.Observer.
func (m *Metrics) ObservePuback(latency time.Duration) { m.puback.Observe(latency.Seconds()) }

// ObserveAccepted records n telemetry messages made durable at intake.
func (m *Metrics) ObserveAccepted(n int) {
	if n > 0 {
		m.received.Add(uint64(n))
	}
}

// ObserveRefused records n messages refused at intake (ReasonQuota,
// ReasonTooLarge).
func (m *Metrics) ObserveRefused(reason string, n int) {
	if n <= 0 {
		return
	}
	m.mu.Lock()
	m.refused[reason] += uint64(n)
	m.mu.Unlock()
}

// ObserveForwarded records one message forwarded upstream and
// acknowledged by the hub, latency after it was stored at the edge.
func (m *Metrics) ObserveForwarded(latency time.Duration) {
	m.forward.Observe(max(latency, 0).Seconds())
	sec := m.cfg.Now().Unix()
	m.mu.Lock()
	b := &m.drain[uint64(sec)%drainBuckets]
	if b.sec != sec {
		b.sec, b.n = sec, 0
	}
	b.n++
	m.mu.Unlock()
}

// ObserveLink records a change of the upstream link: when it comes back,
// the offline period just ended goes into the offline histogram. It is
// meant for the link's state callback and may see the same state twice.
func (m *Metrics) ObserveLink(l Link) {
	m.mu.Lock()
	back := l.Connected && !m.wasConnected && l.OfflinePeriods > 0
	m.wasConnected = l.Connected
	m.mu.Unlock()
	if back {
		m.offline.Observe(l.LastOffline.Seconds())
	}
}

// drainRate is the messages per second forwarded over the last
// DrainWindow, the current second included.
func (m *Metrics) drainRate() float64 {
	now := m.cfg.Now().Unix()
	var n uint64
	m.mu.Lock()
	for _, b := range m.drain {
		if b.sec > now-drainBuckets && b.sec <= now {
			n += b.n
		}
	}
	m.mu.Unlock()
	return float64(n) / DrainWindow.Seconds()
}

// collector reads the sources at scrape time.
type collector struct{ m *Metrics }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	d := c.m.d
	for _, x := range []*prometheus.Desc{
		d.queueLength, d.queueBytes, d.queueOldest, d.stored, d.forwarded, d.dropped, d.received,
		d.linkConnected, d.linkSince, d.linkPeriods, d.linkOfflineNow, d.drainRate,
		d.clients, d.authFailures, d.storageBytes, d.storageMax, d.storageDisk,
		d.edgeDuplicates, d.edgeStoreRewinds, d.edgeCAExpiry, d.serverCertExpiry,
	} {
		ch <- x
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m, d, cfg := c.m, c.m.d, c.m.cfg
	now := cfg.Now()
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}

	// Every reason is always present, so rate() and alerts see 0, not
	// a missing series, until the first drop.
	dropped := map[string]uint64{ReasonTTL: 0, ReasonQuota: 0, ReasonNoRoute: 0, ReasonTooLarge: 0}
	if cfg.Queues != nil {
		for _, q := range cfg.Queues.Queues() {
			gauge(d.queueLength, float64(q.Length), q.Endpoint)
			gauge(d.queueBytes, float64(q.Bytes), q.Endpoint)
			var age float64
			if !q.Oldest.IsZero() {
				age = max(now.Sub(q.Oldest).Seconds(), 0)
			}
			gauge(d.queueOldest, age, q.Endpoint)
			if q.Counters != nil {
				counter(d.stored, float64(q.Counters.Stored), q.Endpoint)
				counter(d.forwarded, float64(q.Counters.Forwarded), q.Endpoint)
				dropped[ReasonTTL] += q.Counters.Expired
			}
		}
	}
	if cfg.Drops != nil {
		for r, n := range cfg.Drops.Dropped() {
			dropped[r] += n
		}
	}
	m.mu.Lock()
	for r, n := range m.refused {
		dropped[r] += n
	}
	m.mu.Unlock()
	for r, n := range dropped {
		counter(d.dropped, float64(n), r)
	}
	counter(d.received, float64(m.received.Load()))

	if cfg.Link != nil {
		l := cfg.Link.Link()
		var up, offline float64
		if l.Connected {
			up = 1
		} else if !l.Since.IsZero() {
			offline = max(now.Sub(l.Since).Seconds(), 0)
		}
		gauge(d.linkConnected, up)
		if !l.Since.IsZero() {
			gauge(d.linkSince, float64(l.Since.UnixNano())/1e9)
		}
		counter(d.linkPeriods, float64(l.OfflinePeriods))
		gauge(d.linkOfflineNow, offline)
		gauge(d.drainRate, m.drainRate())
	}
	if cfg.Clients != nil {
		n := cfg.Clients.ConnectedClients()
		gauge(d.clients, float64(n.Direct), ViaDirect)
		gauge(d.clients, float64(n.ViaEdge), ViaEdge)
	}
	if cfg.Auth != nil {
		for r, n := range cfg.Auth.AuthFailures() {
			counter(d.authFailures, float64(n), r)
		}
	}
	if cfg.Storage != nil {
		s := cfg.Storage.Storage()
		gauge(d.storageBytes, float64(s.Bytes))
		if s.MaxBytes > 0 {
			gauge(d.storageMax, float64(s.MaxBytes))
		}
		gauge(d.storageDisk, float64(s.DiskBytes))
	}
	if cfg.Edges != nil {
		for id, e := range cfg.Edges.Edges() {
			counter(d.edgeDuplicates, float64(e.Duplicates), id)
			counter(d.edgeStoreRewinds, float64(e.StoreRewinds), id)
		}
	}
	if cfg.Certs != nil {
		c := cfg.Certs.Certificates()
		if !c.EdgeCANotAfter.IsZero() {
			gauge(d.edgeCAExpiry, float64(c.EdgeCANotAfter.Unix()))
		}
		if !c.ServerNotAfter.IsZero() {
			gauge(d.serverCertExpiry, float64(c.ServerNotAfter.Unix()))
		}
	}
}
