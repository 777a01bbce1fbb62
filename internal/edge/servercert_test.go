package edge

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/clocktest"
	"outpost/internal/gateway"
	"outpost/internal/gateway/transporttest"
	"outpost/internal/metrics"
	"outpost/internal/poll"
	"outpost/internal/sas"
)

// served is the server certificate chain the edge's MQTT listener
// presents, verified up to the hub's root by a client whose clock reads
// now (as a child's would, set right).
func served(t *testing.T, te *testEdge, now func() time.Time) []*x509.Certificate {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", te.e.MQTTAddr().String(),
		&tls.Config{RootCAs: te.hub.pool(t), ServerName: "localhost", Time: now})
	if err != nil {
		t.Fatalf("TLS to the edge at %v: %v", now(), err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates
}

// scrape reads the edge's /metrics over HTTPS, verified at now.
func scrape(t *testing.T, te *testEdge, now func() time.Time) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: te.hub.pool(t), ServerName: "localhost", Time: now}}}
	defer hc.CloseIdleConnections()
	res, err := hc.Get("https://" + te.e.HTTPSAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %v", res.StatusCode, err)
	}
	return string(b)
}

func wantGauge(t *testing.T, body, name string, at time.Time) {
	t.Helper()
	if want := fmt.Sprintf("%s %g\n", name, float64(at.Unix())); !strings.Contains(body, want) {
		t.Errorf("no %q in /metrics", strings.TrimSpace(want))
	}
}

// childSends has child1 send one message over every transport, with a
// token signed by clock and TLS verified at clock's time: acked and
// stored.
func childSends(t *testing.T, te *testEdge, key string, clock func() time.Time) {
	t.Helper()
	ep := te.endpoint()
	ep.TLS.Time = clock
	// Counted by the stores' counters, which expiry (the clock jumps
	// months) does not take back.
	srv := transporttest.Server{
		Stored: func() int64 {
			var n uint64
			for _, st := range te.e.Store().Stats() {
				n += st.Stored
			}
			return int64(n)
		},
		Failures: func(r string) uint64 { return te.e.Gateway().AuthFailures()[gateway.AuthReason(r)] },
	}
	tok := signed(t, sas.DeviceResource(hubHost, "child1", ""), key, clock().Add(time.Hour))
	for _, tr := range transporttest.Transports {
		ep.Check(t, srv, tr, transporttest.Creds{ClientID: "child1", Password: tok}, "")
	}
}

