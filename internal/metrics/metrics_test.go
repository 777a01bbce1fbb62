package metrics

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/clocktest"
)

// fakeSource serves every source interface from function fields.
type fakeSource struct {
	queues  func() []Queue
	link    func() Link
	clients func() Clients
	auth    func() map[string]uint64
	storage func() Storage
	drops   func() map[string]uint64
}

func (f fakeSource) Queues() []Queue                 { return f.queues() }
func (f fakeSource) Link() Link                      { return f.link() }
func (f fakeSource) ConnectedClients() Clients       { return f.clients() }
func (f fakeSource) AuthFailures() map[string]uint64 { return f.auth() }
func (f fakeSource) Storage() Storage                { return f.storage() }
func (f fakeSource) Dropped() map[string]uint64      { return f.drops() }

// scrape is one scrape: samples by series and families by type.
type scrape struct {
	samples map[string]float64 // `name{a="x",b="y"}` (labels sorted) -> value
	types   map[string]string  // family -> counter, gauge, histogram
}

func (s scrape) has(series string) bool { _, ok := s.samples[series]; return ok }

// get returns a sample's value, failing the test when it is absent.
func (s scrape) get(t *testing.T, series string) float64 {
	t.Helper()
	v, ok := s.samples[series]
	if !ok {
		t.Fatalf("no sample %s", series)
	}
	return v
}

// hasFamily reports whether any sample of the family name is present.
func (s scrape) hasFamily(name string) bool {
	for k := range s.samples {
		if k == name || strings.HasPrefix(k, name+"{") || strings.HasPrefix(k, name+"_bucket{") || k == name+"_count" {
			return true
		}
	}
	return false
}

