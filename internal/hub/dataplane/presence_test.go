package dataplane

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/client"
	"outpost/internal/clocktest"
	"outpost/internal/edgeproto"
	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/status"
)

// stateOf reads an identity's connection fields as the service API does.
func (e *env) stateOf(deviceID, moduleID string) (state string, since, active time.Time) {
	e.t.Helper()
	if moduleID == "" {
		d, err := e.h.GetDevice(deviceID)
		if err != nil {
			e.t.Fatal(err)
		}
		return d.ConnectionState, d.ConnectionStateUpdatedTime, d.LastActivityTime
	}
	m, err := e.h.GetModule(deviceID, moduleID)
	if err != nil {
		e.t.Fatal(err)
	}
	return m.ConnectionState, m.ConnectionStateUpdatedTime, m.LastActivityTime
}

// waitState polls until the identity's state is want, and returns since.
func (e *env) waitState(deviceID, moduleID, want string) time.Time {
	e.t.Helper()
	var since time.Time
	checkFor(e.t, 10*time.Second, func() error {
		var s string
		if s, since, _ = e.stateOf(deviceID, moduleID); s != want {
			return fmt.Errorf("%s: state %s; want %s", message.ClientID(deviceID, moduleID), s, want)
		}
		return nil
	})
	return since
}

// presenceIdle waits until the plane has written every presence event.
func (e *env) presenceIdle() {
	e.t.Helper()
	checkFor(e.t, 10*time.Second, func() error {
		if n := e.p.pres.queued.Load(); n != 0 {
			return fmt.Errorf("%d presence events not written", n)
		}
		return nil
	})
}

func TestPresenceOverMQTT(t *testing.T) {
	e := newEnv(t)
	d := e.device("dev1", false)
	m := e.module("dev1", "mod1")
	for _, tt := range []struct {
		name    string
		module  string
		connect func() *client.Client
		etag    string
	}{
		{"device", "", func() *client.Client { return e.deviceClient(d, nil) }, d.ETag},
		{"module", "mod1", func() *client.Client { return e.moduleClient(m, nil) }, m.ETag},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now().Add(-time.Second)
			c := tt.connect()
			since := e.waitState("dev1", tt.module, identity.Connected)
			if since.Before(before) {
				t.Fatalf("connectionStateUpdatedTime %v before the connection", since)
			}
			if tt.module == "" {
				got, _ := e.h.GetDevice("dev1")
				if got.ETag != tt.etag {
					t.Fatalf("etag %s; want %s (unchanged by presence)", got.ETag, tt.etag)
				}
			} else if got, _ := e.h.GetModule("dev1", "mod1"); got.ETag != tt.etag {
				t.Fatalf("etag %s; want %s (unchanged by presence)", got.ETag, tt.etag)
			}
			c.Close()
			gone := e.waitState("dev1", tt.module, identity.Disconnected)
			if !gone.After(since) {
				t.Fatalf("disconnected at %v, not after connected at %v", gone, since)
			}
		})
	}
}

// paho connects with the IoT SDKs' options and no automatic reconnect,
// so a taken-over connection stays gone.
func (e *env) paho(cid, password string, lost func(error)) paho.Client {
	e.t.Helper()
	return e.pahoWith(e.pahoOptions(cid, password).SetConnectionLostHandler(func(_ paho.Client, err error) {
		if lost != nil {
			lost(err)
		}
	}))
}

func (e *env) pahoOptions(cid, password string) *paho.ClientOptions {
	return paho.NewClientOptions().
		AddBroker("tls://127.0.0.1:" + e.mqttPort).
		SetClientID(cid).
		SetUsername(testHost + "/" + cid + "/?api-version=2021-04-12").
		SetPassword(password).
		SetTLSConfig(&tls.Config{RootCAs: e.pool, ServerName: "localhost"}).
		SetProtocolVersion(4).
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetConnectTimeout(10 * time.Second)
}

// pahoWith connects a paho client, disconnected at the test's end.
func (e *env) pahoWith(opts *paho.ClientOptions) paho.Client {
	e.t.Helper()
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		e.t.Fatalf("connect %s: %v", opts.ClientID, tok.Error())
	}
	e.t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// awaitEnd waits until the plane has handled the Disconnected of want,
