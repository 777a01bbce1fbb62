package edge

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/metrics"
	"outpost/internal/sas"
	"outpost/internal/status"
	"outpost/internal/status/statustest"
)

// TestMetricsSource scrapes an offline edge holding a backlog, through
// the same handler /metrics mounts.
func TestMetricsSource(t *testing.T) {
	hub := newFakeHub(t)
	hub.addDevice("child2")
	te := offlineBacklog(t, hub)
	te.refused("child2", "", sas.GenerateKey())
	m, err := newMetrics(te.e)
	if err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(metricsHandler(te.e, m))
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, b)
	}
	body := string(b)
	for _, want := range []string{
		`outpost_queue_length{endpoint="$upstream"} 3`,
		`outpost_messages_stored_total{endpoint="$upstream"} 3`,
		`outpost_messages_forwarded_total{endpoint="$upstream"} 0`,
		`outpost_upstream_connected 0`,
		`outpost_upstream_offline_periods_total 1`,
		`outpost_connected_clients{via="direct"} 1`,
		`outpost_auth_failures_total{reason="bad_signature"} 1`,
		`outpost_messages_dropped_total{reason="no_route"} 0`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("no %q in\n%s", want, body)
		}
	}
	for _, want := range []string{"outpost_queue_oldest_age_seconds{endpoint=\"$upstream\"} ", "outpost_storage_bytes ", "outpost_upstream_offline_seconds "} {
		if !strings.Contains(body, want) || strings.Contains(body, want+"0\n") {
			t.Errorf("%s missing or zero in\n%s", want, body)
		}
	}
}

func TestMetricsHandlerAuth(t *testing.T) {
	hub := newFakeHub(t)
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	m, err := newMetrics(te.e)
	if err != nil {
		t.Fatal(err)
	}
	h := metricsHandler(te.e, m)
	token := func(key string) string {
		tok, err := sas.Sign(sas.DeviceResource(hubHost, "edge1", ""), key, "", time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name   string
		remote string
		auth   string
		want   int
	}{
		{"loopback", "127.0.0.1:5000", "", http.StatusOK},
		{"remote without token", "192.0.2.7:5000", "", http.StatusUnauthorized},
		{"remote with the edge's token", "192.0.2.7:5000", token(edgeKey), http.StatusOK},
		{"remote with another key", "192.0.2.7:5000", token(sas.GenerateKey()), http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			r.RemoteAddr = tt.remote
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.want, w.Body)
			}
			if tt.want == http.StatusUnauthorized {
				statustest.CheckHTTP(t, w.Result(), status.Unauthorized("Unauthorized"))
			}
			if tt.want == http.StatusOK && !strings.Contains(w.Body.String(), metrics.NameQueueLength) {
				t.Errorf("no queue metrics in\n%s", w.Body)
			}
		})
	}
}

func TestMetricsLink(t *testing.T) {
	since := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	got := metricsLink(LinkState{Connected: true, Since: since, LastError: "x", OfflinePeriods: 2, LastOffline: time.Minute})
	want := metrics.Link{Connected: true, Since: since, OfflinePeriods: 2, LastOffline: time.Minute}
	if got != want {
		t.Errorf("metricsLink = %+v, want %+v", got, want)
	}
	// The gateway's refusal reasons become the reason label as they are.
	if metrics.ReasonTooLarge != gateway.RefusedTooLarge || metrics.ReasonQuota != gateway.RefusedQuota {
		t.Error("gateway and metrics name refusal reasons differently")
	}
}

// TestMetricsEndpoint reads /metrics on the edge's HTTPS listener, where
// the gateway's PUBACKs and the link's changes have been observed.
func TestMetricsEndpoint(t *testing.T) {
	te := offlineBacklog(t, newFakeHub(t))
	te.up.setConnected(true) // one offline period completed

	hc := te.httpsClient()
	want := []string{
		`outpost_queue_length{endpoint="$upstream"} 3`,
		`outpost_messages_received_total 3`,
		`outpost_puback_latency_seconds_count 3`,
		`outpost_upstream_connected 1`,
		`outpost_upstream_offline_duration_seconds_count 1`,
		`outpost_connected_clients{via="direct"} 1`,
	}
	// The gateway reports a batch's PUBACKs just after writing them.
	checkFor(t, 10*time.Second, func() error {
		res, err := hc.Get("https://" + te.e.HTTPSAddr().String() + "/metrics")
		if err != nil {
			return err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d: %s", res.StatusCode, b)
		}
		for _, w := range want {
			if !strings.Contains(string(b), w+"\n") {
				return fmt.Errorf("no %q in\n%s", w, b)
			}
		}
		return nil
	})
}
