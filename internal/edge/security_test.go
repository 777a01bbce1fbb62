package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/clocktest"
	"outpost/internal/edge/store"
	"outpost/internal/gateway"
	"outpost/internal/gateway/transporttest"
	"outpost/internal/identity"
	"outpost/internal/sas"
	"outpost/internal/topic"
	"outpost/internal/twin"
)

// The edge's part of the security suite (docs/RELIABILITY.md,
// "Security"): the gateway's attacks against the edge's offline identity
// cache, over MQTT/TLS, MQTT/WebSocket and HTTPS, with the link down so
// that no refusal is saved by a refresh from the hub. Each ends in a
// counted refusal with nothing stored.

func (te *testEdge) endpoint() transporttest.Endpoint {
	return transporttest.Endpoint{
		MQTTAddr:    te.e.MQTTAddr().String(),
		HTTPSAddr:   te.e.HTTPSAddr().String(),
		TLS:         &tls.Config{RootCAs: te.hub.pool(te.t), ServerName: "localhost"},
		HubHostName: hubHost,
	}
}

// stored is how many messages the edge's store holds, all queues.
func (te *testEdge) stored() int64 {
	var n int64
	for _, st := range te.e.Store().Stats() {
		n += st.Len
	}
	return n
}

func (h *fakeHub) addX509(id string, a identity.Authentication) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.devices[id] = identity.Device{DeviceID: id, Status: identity.StatusEnabled, Authentication: a}
}

func (h *fakeHub) disable(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.devices[id]
	d.Status = identity.StatusDisabled
	h.devices[id] = d
}