// the first session to end.
func awaitEnd(t *testing.T, ended <-chan gateway.Session, want gateway.Session) {
	t.Helper()
	select {
	case s := <-ended:
		if s != want {
			t.Fatalf("ended session %v; want the first", s.Identity())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first session's Disconnected never came")
	}
}

// endWatch is the plane as the gateway's backend, reporting the sessions
// whose Disconnected (and, when started is set, Connected) the plane has
// handled.
type endWatch struct {
	*Plane
	ended   chan gateway.Session
	started chan gateway.Session
}

func (w endWatch) Connected(s gateway.Session) {
	w.Plane.Connected(s)
	if w.started != nil {
		w.started <- s
	}
}

func (w endWatch) Disconnected(s gateway.Session) {
	w.Plane.Disconnected(s)
	w.ended <- s
}

func TestPresenceTakeover(t *testing.T) {
	ended, started := make(chan gateway.Session, 8), make(chan gateway.Session, 8)
	e := newEnvWith(t, envOptions{wrap: func(p *Plane) gateway.Backend { return endWatch{Plane: p, ended: ended, started: started} }})
	d := e.device("dev1", false)
	tok := e.deviceToken(d)
	lost := make(chan error, 1)
	e.paho("dev1", tok, func(err error) { lost <- err })
	s1 := e.session("dev1", "")
	since1 := e.waitState("dev1", "", identity.Connected)

	second := e.paho("dev1", tok, nil)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("first connection not taken over")
	}
	// The gateway reports the new session after its CONNACK, so either
	// end of the takeover may reach the plane first; once both are
	// handled and written, the device is Connected.
	<-started // the first session's
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the second session's Connected never came")
	}
	awaitEnd(t, ended, s1)
	e.presenceIdle()
	state, since2, _ := e.stateOf("dev1", "")
	if state != identity.Connected || since2.Before(since1) {
		t.Fatalf("after takeover: %s since %v (first connected %v)", state, since2, since1)
	}
	second.Disconnect(0)
	e.waitState("dev1", "", identity.Disconnected)
}