// TestServerCertRenewsOffline: with the link down, the edge issues its
// next server certificate from its edge CA once two thirds of the
// current one's life has passed by its clock, before it expires, and
// serves it at the next handshake with no restart. Three renewals take
// the clock past the first certificate's expiry; children keep
// connecting, verifying the edge up to the hub's root. /status and
// /metrics show the expiries.
func TestServerCertRenewsOffline(t *testing.T) {
	clock := clocktest.Real()
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true, func(c *Config) { c.Now = clock.Now })
	te.awaitReady()
	te.up.setConnected(false)
	ca := te.e.ca.Load()

	first := served(t, te, clock.Now)[0]
	cur := first
	for i := range 3 {
		life := cur.NotAfter.Sub(cur.NotBefore)
		renewAt := cur.NotBefore.Add(life * 2 / 3)
		st := te.e.Status().Certificates
		if st.ServerCertNotAfter == nil || !st.ServerCertNotAfter.Equal(cur.NotAfter) || st.ServerCertRenewAt == nil {
			t.Fatalf("renewal %d: status %+v, serving one until %v", i, st, cur.NotAfter)
		}
		if d := st.ServerCertRenewAt.Sub(renewAt); d < -time.Second || d > time.Second {
			t.Errorf("renewal %d: status says renewed at %v, want two thirds into its life, %v", i, *st.ServerCertRenewAt, renewAt)
		}
		body := scrape(t, te, clock.Now)
		wantGauge(t, body, metrics.NameEdgeServerCertExpiry, cur.NotAfter)
		wantGauge(t, body, metrics.NameEdgeCAExpiry, ca.Cert.NotAfter)

		// Just before: the same certificate.
		clock.Advance(renewAt.Sub(clock.Now()) - time.Minute)
		if got := served(t, te, clock.Now)[0]; !got.Equal(cur) {
			t.Fatalf("renewal %d: a new certificate a minute before two thirds of its life", i)
		}
		// Just after: a new one, while the old one is still valid.
		clock.Advance(2 * time.Minute)
		chain := served(t, te, clock.Now)
		next := chain[0]
		now := clock.Now()
		switch {
		case next.Equal(cur):
			t.Fatalf("renewal %d: at %v, two thirds into the life of the certificate valid until %v, still served", i, now, cur.NotAfter)
		case !now.Before(cur.NotAfter):
			t.Fatalf("renewal %d: renewed at %v, after its predecessor expired (%v)", i, now, cur.NotAfter)
		case next.NotBefore.After(now) || !next.NotAfter.After(cur.NotAfter):
			t.Fatalf("renewal %d at %v: new certificate valid %v to %v, old until %v", i, now, next.NotBefore, next.NotAfter, cur.NotAfter)
		case next.NotAfter.After(ca.Cert.NotAfter):
			t.Fatalf("renewal %d: new certificate valid until %v, past its CA's %v", i, next.NotAfter, ca.Cert.NotAfter)
		case !chain[1].Equal(ca.Cert):
			t.Fatalf("renewal %d: served from %s, not the edge CA", i, chain[1].Subject)
		}
		if got := served(t, te, clock.Now)[0]; !got.Equal(next) {
			t.Fatalf("renewal %d: renewed again at the next handshake", i)
		}
		childSends(t, te, key, clock.Now)
		t.Logf("renewal %d at +%.0f days: certificate valid until %v replaced the one valid until %v, %.0f days before it expired", i,
			now.Sub(first.NotBefore).Hours()/24, next.NotAfter.Format(time.DateOnly), cur.NotAfter.Format(time.DateOnly), cur.NotAfter.Sub(now).Hours()/24)
		cur = next
	}
	if now := clock.Now(); !now.After(first.NotAfter) {
		t.Fatalf("clock %v: not yet past the first certificate's expiry %v", now, first.NotAfter)
	}
	if te.up.State().Connected {
		t.Fatal("link up")
	}
	if err := contains(te.logs.String(), "server certificate renewed"); err != nil {
		t.Error(err)
	}
}

// TestServerCertCappedAtCA: a server certificate never outlives its
// edge CA, and is not issued again for nothing when the CA caps it.
func TestServerCertCappedAtCA(t *testing.T) {
	clock := clocktest.Real()
	hub := newFakeHub(t)
	hub.edgeCAValidity = 90 * 24 * time.Hour
	te := startEdge(t, hub, t.TempDir(), true, func(c *Config) { c.Now = clock.Now })
	te.awaitReady()
	te.up.setConnected(false)
	ca := te.e.ca.Load()
	first := served(t, te, clock.Now)[0]
	if !first.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Fatalf("server certificate valid until %v, its CA until %v", first.NotAfter, ca.Cert.NotAfter)
	}
	if st := te.e.Status().Certificates; st.ServerCertRenewAt != nil {
		t.Errorf("status: renewed at %v, but the CA caps it", *st.ServerCertRenewAt)
	}
	clock.Advance(80 * 24 * time.Hour)
	if got := served(t, te, clock.Now)[0]; !got.Equal(first) {
		t.Fatalf("issued again although capped at the CA's expiry: %v to %v", got.NotBefore, got.NotAfter)
	}
}