// get scrapes h over HTTP, as Prometheus does, and parses the text
// exposition format.
func get(t *testing.T, h http.Handler) scrape {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s: %s", resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type %q, want text/plain", ct)
	}
	s, err := parseText(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// parseText reads the Prometheus text format, enough for these tests:
// `# TYPE` lines and `name{labels} value` samples without timestamps.
func parseText(r io.Reader) (scrape, error) {
	s := scrape{samples: map[string]float64{}, types: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(f, " ")
			s.types[name] = typ
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return s, fmt.Errorf("bad sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return s, fmt.Errorf("bad value in %q: %v", line, err)
		}
		series := line[:i]
		if name, labels, ok := strings.Cut(series, "{"); ok {
			parts := strings.Split(strings.TrimSuffix(labels, "}"), ",")
			sort.Strings(parts)
			series = name + "{" + strings.Join(parts, ",") + "}"
		}
		s.samples[series] = v
	}
	return s, sc.Err()
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func edgeSource(clk *clocktest.Clock) fakeSource {
	return fakeSource{
		queues: func() []Queue {
			return []Queue{
				{Endpoint: "$upstream", Length: 7, Bytes: 700, Oldest: clk.Now().Add(-90 * time.Second),
					Counters: &QueueCounters{Stored: 20, Forwarded: 13, Expired: 2}},
				{Endpoint: "BrokeredEndpoint(/modules/m/inputs/in)", Length: 0,
					Counters: &QueueCounters{Stored: 5, Forwarded: 4, Expired: 1}},
			}
		},
		link: func() Link {
			return Link{Connected: false, Since: clk.Now().Add(-30 * time.Second), OfflinePeriods: 3, LastOffline: 10 * time.Second}
		},
		clients: func() Clients { return Clients{Direct: 4} },
		auth:    func() map[string]uint64 { return map[string]uint64{"bad_signature": 2, "expired": 1} },
		storage: func() Storage { return Storage{Bytes: 700, MaxBytes: 1 << 20, DiskBytes: 4096} },
		drops:   func() map[string]uint64 { return map[string]uint64{ReasonNoRoute: 6} },
	}
}

func newEdgeMetrics(t *testing.T, src fakeSource, clk *clocktest.Clock) *Metrics {
	t.Helper()
	m, err := New(Config{Queues: src, Link: src, Clients: src, Auth: src, Storage: src, Drops: src, Now: clk.Now, NoProcessMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEdgeScrape(t *testing.T) {
	clk := clocktest.At(t0)
	m := newEdgeMetrics(t, edgeSource(clk), clk)
	m.ObserveRefused(ReasonQuota, 5)
	m.ObserveRefused(ReasonTooLarge, 1)
	m.ObserveRefused(ReasonQuota, 0) // nothing
	m.ObserveAccepted(42)
	s := get(t, m.Handler())

	tests := []struct {
		series string
		want   float64
	}{
		{`outpost_queue_length{endpoint="$upstream"}`, 7},
		{`outpost_queue_bytes{endpoint="$upstream"}`, 700},
		{`outpost_queue_oldest_age_seconds{endpoint="$upstream"}`, 90},
		{`outpost_queue_length{endpoint="BrokeredEndpoint(/modules/m/inputs/in)"}`, 0},
		{`outpost_queue_oldest_age_seconds{endpoint="BrokeredEndpoint(/modules/m/inputs/in)"}`, 0},
		{`outpost_messages_stored_total{endpoint="$upstream"}`, 20},
		{`outpost_messages_forwarded_total{endpoint="$upstream"}`, 13},
		{`outpost_messages_stored_total{endpoint="BrokeredEndpoint(/modules/m/inputs/in)"}`, 5},
		{`outpost_messages_dropped_total{reason="ttl"}`, 3}, // 2 + 1 across queues
		{`outpost_messages_dropped_total{reason="no_route"}`, 6},
		{`outpost_messages_dropped_total{reason="quota"}`, 5},
		{`outpost_messages_dropped_total{reason="too_large"}`, 1},
		{`outpost_messages_received_total`, 42},
		{`outpost_upstream_connected`, 0},
		{`outpost_upstream_last_change_timestamp_seconds`, float64(t0.Add(-30 * time.Second).Unix())},
		{`outpost_upstream_offline_periods_total`, 3},
		{`outpost_upstream_offline_seconds`, 30},
		{`outpost_upstream_drain_rate`, 0},
		{`outpost_connected_clients{via="direct"}`, 4},
		{`outpost_connected_clients{via="edge"}`, 0},
		{`outpost_auth_failures_total{reason="bad_signature"}`, 2},
		{`outpost_auth_failures_total{reason="expired"}`, 1},
		{`outpost_storage_bytes`, 700},
		{`outpost_storage_max_bytes`, 1 << 20},
		{`outpost_storage_disk_bytes`, 4096},
		{`outpost_puback_latency_seconds_count`, 0},
		{`outpost_forward_latency_seconds_count`, 0},
		{`outpost_upstream_offline_duration_seconds_count`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.series, func(t *testing.T) {
			if got := s.get(t, tt.series); got != tt.want {
				t.Errorf("%s = %v, want %v", tt.series, got, tt.want)
			}
		})
	}

	types := map[string]string{
		NameQueueLength:        "gauge",
		NameQueueOldestAge:     "gauge",
		NameStored:             "counter",
		NameForwarded:          "counter",
		NameDropped:            "counter",
		NameReceived:           "counter",
		NameLinkConnected:      "gauge",
		NameLinkOfflinePeriods: "counter",
		NameConnectedClients:   "gauge",
		NameAuthFailures:       "counter",
		NamePubackLatency:      "histogram",
		NameForwardLatency:     "histogram",
		NameLinkOfflineHist:    "histogram",
		NameDrainRate:          "gauge",
	}
	for name, want := range types {
		t.Run("type "+name, func(t *testing.T) {
			if got := s.types[name]; got != want {
				t.Errorf("TYPE %s = %q, want %q", name, got, want)
			}
		})
	}
	if s.hasFamily("go_goroutines") {
		t.Error("NoProcessMetrics set, yet go_goroutines is served")
	}
}

func TestLinkConnected(t *testing.T) {
	clk := clocktest.At(t0)
	src := edgeSource(clk)
	src.link = func() Link { return Link{Connected: true, Since: t0.Add(-time.Hour), OfflinePeriods: 1} }
	src.storage = func() Storage { return Storage{Bytes: 1} } // no quota
	m := newEdgeMetrics(t, src, clk)
	s := get(t, m.Handler())
	if got := s.get(t, NameLinkConnected); got != 1 {
		t.Errorf("connected = %v, want 1", got)
	}
	if got := s.get(t, NameLinkOfflineNow); got != 0 {
		t.Errorf("offline seconds while connected = %v, want 0", got)
	}
	if s.has(NameStorageMaxBytes) {
		t.Error("storage max served without a quota")
	}
}

func TestHubScrapeLeavesOutEdgeMetrics(t *testing.T) {
	src := fakeSource{
		queues: func() []Queue {
			return []Queue{{Endpoint: "telemetry", Length: 100, Bytes: 2000, Oldest: t0.Add(-time.Hour)}}
		},
		clients: func() Clients { return Clients{Direct: 2, ViaEdge: 3} },
		auth:    func() map[string]uint64 { return map[string]uint64{} },
	}
	m, err := New(Config{Queues: src, Clients: src, Auth: src, Now: func() time.Time { return t0 }, NoProcessMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	s := get(t, m.Handler())
	if got := s.get(t, `outpost_queue_oldest_age_seconds{endpoint="telemetry"}`); got != 3600 {
		t.Errorf("oldest age = %v, want 3600", got)
	}
	if got := s.get(t, `outpost_connected_clients{via="edge"}`); got != 3 {
		t.Errorf("clients via edge = %v, want 3", got)
	}
	for _, name := range []string{NameStored, NameForwarded, NameLinkConnected, NameDrainRate, NameForwardLatency, NameLinkOfflineHist, NameStorageBytes, NameEdgeCAExpiry, NameEdgeServerCertExpiry} {
		if s.hasFamily(name) {
			t.Errorf("hub serves %s", name)
		}
	}
	for _, r := range []string{ReasonTTL, ReasonQuota, ReasonNoRoute, ReasonTooLarge} {
		if got := s.get(t, NameDropped+`{reason="`+r+`"}`); got != 0 {
			t.Errorf("dropped %s = %v, want 0", r, got)
		}
	}
}

func TestHistograms(t *testing.T) {
	clk := clocktest.At(t0)
	m := newEdgeMetrics(t, edgeSource(clk), clk)
	for _, d := range []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Second} {
		m.ObservePuback(d)
	}
	m.ObserveForwarded(50 * time.Millisecond)
	m.ObserveForwarded(2 * time.Hour)
	m.ObserveForwarded(-time.Second) // clock step: counted as 0
	s := get(t, m.Handler())

	tests := []struct {
		series string
		want   float64
	}{
		{`outpost_puback_latency_seconds_count`, 3},
		{`outpost_puback_latency_seconds_sum`, 3.003},
		{`outpost_puback_latency_seconds_bucket{le="0.001"}`, 1},
		{`outpost_puback_latency_seconds_bucket{le="0.002"}`, 2},
		{`outpost_puback_latency_seconds_bucket{le="+Inf"}`, 3},
		{`outpost_forward_latency_seconds_count`, 3},
		{`outpost_forward_latency_seconds_sum`, 7200.05},
		{`outpost_forward_latency_seconds_bucket{le="+Inf"}`, 3},
	}
	for _, tt := range tests {
		t.Run(tt.series, func(t *testing.T) {
			if got := s.get(t, tt.series); !near(got, tt.want) {
				t.Errorf("%s = %v, want %v", tt.series, got, tt.want)
			}
		})
	}
	// Buckets reach past a day, so a drain after a long outage is placed.
	var dayBucket bool
	for k, v := range s.samples {
		if le, ok := strings.CutPrefix(k, `outpost_forward_latency_seconds_bucket{le="`); ok {
			b, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64)
			if err == nil && b >= 24*3600 && b < 7*24*3600+1 && v == 3 {
				dayBucket = true
			}
		}
	}
	if !dayBucket {
		t.Error("no forward latency bucket between a day and a week holds all three")
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestOfflinePeriods(t *testing.T) {
	clk := clocktest.At(t0)
	m := newEdgeMetrics(t, edgeSource(clk), clk)
	steps := []struct {
		name      string
		link      Link
		wantCount float64
		wantSum   float64
	}{
		{"first connect is no offline period", Link{Connected: true}, 0, 0},
		{"loss", Link{Connected: false, OfflinePeriods: 1}, 0, 0},
		{"retry error while offline", Link{Connected: false, OfflinePeriods: 1}, 0, 0},
		{"back after 12s", Link{Connected: true, OfflinePeriods: 1, LastOffline: 12 * time.Second}, 1, 12},
		{"same state reported again", Link{Connected: true, OfflinePeriods: 1, LastOffline: 12 * time.Second}, 1, 12},
		{"second loss", Link{Connected: false, OfflinePeriods: 2, LastOffline: 12 * time.Second}, 1, 12},
		{"back after 3s", Link{Connected: true, OfflinePeriods: 2, LastOffline: 3 * time.Second}, 2, 15},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			m.ObserveLink(st.link)
			s := get(t, m.Handler())
			if got := s.get(t, NameLinkOfflineHist+"_count"); got != st.wantCount {
				t.Errorf("count = %v, want %v", got, st.wantCount)
			}
			if got := s.get(t, NameLinkOfflineHist+"_sum"); got != st.wantSum {
				t.Errorf("sum = %v, want %v", got, st.wantSum)
			}
		})
	}
}

func TestDrainRate(t *testing.T) {
	clk := clocktest.At(t0)
	m := newEdgeMetrics(t, edgeSource(clk), clk)
	forward := func(n int) {
		for range n {
			m.ObserveForwarded(time.Millisecond)
		}
	}
	steps := []struct {
		name    string
		advance time.Duration
		forward int
		want    float64 // messages per second over the last minute
	}{
		{"600 in the first second", 0, 600, 10},
		{"300 more 30s later", 30 * time.Second, 300, 15},
		{"first second leaves the window", 30 * time.Second, 0, 5},
		{"all gone after another minute", time.Minute, 0, 0},
		{"bucket reuse resets old counts", 0, 60, 1},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			clk.Advance(st.advance)
			forward(st.forward)
			if got := get(t, m.Handler()).get(t, NameDrainRate); !near(got, st.want) {
				t.Errorf("drain rate = %v, want %v", got, st.want)
			}
		})
	}
}

func TestProcessMetrics(t *testing.T) {
	m, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	s := get(t, m.Handler())
	if !s.hasFamily("go_goroutines") {
		t.Error("go_goroutines missing")
	}
	// No sources: the always-present families only.
	if !s.has(NameReceived) || !s.has(NameDropped+`{reason="ttl"}`) {
		t.Error("received or dropped missing without sources")
	}
}

// TestConcurrentObserveAndScrape is for the race detector.
func TestConcurrentObserveAndScrape(t *testing.T) {
	clk := clocktest.At(t0)
	m := newEdgeMetrics(t, edgeSource(clk), clk)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				m.ObservePuback(time.Duration(i) * time.Microsecond)
				m.ObserveForwarded(time.Millisecond)
				m.ObserveAccepted(1)
				m.ObserveRefused(ReasonQuota, 1)
				m.ObserveLink(Link{Connected: (i+g)%2 == 0, OfflinePeriods: i})
			}
		}()
	}
	for range 5 {
		get(t, m.Handler())
	}
	wg.Wait()
	s := get(t, m.Handler())
	if got := s.get(t, NameReceived); got != 2000 {
		t.Errorf("received = %v, want 2000", got)
	}
	if got := s.get(t, NameDropped+`{reason="quota"}`); got != 2000 {
		t.Errorf("quota drops = %v, want 2000", got)
	}
	if got := s.get(t, NamePubackLatency+"_count"); got != 2000 {
		t.Errorf("puback count = %v, want 2000", got)
	}
}