func signed(t *testing.T, resource, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.Sign(resource, key, "", expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// edgeAttempt sends one message and checks the outcome: acknowledged
// and stored when reason is "", else refused, counted, nothing stored.
func edgeAttempt(t *testing.T, te *testEdge, tr string, c transporttest.Creds, reason gateway.AuthReason) {
	t.Helper()
	te.endpoint().Check(t, transporttest.Server{
		Stored:   te.stored,
		Failures: func(r string) uint64 { return te.e.Gateway().AuthFailures()[gateway.AuthReason(r)] },
	}, tr, c, string(reason))
}

// TestSecurityEdgeImpersonation: offline, the edge lets a child or module
// in as itself only, by the identities it cached at its last sync.
func TestSecurityEdgeImpersonation(t *testing.T) {
	clock := clocktest.Real()
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	hub.addDevice("child2")
	modKey := hub.addModule("edge1", "filter")
	offKey := hub.addDevice("off")
	hub.disable("off")
	self, _, _, err := certs.SelfSigned("thumb")
	if err != nil {
		t.Fatal(err)
	}
	hub.addX509("thumb", identity.Authentication{Type: identity.AuthSelfSigned,
		X509Thumbprint: identity.X509Thumbprint{PrimaryThumbprint: certs.Thumbprint(self.Leaf)}})
	hub.addX509("cadev", identity.Authentication{Type: identity.AuthCA})
	x, err := transporttest.NewX509Attack(hub.root, "cadev", "child1")
	if err != nil {
		t.Fatal(err)
	}
	other, _, _, err := certs.SelfSigned("thumb")
	if err != nil {
		t.Fatal(err)
	}
	sasCert, _, _, err := hub.root.IssueClient("child1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	te := startEdge(t, hub, t.TempDir(), true, func(c *Config) { c.Now = clock.Now })
	te.awaitReady()
	te.up.setConnected(false)

	res := func(d, m string) string { return sas.DeviceResource(hubHost, d, m) }
	hour := time.Now().Add(time.Hour)
	attacks := []struct {
		name   string
		creds  transporttest.Creds
		reason gateway.AuthReason
	}{
		{"the child itself", transporttest.Creds{ClientID: "child1", Password: signed(t, res("child1", ""), key, hour)}, ""},
		{"the edge's module itself", transporttest.Creds{ClientID: "edge1/filter", Password: signed(t, res("edge1", "filter"), modKey, hour)}, ""},
		{"another key", transporttest.Creds{ClientID: "child1", Password: signed(t, res("child1", ""), sas.GenerateKey(), hour)}, gateway.ReasonBadSignature},
		{"audience: another child", transporttest.Creds{ClientID: "child1", Password: signed(t, res("child2", ""), key, hour)}, gateway.ReasonWrongAudience},
		{"audience: another hub", transporttest.Creds{ClientID: "child1", Password: signed(t, sas.DeviceResource("other.hub", "child1", ""), key, hour)}, gateway.ReasonWrongAudience},
		{"client id of another child, own key", transporttest.Creds{ClientID: "child2", Password: signed(t, res("child2", ""), key, hour)}, gateway.ReasonBadSignature},
		{"client id differing in case", transporttest.Creds{ClientID: "CHILD1", Password: signed(t, res("CHILD1", ""), key, hour)}, gateway.ReasonNotFound},
		{"module key for its device", transporttest.Creds{ClientID: "edge1", Password: signed(t, res("edge1", ""), modKey, hour)}, gateway.ReasonNotFound},
		{"child key for a module", transporttest.Creds{ClientID: "edge1/filter", Password: signed(t, res("edge1", "filter"), key, hour)}, gateway.ReasonBadSignature},
		{"the edge device at its own edge", transporttest.Creds{ClientID: "edge1", Password: signed(t, res("edge1", ""), edgeKey, hour)}, gateway.ReasonNotFound},
		{"a device disabled at the last sync", transporttest.Creds{ClientID: "off", Password: signed(t, res("off", ""), offKey, hour)}, gateway.ReasonDisabled},
		{"a device the edge never heard of", transporttest.Creds{ClientID: "ghost", Password: signed(t, res("ghost", ""), sas.GenerateKey(), hour)}, gateway.ReasonNotFound},
		{"expired beyond the skew", transporttest.Creds{ClientID: "child1", Password: signed(t, res("child1", ""), key, time.Now().Add(-time.Hour))}, gateway.ReasonExpired},
		{"X.509: registered thumbprint", transporttest.Creds{ClientID: "thumb", Cert: &self}, ""},
		{"X.509: another self-signed certificate", transporttest.Creds{ClientID: "thumb", Cert: &other}, gateway.ReasonBadCert},
		{"X.509: leaf of the hub's root", transporttest.Creds{ClientID: "cadev", Cert: x.Good}, ""},
		{"X.509: CN of another id", transporttest.Creds{ClientID: "cadev", Cert: x.OtherCN}, gateway.ReasonBadCert},
		{"X.509: a CA certificate as the leaf", transporttest.Creds{ClientID: "cadev", Cert: x.CAAsLeaf}, gateway.ReasonBadCert},
		{"X.509: unknown root", transporttest.Creds{ClientID: "cadev", Cert: x.UnknownRoot}, gateway.ReasonBadCert},
		{"X.509: certificate for a SAS child", transporttest.Creds{ClientID: "child1", Cert: &sasCert}, gateway.ReasonWrongMethod},
	}
	for _, tr := range transporttest.Transports {
		for _, a := range attacks {
			if tr == transporttest.HTTPS && strings.Contains(a.creds.ClientID, "/") {
				continue // the device HTTPS API of modules is telemetry only, as here
			}
			t.Run(tr+"/"+a.name, func(t *testing.T) { edgeAttempt(t, te, tr, a.creds, a.reason) })
		}
		for _, tt := range []struct {
			name string
			by   time.Duration
		}{{"X.509: expired by the edge's clock", 2 * time.Hour}, {"X.509: not yet valid by the edge's clock", -time.Hour}} {
			t.Run(tr+"/"+tt.name, func(t *testing.T) {
				clock.Advance(tt.by)
				defer clock.Advance(-tt.by)
				edgeAttempt(t, te, tr, transporttest.Creds{ClientID: "cadev", Cert: x.Good}, gateway.ReasonBadCert)
			})
		}
	}
}

// TestSecurityEdgeClockJump (IoT Edge #6421): an edge whose clock jumped
// after a long offline period (no battery-backed clock, then NTP) still
// takes tokens within the skew window by its own clock, refuses those
// beyond it, and takes them again once the child signs a fresh one.
func TestSecurityEdgeClockJump(t *testing.T) {
	clock := clocktest.Real()
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true, func(c *Config) { c.Now = clock.Now })
	te.awaitReady()
	te.up.setConnected(false)
	res := sas.DeviceResource(hubHost, "child1", "")
	for _, jump := range []struct {
		name string
		by   time.Duration
	}{{"edge clock 3 days behind", -72 * time.Hour}, {"edge clock 3 days ahead", 72 * time.Hour}} {
		t.Run(jump.name, func(t *testing.T) {
			clock.Advance(jump.by)
			defer clock.Advance(-jump.by)
			for _, tr := range transporttest.Transports {
				// The child's clock is right: its token is an hour from now.
				childToken := transporttest.Creds{ClientID: "child1", Password: signed(t, res, key, time.Now().Add(time.Hour))}
				if jump.by < 0 {
					edgeAttempt(t, te, tr, childToken, "") // far ahead of the edge: still good
				} else {
					edgeAttempt(t, te, tr, childToken, gateway.ReasonExpired) // expired by the edge's clock
				}
				// A child whose clock agrees with the edge's, within the skew.
				within := transporttest.Creds{ClientID: "child1", Password: signed(t, res, key, clock.Now().Add(-gateway.DefaultClockSkew+time.Minute))}
				edgeAttempt(t, te, tr, within, "")
				beyond := transporttest.Creds{ClientID: "child1", Password: signed(t, res, key, clock.Now().Add(-gateway.DefaultClockSkew-time.Minute))}
				edgeAttempt(t, te, tr, beyond, gateway.ReasonExpired)
			}
		})
	}
}

// TestSecurityEdgeMalformedReported: a reported patch that breaks the
// twin rules is answered 400 and neither sent nor held for the hub.
func TestSecurityEdgeMalformedReported(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	nc, err := te.endpoint().Dial(transporttest.MQTT, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rc := transporttest.NewRaw(nc)
	tok := signed(t, sas.DeviceResource(hubHost, "child1", ""), key, time.Now().Add(time.Hour))
	if code, err := rc.Connect("child1", hubHost+"/child1/?api-version=2021-04-12", tok); err != nil || code != 0 {
		t.Fatalf("CONNACK %d, %v", code, err)
	}
	if err := rc.Subscribe(1, topic.FilterTwinResponses); err != nil {
		t.Fatal(err)
	}
	for i, patch := range transporttest.BadPatches(twin.MaxSectionSize) {
		status, body, err := rc.TwinReported(fmt.Sprint(i), []byte(patch))
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusBadRequest || !bytes.Contains(body, []byte("errorCode")) {
			t.Errorf("patch %.40s: %d %s, want 400 with an errorCode", patch, status, body)
		}
	}
	if _, err := te.e.Store().Get([]byte(kvPendPrefix + "child1")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a patch is held for the hub (%v)", err)
	}
}

// TestSecurityEdgeTopicAccess: at the edge a child uses its own topics
// only, over TLS and WebSocket, and nobody acts on behalf of others
// there; each abuse drops the connection with nothing stored.
func TestSecurityEdgeTopicAccess(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	hub.addDevice("child2")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	c := transporttest.Creds{ClientID: "child1", Password: signed(t, sas.DeviceResource(hubHost, "child1", ""), key, time.Now().Add(time.Hour))}
	for _, tr := range []string{transporttest.MQTT, transporttest.WebSocket} {
		for _, a := range transporttest.TopicAbuses("child1", "child2") {
			t.Run(tr+"/"+a.Name, func(t *testing.T) {
				stored := te.stored()
				if err := te.endpoint().Drops(tr, c, a.Act); err != nil {
					t.Fatal(err)
				}
				if n := te.stored(); n != stored {
					t.Errorf("%d messages stored", n-stored)
				}
			})
		}
	}
}

// The edge holds its listeners to Config.Rates (`outpost edge
// --connect-rate`): at 2 connections a second, five TLS handshakes begun
// together finish about half a second apart.
func TestEdgeConnectRate(t *testing.T) {
	hub := newFakeHub(t)
	te := startEdge(t, hub, t.TempDir(), true, func(c *Config) { c.Rates.ConnectRate = 2 })
	te.awaitReady()
	const n = 5
	spread, err := transporttest.HandshakeSpread(te.e.MQTTAddr().String(), &tls.Config{RootCAs: hub.pool(t), ServerName: "localhost"}, n)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1500 * time.Millisecond; spread < want {
		t.Errorf("%d handshakes done within %v of each other at 2 connections a second; want over %v", n, spread, want)
	}
	t.Logf("FIGURE edge at ConnectRate 2: %d TLS handshakes begun together done within %v", n, spread)
}
