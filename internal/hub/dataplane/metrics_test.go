package dataplane

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"outpost/internal/hub"
	"outpost/internal/message"
	"outpost/internal/metrics"
	"outpost/internal/sas"
)

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	d := e.device("m1", false)
	m, err := e.p.NewMetrics()
	if err != nil {
		t.Fatal(err)
	}
	e.deviceClient(d, nil)
	for range 2 {
		if resp := e.deviceHTTPBody(http.MethodPost, "/devices/m1/messages/events?api-version=2021-04-12", d, []byte("x"), nil); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("telemetry: %s", resp.Status)
		}
	}
	if err := e.p.SendC2D(ctxT(t), "m1", &message.Message{Body: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	h := e.p.MetricsHandler(m)

	// The C2D message may be delivered to the connected client and leave
	// the stream at any moment, so only the telemetry stream is exact.
	checkFor(t, 10*time.Second, func() error {
		body := scrapeRecorder(t, h, "127.0.0.1:4000", "")
		for _, want := range []string{
			`outpost_queue_length{endpoint="telemetry"} 2`,
			`outpost_queue_bytes{endpoint="telemetry"} `,
			`outpost_queue_oldest_age_seconds{endpoint="c2d"} `,
			`outpost_connected_clients{via="direct"} 1`,
			`outpost_connected_clients{via="edge"} 0`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("no %q in\n%s", want, body)
			}
		}
		for _, absent := range []string{metrics.NameLinkConnected, metrics.NameStored, metrics.NameForwardLatency} {
			if strings.Contains(body, absent) {
				return fmt.Errorf("hub serves %s", absent)
			}
		}
		return nil
	})

	svcToken := func(key string) string {
		tok, err := sas.Sign(testHost, key, hub.ServicePolicy, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name, remote, auth string
		want               int
	}{
		{"loopback", "[::1]:4000", "", http.StatusOK},
		{"remote without token", "192.0.2.9:4000", "", http.StatusUnauthorized},
		{"remote with a service token", "192.0.2.9:4000", svcToken(e.svcKey), http.StatusOK},
		{"remote with a wrong key", "192.0.2.9:4000", svcToken(sas.GenerateKey()), http.StatusUnauthorized},
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
				t.Errorf("status %d, want %d: %s", w.Code, tt.want, w.Body)
			}
		})
	}
}

func scrapeRecorder(t *testing.T, h http.Handler, remote, auth string) string {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	r.RemoteAddr = remote
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	if w.Code != http.StatusOK {
		t.Fatalf("scrape: %d %s", w.Code, b)
	}
	return string(b)
}
