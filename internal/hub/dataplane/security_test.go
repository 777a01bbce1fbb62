package dataplane

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/clocktest"
	"outpost/internal/gateway"
	"outpost/internal/gateway/transporttest"
	"outpost/internal/hub"
	"outpost/internal/identity"
	"outpost/internal/sas"
	"outpost/internal/topic"
	"outpost/internal/twin"
)

// The hub's part of the security suite (docs/RELIABILITY.md, "Security"):
// the attacks of the gateway's suite against the hub's real registry,
// over MQTT/TLS, MQTT/WebSocket and HTTPS, each ending in a counted
// refusal with nothing stored. C2D lock tokens are covered by
// c2dlock_test.go, Wills by will_test.go.

func (e *env) endpoint() transporttest.Endpoint {
	return transporttest.Endpoint{
		MQTTAddr:    "127.0.0.1:" + e.mqttPort,
		HTTPSAddr:   e.https.Listener.Addr().String(),
		TLS:         &tls.Config{RootCAs: e.pool, ServerName: "localhost"},
		HubHostName: testHost,
	}
}

// storedCount is how many messages the telemetry stream holds.
func (e *env) storedCount() uint64 {
	e.t.Helper()
	info, err := e.p.tel.Info(ctxT(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

func sign(t *testing.T, resource, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.Sign(resource, key, "", expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func keyOf(a identity.Authentication) string { return a.SymmetricKey.PrimaryKey }

// hubAttack is one attempt at the hub.
type hubAttack struct {
	name   string
	creds  transporttest.Creds
	reason gateway.AuthReason // "": must be accepted
}

// TestSecurityHubImpersonation: at the hub, over every transport, a
// device gets in as itself only: signature, audience, host, client id,
// device versus module, edge versus child, and each X.509 rule.
func TestSecurityHubImpersonation(t *testing.T) {
	clock := clocktest.Real()
	e := newEnv(t, func(c *Config) { c.Now = clock.Now })
	ctx := ctxT(t)
	dev := e.device("dev", false)
	mod := e.module("dev", "mod")
	e.device("dev2", false)
	edge := e.device("edge1", true)
	kid := e.device("kid", false)
	if err := e.h.AddChildren(ctx, "edge1", []string{"kid"}, false); err != nil {
		t.Fatal(err)
	}
	off := e.device("off", false)
	off.Status = identity.StatusDisabled
	if _, err := e.h.CreateOrUpdateDevice(ctx, off, "*", false); err != nil {
		t.Fatal(err)
	}
	selfSigned, _, _, err := certs.SelfSigned("thumb")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "thumb", Authentication: identity.Authentication{
		Type: identity.AuthSelfSigned, X509Thumbprint: identity.X509Thumbprint{PrimaryThumbprint: certs.Thumbprint(selfSigned.Leaf)}}}, "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "cadev", Authentication: identity.Authentication{Type: identity.AuthCA}}, "", false); err != nil {
		t.Fatal(err)
	}
	x, err := transporttest.NewX509Attack(e.ca, "cadev", "thumb")
	if err != nil {
		t.Fatal(err)
	}
	other, _, _, err := certs.SelfSigned("thumb")
	if err != nil {
		t.Fatal(err)
	}
	sasCert, _, _, err := e.ca.IssueClient("dev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hour := time.Now().Add(time.Hour)
	res := func(d, m string) string { return sas.DeviceResource(testHost, d, m) }
	devKey := keyOf(dev.Authentication)
	attacks := []hubAttack{
		{"the device itself", transporttest.Creds{ClientID: "dev", Password: sign(t, res("dev", ""), devKey, hour)}, ""},
		{"its secondary key", transporttest.Creds{ClientID: "dev", Password: sign(t, res("dev", ""), dev.Authentication.SymmetricKey.SecondaryKey, hour)}, ""},
		{"the module itself", transporttest.Creds{ClientID: "dev/mod", Password: sign(t, res("dev", "mod"), keyOf(mod.Authentication), hour)}, ""},
		{"another key", transporttest.Creds{ClientID: "dev", Password: sign(t, res("dev", ""), sas.GenerateKey(), hour)}, gateway.ReasonBadSignature},
		{"audience: another device", transporttest.Creds{ClientID: "dev", Password: sign(t, res("dev2", ""), devKey, hour)}, gateway.ReasonWrongAudience},
		{"audience: another hub", transporttest.Creds{ClientID: "dev", Password: sign(t, sas.DeviceResource("other.hub", "dev", ""), devKey, hour)}, gateway.ReasonWrongAudience},
		{"client id of another device, own token", transporttest.Creds{ClientID: "dev2", Password: sign(t, res("dev", ""), devKey, hour)}, gateway.ReasonWrongAudience},
		{"client id of another device, its audience, own key", transporttest.Creds{ClientID: "dev2", Password: sign(t, res("dev2", ""), devKey, hour)}, gateway.ReasonBadSignature},
		{"client id differing in case", transporttest.Creds{ClientID: "DEV", Password: sign(t, res("DEV", ""), devKey, hour)}, gateway.ReasonNotFound},
		{"device token for its module", transporttest.Creds{ClientID: "dev/mod", Password: sign(t, res("dev", ""), devKey, hour)}, gateway.ReasonWrongAudience},
		{"device key for its module", transporttest.Creds{ClientID: "dev/mod", Password: sign(t, res("dev", "mod"), devKey, hour)}, gateway.ReasonBadSignature},
		{"module token for its device", transporttest.Creds{ClientID: "dev", Password: sign(t, res("dev", "mod"), keyOf(mod.Authentication), hour)}, gateway.ReasonWrongAudience},
		{"edge key as its child", transporttest.Creds{ClientID: "kid", Password: sign(t, res("kid", ""), keyOf(edge.Authentication), hour)}, gateway.ReasonBadSignature},
		{"child key as its edge", transporttest.Creds{ClientID: "edge1", Password: sign(t, res("edge1", ""), keyOf(kid.Authentication), hour)}, gateway.ReasonBadSignature},
		{"disabled device", transporttest.Creds{ClientID: "off", Password: sign(t, res("off", ""), keyOf(off.Authentication), hour)}, gateway.ReasonDisabled},
		{"unknown device", transporttest.Creds{ClientID: "ghost", Password: sign(t, res("ghost", ""), sas.GenerateKey(), hour)}, gateway.ReasonNotFound},
		{"expired beyond the skew", transporttest.Creds{ClientID: "dev", Password: sign(t, res("dev", ""), devKey, time.Now().Add(-time.Hour))}, gateway.ReasonExpired},
		{"X.509: registered thumbprint", transporttest.Creds{ClientID: "thumb", Cert: &selfSigned}, ""},
		{"X.509: another self-signed certificate", transporttest.Creds{ClientID: "thumb", Cert: &other}, gateway.ReasonBadCert},
		{"X.509: leaf of the hub's root", transporttest.Creds{ClientID: "cadev", Cert: x.Good}, ""},
		{"X.509: CN of another id", transporttest.Creds{ClientID: "cadev", Cert: x.OtherCN}, gateway.ReasonBadCert},
		{"X.509: a CA certificate as the leaf", transporttest.Creds{ClientID: "cadev", Cert: x.CAAsLeaf}, gateway.ReasonBadCert},
		{"X.509: unknown root", transporttest.Creds{ClientID: "cadev", Cert: x.UnknownRoot}, gateway.ReasonBadCert},
		{"X.509: certificate for a SAS device", transporttest.Creds{ClientID: "dev", Cert: &sasCert}, gateway.ReasonWrongMethod},
		{"X.509: a token for a certificate device", transporttest.Creds{ClientID: "cadev", Password: sign(t, res("cadev", ""), devKey, hour)}, gateway.ReasonWrongMethod},
	}
	ep := e.endpoint()
	for _, tr := range transporttest.Transports {
		for _, a := range attacks {
			t.Run(tr+"/"+a.name, func(t *testing.T) {
				hubAttempt(t, e, ep, tr, a.creds, a.reason)
			})
		}
		for _, tt := range []struct {
			name string
			by   time.Duration
		}{{"X.509: expired", 2 * time.Hour}, {"X.509: not yet valid", -time.Hour}} {
			t.Run(tr+"/"+tt.name, func(t *testing.T) {
				clock.Advance(tt.by)
				defer clock.Advance(-tt.by)
				hubAttempt(t, e, ep, tr, transporttest.Creds{ClientID: "cadev", Cert: x.Good}, gateway.ReasonBadCert)
			})
		}
	}
}

// hubAttempt sends one message and checks the outcome: acknowledged and
// stored when reason is "", else refused, counted and nothing stored.
func hubAttempt(t *testing.T, e *env, ep transporttest.Endpoint, tr string, c transporttest.Creds, reason gateway.AuthReason) {
	t.Helper()
	ep.Check(t, transporttest.Server{
		Stored:   func() int64 { return int64(e.storedCount()) },
		Failures: func(r string) uint64 { return e.gw.AuthFailures()[gateway.AuthReason(r)] },
	}, tr, c, string(reason))
}

// serviceDo sends a service REST request signed with iothubowner's key
// and returns the status and body.
func (e *env) serviceDo(method, path string, body []byte, header http.Header) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.https.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	// The path goes as written: an escaped '/' must reach the server.
	req.URL.RawPath = strings.SplitN(path, "?", 2)[0]
	for k, v := range header {
		req.Header[k] = v
	}
	tok, err := sas.Sign(testHost, e.svcKey, hub.ServicePolicy, time.Now().Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Content-Type", "application/json")
	hc := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool, ServerName: "localhost"}},
		// A redirect (a cleaned path) is an answer, not to be followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSecurityHubDeviceIDs: ids that try path traversal are refused by
// the registry, the device API and MQTT alike; ids are case-sensitive
// everywhere (as in IoT Hub), and ids with characters NATS gives a
// meaning ('.', '*', '$') stay apart from one another.
func TestSecurityHubDeviceIDs(t *testing.T) {
	e := newEnv(t)
	e.device("host", false)
	const q = "?api-version=2021-04-12"
	t.Run("registry refuses traversal", func(t *testing.T) {
		before := e.h.ListDevices(0)
		for _, path := range []string{
			"/devices/..%2Fx", "/devices/a%2Fb", "/devices/%2E%2E%2Fdevices%2Fx", "/devices/a%00b",
			"/devices/a%20b", "/devices/a~b", "/devices/" + strings.Repeat("x", 129),
		} {
			status, body := e.serviceDo(http.MethodPut, path+q, []byte(`{"deviceId":"x"}`), nil)
			if status != http.StatusBadRequest && status != http.StatusNotFound && status != http.StatusMovedPermanently {
				t.Errorf("PUT %s: %d %s, want a refusal", path, status, body)
			}
		}
		after := e.h.ListDevices(0)
		if len(after) != len(before) {
			t.Errorf("%d devices created", len(after)-len(before))
		}
	})
	t.Run("registry refuses ids a URL cannot name", func(t *testing.T) {
		for _, id := range []string{".", ".."} {
			if _, err := e.h.CreateOrUpdateDevice(ctxT(t), identity.Device{DeviceID: id}, "", false); err == nil {
				t.Errorf("device %q created", id)
			}
			if _, err := e.h.CreateOrUpdateModule(ctxT(t), identity.Module{DeviceID: "host", ModuleID: id}, ""); err == nil {
				t.Errorf("module %q created", id)
			}
		}
	})
	t.Run("the id in the body must be the path's", func(t *testing.T) {
		status, body := e.serviceDo(http.MethodPut, "/devices/victim"+q, []byte(`{"deviceId":"../victim"}`), nil)
		if status < 400 {
			t.Errorf("PUT /devices/victim with another id in the body: %d %s", status, body)
		}
	})

	lower, upper := e.device("case1", false), e.device("CASE1", false)
	if keyOf(lower.Authentication) == keyOf(upper.Authentication) {
		t.Fatal("devices differing in case share a key")
	}
	t.Run("case: registry", func(t *testing.T) {
		if status, _ := e.serviceDo(http.MethodGet, "/devices/Case1"+q, nil, nil); status != http.StatusNotFound {
			t.Errorf("GET /devices/Case1: %d, want 404", status)
		}
		status, body := e.serviceDo(http.MethodGet, "/devices/CASE1"+q, nil, nil)
		var got identity.Device
		if status != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil || got.DeviceID != "CASE1" {
			t.Errorf("GET /devices/CASE1: %d %s", status, body)
		}
		if status, _ := e.serviceDo(http.MethodGet, "/twins/Case1"+q, nil, nil); status != http.StatusNotFound {
			t.Errorf("GET /twins/Case1: %d, want 404", status)
		}
	})
	ep := e.endpoint()
	for _, tr := range transporttest.Transports {
		t.Run("case: "+tr, func(t *testing.T) {
			hubAttempt(t, e, ep, tr, transporttest.Creds{ClientID: "CASE1",
				Password: sign(t, sas.DeviceResource(testHost, "CASE1", ""), keyOf(lower.Authentication), time.Now().Add(time.Hour))}, gateway.ReasonBadSignature)
			hubAttempt(t, e, ep, tr, transporttest.Creds{ClientID: "Case1",
				Password: sign(t, sas.DeviceResource(testHost, "Case1", ""), keyOf(lower.Authentication), time.Now().Add(time.Hour))}, gateway.ReasonNotFound)
			hubAttempt(t, e, ep, tr, transporttest.Creds{ClientID: "CASE1",
				Password: sign(t, sas.DeviceResource(testHost, "CASE1", ""), keyOf(upper.Authentication), time.Now().Add(time.Hour))}, "")
		})
		t.Run("traversal: "+tr, func(t *testing.T) {
			c := transporttest.Creds{ClientID: "case1", Password: sign(t, sas.DeviceResource(testHost, "case1", ""), keyOf(lower.Authentication), time.Now().Add(time.Hour))}
			if tr == transporttest.HTTPS {
				c.Path = "/devices/..%2Fcase1/messages/events"
				hubAttempt(t, e, ep, tr, c, gateway.ReasonBadClientID)
				return
			}
			c.ClientID = "../case1"
			hubAttempt(t, e, ep, tr, c, gateway.ReasonBadClientID)
		})
	}
	got := e.stored(telemetrySubject("CASE1", ""))
	if len(got) != len(transporttest.Transports) || got[0].DeviceID != "CASE1" || got[0].System.ConnDeviceID != "CASE1" {
		t.Errorf("CASE1's stream holds %d messages, want its %d own", len(got), len(transporttest.Transports))
	}
	if n := len(e.stored(telemetrySubject("case1", ""))); n != 0 {
		t.Errorf("case1's stream holds %d messages, want none", n)
	}

	t.Run("ids NATS gives a meaning stay apart", func(t *testing.T) {
		a := e.device("a", false)
		e.module("a", "b")
		dot, star, dollar := e.device("a.b", false), e.device("*", false), e.device("$a", false)
		for _, d := range []identity.Device{dot, star, dollar, a} {
			hubAttempt(t, e, ep, transporttest.MQTT, transporttest.Creds{ClientID: d.DeviceID,
				Password: sign(t, sas.DeviceResource(testHost, d.DeviceID, ""), keyOf(d.Authentication), time.Now().Add(time.Hour))}, "")
		}
		for _, s := range []struct{ d, m string }{{"a.b", ""}, {"*", ""}, {"$a", ""}, {"a", ""}} {
			if got := e.stored(telemetrySubject(s.d, s.m)); len(got) != 1 || got[0].DeviceID != s.d {
				t.Errorf("%s's stream: %d messages, want its own 1", s.d, len(got))
			}
		}
		if n := len(e.stored(telemetrySubject("a", "b"))); n != 0 {
			t.Errorf("module a/b's stream holds %d messages of others", n)
		}
	})
}

// TestSecurityHubMalformedTwins: twin changes that break the rules are
// refused with 400 and a message naming the fault, over the service API
// and MQTT, and the twin is left as it was. So are $edgeHub routes and
// TTLs the edge would refuse to apply.
func TestSecurityHubMalformedTwins(t *testing.T) {
	e := newEnv(t)
	e.device("dev", false)
	e.device("edge1", true)
	const q = "?api-version=2021-04-12"
	deep := strings.Repeat(`{"a":`, 12) + "1" + strings.Repeat("}", 12)
	big := `{"properties":{"desired":{"big":"` + strings.Repeat("x", twin.MaxSectionSize) + `"}}}`
	desired := func(s string) string { return `{"properties":{"desired":` + s + `}}` }
	tests := []struct {
		name, method, path, body, want string
	}{
		{"not JSON", http.MethodPatch, "/twins/dev", `{nope`, "JSON"},
		{"an array", http.MethodPatch, "/twins/dev", `[1]`, "JSON object"},
		{"data after the object", http.MethodPatch, "/twins/dev", desired(`{"a":1}`) + `{}`, "after"},
		{"reported by the service", http.MethodPatch, "/twins/dev", `{"properties":{"reported":{"x":1}}}`, "reported"},
		{"tags not an object", http.MethodPatch, "/twins/dev", `{"tags":[1]}`, "tags"},
		{"key starting with $", http.MethodPatch, "/twins/dev", desired(`{"$version":99}`), "$"},
		{"key with a dot", http.MethodPatch, "/twins/dev", desired(`{"a.b":1}`), "'.'"},
		{"key with a space", http.MethodPatch, "/twins/dev", desired(`{"a b":1}`), "space"},
		{"nested too deep", http.MethodPatch, "/twins/dev", desired(deep), "deep"},
		{"too large", http.MethodPatch, "/twins/dev", big, "bytes"},
		{"replace, nested too deep", http.MethodPut, "/twins/dev", desired(deep), "deep"},
		{"$edgeHub: a route that does not parse", http.MethodPatch, "/twins/edge1/modules/$edgeHub",
			desired(`{"routes":{"r1":"FROM /messages/* INTO nowhere"}}`), "routes"},
		{"$edgeHub: routes not an object", http.MethodPatch, "/twins/edge1/modules/$edgeHub", desired(`{"routes":["FROM /messages/* INTO $upstream"]}`), "routes"},
		{"$edgeHub: a route priority out of range", http.MethodPatch, "/twins/edge1/modules/$edgeHub",
			desired(`{"routes":{"r1":{"route":"FROM /messages/* INTO $upstream","priority":12}}}`), "routes"},
		{"$edgeHub: negative TTL", http.MethodPatch, "/twins/edge1/modules/$edgeHub",
			desired(`{"storeAndForwardConfiguration":{"timeToLiveSecs":-1}}`), "timeToLiveSecs"},
		{"$edgeHub: TTL past int32", http.MethodPatch, "/twins/edge1/modules/$edgeHub",
			desired(`{"storeAndForwardConfiguration":{"timeToLiveSecs":4294967296}}`), "timeToLiveSecs"},
		{"$edgeHub: replace with a bad route", http.MethodPut, "/twins/edge1/modules/$edgeHub",
			desired(`{"routes":{"r1":"SELECT * FROM devices"}}`), "routes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, m, _ := strings.Cut(strings.TrimPrefix(tt.path, "/twins/"), "/modules/")
			before, err := e.h.GetTwin(d, m)
			if err != nil {
				t.Fatal(err)
			}
			status, body := e.serviceDo(tt.method, tt.path+q, []byte(tt.body), http.Header{"If-Match": {"*"}})
			if status != http.StatusBadRequest || !strings.Contains(body, tt.want) {
				t.Errorf("%d %s, want 400 naming %q", status, body, tt.want)
			}
			after, err := e.h.GetTwin(d, m)
			if err != nil {
				t.Fatal(err)
			}
			if after.ETag != before.ETag || after.DesiredVersion() != before.DesiredVersion() {
				t.Errorf("twin changed: etag %s -> %s, desired version %d -> %d", before.ETag, after.ETag, before.DesiredVersion(), after.DesiredVersion())
			}
		})
	}
	t.Run("$edgeHub: good routes are taken", func(t *testing.T) {
		status, body := e.serviceDo(http.MethodPatch, "/twins/edge1/modules/$edgeHub"+q,
			[]byte(desired(`{"routes":{"r1":{"route":"FROM /messages/* INTO $upstream","priority":1}},"storeAndForwardConfiguration":{"timeToLiveSecs":60}}`)), nil)
		if status != http.StatusOK {
			t.Fatalf("%d %s", status, body)
		}
	})

	t.Run("reported over MQTT", func(t *testing.T) {
		d := e.device("mqttdev", false)
		nc, err := e.endpoint().Dial(transporttest.MQTT, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		rc := transporttest.NewRaw(nc)
		if code, err := rc.Connect("mqttdev", testHost+"/mqttdev/?api-version=2021-04-12", e.deviceToken(d)); err != nil || code != 0 {
			t.Fatalf("CONNACK %d, %v", code, err)
		}
		if err := rc.Subscribe(1, topic.FilterTwinResponses); err != nil {
			t.Fatal(err)
		}
		for i, patch := range transporttest.BadPatches(twin.MaxSectionSize) {
			before, err := e.h.GetTwin("mqttdev", "")
			if err != nil {
				t.Fatal(err)
			}
			status, body, err := rc.TwinReported(fmt.Sprint(i), []byte(patch))
			if err != nil {
				t.Fatal(err)
			}
			if status != http.StatusBadRequest || !bytes.Contains(body, []byte("errorCode")) {
				t.Errorf("patch %.40s: %d %s, want 400 with an errorCode", patch, status, body)
			}
			after, err := e.h.GetTwin("mqttdev", "")
			if err != nil {
				t.Fatal(err)
			}
			if after.ETag != before.ETag {
				t.Errorf("patch %.40s changed the twin", patch)
			}
		}
	})
}

// TestSecurityHubTopicAccess: at the hub a device uses its own topics
// only, and an edge those of its scope only, over TLS and WebSocket;
// each abuse drops the connection with nothing stored.
func TestSecurityHubTopicAccess(t *testing.T) {
	e := newEnv(t)
	dev := e.device("dev", false)
	edge := e.device("edge1", true)
	e.device("kid", false)
	e.device("stranger", false)
	if err := e.h.AddChildren(ctxT(t), "edge1", []string{"kid"}, false); err != nil {
		t.Fatal(err)
	}
	creds := func(d identity.Device) transporttest.Creds {
		return transporttest.Creds{ClientID: d.DeviceID, Password: e.deviceToken(d)}
	}
	pub := func(name string) func(*transporttest.Raw) error {
		return func(rc *transporttest.Raw) error { return rc.Publish(name, []byte("x"), 1, 1) }
	}
	sub := func(f string) func(*transporttest.Raw) error {
		return func(rc *transporttest.Raw) error { return rc.Subscribe(1, f) }
	}
	abuses := []struct {
		who identity.Device
		transporttest.Abuse
	}{
		{edge, transporttest.Abuse{Name: "edge: telemetry of a device outside its scope", Act: pub(transporttest.TelemetryTopic("stranger", ""))}},
		{edge, transporttest.Abuse{Name: "edge: twin of a device outside its scope", Act: pub(topic.OBOTwinGet("stranger", "1"))}},
		{edge, transporttest.Abuse{Name: "edge: reported properties outside its scope", Act: pub(topic.OBOTwinReported("stranger", "1"))}},
		{edge, transporttest.Abuse{Name: "edge: methods of a device outside its scope", Act: sub(topic.OBOMethodFilter("stranger"))}},
		{edge, transporttest.Abuse{Name: "edge: C2D of a device outside its scope", Act: sub(topic.C2DFilter("stranger"))}},
		{edge, transporttest.Abuse{Name: "edge: a module outside its scope", Act: pub(transporttest.TelemetryTopic("kid", "nope"))}},
	}
	for _, a := range transporttest.TopicAbuses("dev", "kid") {
		abuses = append(abuses, struct {
			who identity.Device
			transporttest.Abuse
		}{dev, a})
	}
	for _, tr := range []string{transporttest.MQTT, transporttest.WebSocket} {
		for _, a := range abuses {
			t.Run(tr+"/"+a.Name, func(t *testing.T) {
				stored := e.storedCount()
				if err := e.endpoint().Drops(tr, creds(a.who), a.Act); err != nil {
					t.Fatal(err)
				}
				if n := e.storedCount(); n != stored {
					t.Errorf("%d messages stored", n-stored)
				}
			})
		}
	}
}