type certSource Certificates

func (c certSource) Certificates() Certificates { return Certificates(c) }

// TestCertificateExpiry: the edge's certificate expiries are gauges of
// Unix time; one not known yet (no server certificate before the edge
// listens) is left out, not reported as 1970.
func TestCertificateExpiry(t *testing.T) {
	ca := time.Date(2031, 12, 7, 0, 0, 0, 0, time.UTC)
	srv := time.Date(2027, 12, 7, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		c    Certificates
	}{{"both", Certificates{EdgeCANotAfter: ca, ServerNotAfter: srv}}, {"no server certificate yet", Certificates{EdgeCANotAfter: ca}}} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(Config{Certs: certSource(tt.c), NoProcessMetrics: true})
			if err != nil {
				t.Fatal(err)
			}
			s := get(t, m.Handler())
			if got := s.get(t, NameEdgeCAExpiry); got != float64(ca.Unix()) {
				t.Errorf("%s = %v, want %d", NameEdgeCAExpiry, got, ca.Unix())
			}
			if s.types[NameEdgeCAExpiry] != "gauge" {
				t.Errorf("%s is a %q", NameEdgeCAExpiry, s.types[NameEdgeCAExpiry])
			}
			if tt.c.ServerNotAfter.IsZero() {
				if s.has(NameEdgeServerCertExpiry) {
					t.Errorf("%s served with no server certificate", NameEdgeServerCertExpiry)
				}
			} else if got := s.get(t, NameEdgeServerCertExpiry); got != float64(srv.Unix()) {
				t.Errorf("%s = %v, want %d", NameEdgeServerCertExpiry, got, srv.Unix())
			}
		})
	}
}