func TestPresenceQueryConnected(t *testing.T) {
	e := newEnv(t)
	d := e.device("dev1", false)
	e.device("dev2", false)
	const q = "SELECT * FROM devices WHERE connectionState = 'Connected'"
	ids := func() string {
		page, err := e.h.Query(q, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		s := ""
		for _, it := range page.Items {
			s += fmt.Sprint(it["deviceId"]) + ";"
		}
		return s
	}
	if got := ids(); got != "" {
		t.Fatalf("before connecting: %q", got)
	}
	c := e.deviceClient(d, nil)
	checkFor(t, 10*time.Second, func() error {
		if got := ids(); got != "dev1;" {
			return fmt.Errorf("connected devices %q", got)
		}
		return nil
	})
	c.Close()
	checkFor(t, 10*time.Second, func() error {
		if got := ids(); got != "" {
			return fmt.Errorf("connected devices %q after close", got)
		}
		return nil
	})
}

func TestActivityThrottledOverMQTT(t *testing.T) {
	clk := clocktest.At(time.Now().UTC())
	e := newEnvWith(t, envOptions{hub: func(c *hub.Config) { c.Now = clk.Now }})
	d := e.device("dev1", false)

	ctx := ctxT(t)
	c := e.deviceClient(d, nil)
	e.waitState("dev1", "", identity.Connected)
	_, _, active0 := e.stateOf("dev1", "")
	send := func(n int) {
		t.Helper()
		for i := range n {
			if err := c.Send(ctx, &message.Message{Body: fmt.Appendf(nil, "m%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Within the resolution: telemetry writes nothing.
	send(20)
	clk.Advance(hub.DefaultActivityResolution)
	send(20)
	checkFor(t, 10*time.Second, func() error {
		if _, _, a := e.stateOf("dev1", ""); !a.After(active0) {
			return fmt.Errorf("lastActivityTime %v did not move past %v", a, active0)
		}
		return nil
	})
	if _, _, a := e.stateOf("dev1", ""); !a.Equal(clk.Now()) {
		t.Fatalf("lastActivityTime %v; want %v", a, clk.Now())
	}
	// HTTPS telemetry is activity too, but connects nothing; the device
	// stays Connected through its MQTT session.
	clk.Advance(hub.DefaultActivityResolution)
	if resp := e.deviceHTTPBody(http.MethodPost, "/devices/dev1/messages/events?api-version=2021-04-12", d, []byte("x"), nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("HTTPS telemetry: %s", resp.Status)
	}
	checkFor(t, 10*time.Second, func() error {
		if s, _, a := e.stateOf("dev1", ""); !a.Equal(clk.Now()) || s != identity.Connected {
			return fmt.Errorf("after HTTPS: %s, active %v; want Connected, %v", s, a, clk.Now())
		}
		return nil
	})
	c.Close()
	e.waitState("dev1", "", identity.Disconnected)
	// Connected, two activity writes, Disconnected: four writes for 41
	// messages. The bucket's last sequence counts them, dev1 being the
	// only identity written. A watcher would not: the bucket keeps one
	// value per key and skips one overwritten before it is sent.
	kv, err := e.h.JetStream().KeyValue(ctx, "presence")
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq; n != 4 {
		t.Fatalf("%d presence writes; want 4", n)
	}
}

func TestHTTPSDoesNotConnect(t *testing.T) {
	e := newEnv(t)
	d := e.device("dev1", false)
	if resp := e.deviceHTTPBody(http.MethodPost, "/devices/dev1/messages/events?api-version=2021-04-12", d, []byte("x"), nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("HTTPS telemetry: %s", resp.Status)
	}
	checkFor(t, 10*time.Second, func() error {
		if s, _, a := e.stateOf("dev1", ""); a.IsZero() || s != identity.Disconnected {
			return fmt.Errorf("after HTTPS telemetry: %s, active %v", s, a)
		}
		return nil
	})
}

// report sends an edge's presence report as the gateway would.
func (e *env) report(s gateway.Session, r edgeproto.PresenceReport) (edgeproto.PresenceReply, error) {
	e.t.Helper()
	body, err := json.Marshal(r)
	if err != nil {
		e.t.Fatal(err)
	}
	raw, err := e.p.Extension(ctxT(e.t), s, edgeproto.ReqPresence, body)
	if err != nil {
		return edgeproto.PresenceReply{}, err
	}
	var rep edgeproto.PresenceReply
	if err := json.Unmarshal(raw, &rep); err != nil {
		e.t.Fatalf("reply %s: %v", raw, err)
	}
	return rep, nil
}

// wantStates checks, once every presence event is written, the states
// of identities given as deviceId or deviceId/moduleId.
func (e *env) wantStates(want map[string]string) {
	e.t.Helper()
	e.presenceIdle()
	for cid, w := range want {
		d, m, _ := strings.Cut(cid, "/")
		if s, _, _ := e.stateOf(d, m); s != w {
			e.t.Errorf("%s: %s; want %s", cid, s, w)
		}
	}
}

// An edge's reports mark its children and their modules, within its
// scope only, until it reports them gone or its own link ends.
func TestPresenceThroughEdge(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge1", true)
	for _, id := range []string{"kid1", "kid2", "stranger"} {
		e.device(id, false)
	}
	e.module("kid1", "m1")
	if err := e.h.AddChildren(ctxT(t), "edge1", []string{"kid1", "kid2"}, false); err != nil {
		t.Fatal(err)
	}
	ec := e.deviceClient(edge, nil)
	edgeSince := e.waitState("edge1", "", identity.Connected)
	s := e.session("edge1", "")

	rep, err := e.report(s, edgeproto.PresenceReport{Full: true, Connected: []string{"kid1", "kid1/m1", "stranger", "edge1", "nobody", "bad/id/x"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rep.Refused, ","); got != "stranger,edge1,nobody,bad/id/x" {
		t.Fatalf("refused %q; want the ids outside the edge's scope", got)
	}
	e.wantStates(map[string]string{"kid1": identity.Connected, "kid1/m1": identity.Connected,
		"kid2": identity.Disconnected, "stranger": identity.Disconnected, "edge1": identity.Connected,
		"edge1/$edgeAgent": identity.Connected, "edge1/$edgeHub": identity.Connected})
	if _, since, _ := e.stateOf("edge1", ""); !since.Equal(edgeSince) {
		t.Errorf("the edge's own record changed: since %v, was %v", since, edgeSince)
	}
	kidSince := e.waitState("kid1", "", identity.Connected)

	t.Run("changes", func(t *testing.T) {
		if _, err := e.report(s, edgeproto.PresenceReport{Connected: []string{"kid2"}, Disconnected: []string{"kid1/m1", "stranger"}}); err != nil {
			t.Fatal(err)
		}
		e.wantStates(map[string]string{"kid1": identity.Connected, "kid1/m1": identity.Disconnected, "kid2": identity.Connected})
	})
	t.Run("full report replaces the set, keeping the times of those still there", func(t *testing.T) {
		if _, err := e.report(s, edgeproto.PresenceReport{Full: true, Connected: []string{"kid1"}}); err != nil {
			t.Fatal(err)
		}
		e.wantStates(map[string]string{"kid1": identity.Connected, "kid2": identity.Connected})
		if _, since, _ := e.stateOf("kid1", ""); !since.Equal(kidSince) {
			t.Errorf("kid1 since %v after a report of no change; want %v", since, kidSince)
		}
	})
	t.Run("link ends", func(t *testing.T) {
		ec.Close()
		e.waitState("edge1", "", identity.Disconnected)
		e.wantStates(map[string]string{"kid1": identity.Disconnected, "kid2": identity.Disconnected,
			"edge1/$edgeAgent": identity.Disconnected, "edge1/$edgeHub": identity.Disconnected})
	})
	t.Run("only an edge reports", func(t *testing.T) {
		kc := e.deviceClient(e.device("kid3", false), nil)
		defer kc.Close()
		_, err := e.report(e.session("kid3", ""), edgeproto.PresenceReport{Full: true, Connected: []string{"kid3"}})
		if st, _ := gatewayStatus(err); st != http.StatusForbidden {
			t.Fatalf("a device's report: %v; want 403", err)
		}
	})
}

func gatewayStatus(err error) (int, string) {
	var se *status.Error
	if errors.As(err, &se) {
		return se.Status, se.Code
	}
	return 0, ""
}

// A takeover of the edge's own link ends what the old link reported,
// refuses the old link's late reports, and leaves what the new link
// reported alone when the old link's end arrives.
func TestPresenceEdgeTakeover(t *testing.T) {
	ended := make(chan gateway.Session, 8)
	e := newEnvWith(t, envOptions{wrap: func(p *Plane) gateway.Backend { return endWatch{Plane: p, ended: ended} }})
	edge := e.device("edge1", true)
	e.device("kid1", false)
	e.device("kid2", false)
	if err := e.h.AddChildren(ctxT(t), "edge1", []string{"kid1", "kid2"}, false); err != nil {
		t.Fatal(err)
	}
	tok := e.deviceToken(edge)
	lost := make(chan error, 1)
	e.paho("edge1", tok, func(err error) { lost <- err })
	s1 := e.session("edge1", "")
	// The gateway lists the session a moment before the plane has it
	// (until then a report is refused as of a replaced link).
	checkFor(t, 10*time.Second, func() error {
		_, err := e.report(s1, edgeproto.PresenceReport{Full: true, Connected: []string{"kid1", "kid2"}})
		return err
	})
	e.waitState("kid1", "", identity.Connected)
	e.waitState("kid2", "", identity.Connected)

	e.paho("edge1", tok, nil)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("first connection not taken over")
	}
	// The gateway lists the new session a moment before the plane has it.
	checkFor(t, 10*time.Second, func() error {
		s2 := e.gw.Sessions("edge1", "")
		if s2 == nil || s2 == s1 {
			return errors.New("no new session yet")
		}
		_, err := e.report(s2, edgeproto.PresenceReport{Full: true, Connected: []string{"kid2"}})
		return err
	})
	if _, err := e.report(s1, edgeproto.PresenceReport{Connected: []string{"kid1"}}); err == nil {
		t.Fatal("a report of the taken-over link was accepted")
	}
	awaitEnd(t, ended, s1)
	e.wantStates(map[string]string{"kid1": identity.Disconnected, "kid2": identity.Connected, "edge1": identity.Connected})
}