// TestServerCertAfterClockSetBack: a certificate renewed while the
// edge's clock was far ahead starts in the future for children with a
// right clock; once the clock is set right the edge issues another at
// the next handshake instead of serving it until its start comes.
func TestServerCertAfterClockSetBack(t *testing.T) {
	clock := clocktest.Real()
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true, func(c *Config) { c.Now = clock.Now })
	te.awaitReady()
	te.up.setConnected(false)
	first := served(t, te, clock.Now)[0]
	ahead := 300 * 24 * time.Hour // past two thirds of its life
	clock.Advance(ahead)
	if got := served(t, te, clock.Now)[0]; got.Equal(first) || got.NotBefore.Before(first.NotAfter.Add(-100*24*time.Hour)) {
		t.Fatalf("clock %v ahead: served one valid from %v", ahead, got.NotBefore)
	}
	clock.Advance(-ahead)
	got := served(t, te, clock.Now)[0] // verified at the right time
	if got.NotBefore.After(clock.Now()) {
		t.Fatalf("clock set right: served one valid from %v", got.NotBefore)
	}
	childSends(t, te, key, clock.Now)
}

// TestEdgeCAExpirySoon: an edge CA within CAExpiryWarning of its expiry
// shows in /status and /metrics and is logged as a warning; once online
// the edge has the hub sign a new one, keeps it, and serves a server
// certificate from it that children verify up to the hub's root. A
// restart offline keeps the new CA.
func TestEdgeCAExpirySoon(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	hub.edgeCAValidity = 20 * 24 * time.Hour
	dir := t.TempDir()
	te := startEdge(t, hub, dir, true)
	te.awaitReady()
	te.up.setConnected(false)
	old := te.e.ca.Load()
	st := te.e.Status().Certificates
	if !st.EdgeCAExpiresSoon || st.EdgeCANotAfter == nil || !st.EdgeCANotAfter.Equal(old.Cert.NotAfter) || st.EdgeCASource != "hub" {
		t.Fatalf("status %+v for an edge CA valid until %v: want it shown expiring soon", st, old.Cert.NotAfter)
	}
	body := scrape(t, te, time.Now)
	wantGauge(t, body, metrics.NameEdgeCAExpiry, old.Cert.NotAfter)
	wantGauge(t, body, metrics.NameEdgeServerCertExpiry, old.Cert.NotAfter)
	poll.Check(t, 5*time.Second, 10*time.Millisecond, func() error {
		return contains(te.logs.String(), "edge CA expires soon")
	})

	// Online again: the hub signs a CA for the usual 5 years.
	hub.mu.Lock()
	hub.edgeCAValidity = 0
	hub.mu.Unlock()
	te.up.setConnected(true)
	poll.Check(t, 10*time.Second, 10*time.Millisecond, func() error {
		if ca := te.e.ca.Load(); ca == old {
			return fmt.Errorf("edge CA still the one valid until %v", old.Cert.NotAfter)
		}
		return nil
	})
	renewed := te.e.ca.Load()
	if !renewed.Cert.NotAfter.After(old.Cert.NotAfter.Add(CAExpiryWarning)) || !certs.IsEdgeCA(renewed.Cert) {
		t.Fatalf("renewed edge CA valid until %v (edge CA: %v)", renewed.Cert.NotAfter, certs.IsEdgeCA(renewed.Cert))
	}
	if st := te.e.Status().Certificates; st.EdgeCAExpiresSoon || !st.EdgeCANotAfter.Equal(renewed.Cert.NotAfter) {
		t.Errorf("status after renewal %+v", st)
	}
	chain := served(t, te, time.Now)
	if !chain[1].Equal(renewed.Cert) || !chain[0].NotAfter.After(old.Cert.NotAfter) {
		t.Fatalf("served from %v (valid until %v), want from the renewed edge CA", chain[1].NotAfter, chain[0].NotAfter)
	}
	te.up.setConnected(false)
	childSends(t, te, key, time.Now)
	te.close()

	te2 := startEdge(t, hub, dir, false)
	te2.awaitReady()
	if ca := te2.e.ca.Load(); !ca.Cert.Equal(renewed.Cert) {
		t.Fatalf("after a restart the edge CA is valid until %v, want the renewed one", ca.Cert.NotAfter)
	}
	if !served(t, te2, time.Now)[1].Equal(renewed.Cert) {
		t.Fatal("after a restart, served from another CA than the renewed one")
	}
}
