package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/gateway/gatewaytest"
	"outpost/internal/message"
	"outpost/internal/route"
)

func TestNeverSyncedRefusesToServe(t *testing.T) {
	hub := newFakeHub(t)
	te := startEdge(t, hub, t.TempDir(), false)
	checkFor(t, 5*time.Second, func() error { return contains(te.logs.String(), "edge has never synced with its hub") })
	select {
	case <-te.e.Ready():
		t.Fatal("edge serves before its first sync")
	default:
	}
	if te.e.MQTTAddr() != nil {
		t.Fatal("edge listens before its first sync")
	}
	te.stop()
	select {
	case err := <-te.err:
		if !errors.Is(err, ErrNeverSynced) {
			t.Fatalf("Run: %v, want ErrNeverSynced", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

func TestFirstSyncWhenLinkComesUp(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), false)
	checkFor(t, 5*time.Second, func() error { return contains(te.logs.String(), "never synced") })
	te.up.setConnected(true)
	te.awaitReady()
	te.connect("child1", "", key)
	if st := te.e.Status(); !st.Synced || st.LastSync == nil {
		t.Fatalf("status after first sync: %+v", st)
	}
}

func TestOfflineAuthenticationAcrossRestart(t *testing.T) {
	hub := newFakeHub(t)
	childKey := hub.addDevice("child1")
	modKey := hub.addModule("edge1", "filter")
	dir := t.TempDir()

	te := startEdge(t, hub, dir, true)
	te.awaitReady()
	te.up.setConnected(false)

	tests := []struct {
		name, device, module, key string
		ok                        bool
	}{
		{"child by SAS", "child1", "", childKey, true},
		{"module by SAS", "edge1", "filter", modKey, true},
		{"child with wrong key", "child1", "", modKey, false},
		{"unknown device", "stranger", "", childKey, false},
		{"the edge itself", "edge1", "", edgeKey, false},
	}
	run := func(te *testEdge) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if tc.ok {
					c := te.connect(tc.device, tc.module, tc.key)
					c.Close()
				} else {
					te.refused(tc.device, tc.module, tc.key)
				}
			})
		}
	}
	run(te)
	te.close()

	// Restart on the same folder with no link at all.
	te2 := startEdge(t, hub, dir, false)
	te2.awaitReady()
	run(te2)
}

func TestCacheIsEncryptedAtRest(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	dir := t.TempDir()
	te := startEdge(t, hub, dir, true)
	te.awaitReady()
	raw, err := te.e.Store().Get([]byte(kvIdentities))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), key) || strings.Contains(string(raw), "child1") {
		t.Fatal("identity cache holds plain text")
	}
	te.close()

	// Another key (a regenerated edge key) cannot read it: the edge must
	// sync again and says so.
	te2 := startEdge(t, hub, dir, false, func(c *Config) { c.Key = "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMTI=" })
	checkFor(t, 5*time.Second, func() error { return contains(te2.logs.String(), "identity cache unusable") })
	checkFor(t, 5*time.Second, func() error { return contains(te2.logs.String(), "never synced") })
}

func TestResyncDropsRemovedAndAdmitsAdded(t *testing.T) {
	hub := newFakeHub(t)
	k1 := hub.addDevice("child1")
	k2 := hub.addDevice("child2")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()

	c1 := te.connect("child1", "", k1)
	c2 := te.connect("child2", "", k2)

	hub.removeDevice("child1")
	k3 := hub.addDevice("child3")
	// A reconnect of the link triggers a resync.
	te.up.setConnected(false)
	te.up.setConnected(true)
	checkFor(t, 5*time.Second, func() error {
		if c1.Connected() {
			return errors.New("removed child still connected")
		}
		return nil
	})
	if !c2.Connected() {
		t.Fatal("child2 was dropped too")
	}
	te.up.setConnected(false)
	te.refused("child1", "", k1)

	// child3 arrived after the last sync: its failed authentication
	// triggers a refresh once the link is up.
	te.up.setConnected(true)
	c3 := te.connect("child3", "", k3)
	c3.Close()
}

func TestTelemetryIsStoredBeforePuback(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)

	c := te.connect("child1", "", key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kicks := te.up.kicks.Load()
	const n = 20
	for i := range n {
		msg := &message.Message{Body: []byte(fmt.Sprintf("m%d", i)), Properties: map[string]string{"i": fmt.Sprint(i)}}
		if err := c.Send(ctx, msg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		// PUBACK means stored: no polling needed.
		if got := te.queueLen(UpstreamEndpoint); got != int64(i+1) {
			t.Fatalf("after PUBACK %d: $upstream holds %d", i, got)
		}
	}
	// The drain wakes on store commits: telemetry must not make it list
	// its queues again, as a Kick would.
	if k := te.up.kicks.Load() - kicks; k != 0 {
		t.Fatalf("telemetry kicked the uplink %d times; want 0", k)
	}
	r, err := te.e.Store().NewReader(UpstreamEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := r.Next(ctx, n)
	if err != nil || len(entries) != n {
		t.Fatalf("read back %d of %d: %v", len(entries), n, err)
	}
	for i, en := range entries {
		if string(en.Msg.Body) != fmt.Sprintf("m%d", i) || en.Msg.DeviceID != "child1" || en.Msg.System.ConnDeviceID != "child1" {
			t.Fatalf("entry %d: %+v", i, en.Msg)
		}
	}
}

func TestQuotaRefusalAndResume(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true, func(c *Config) { c.MaxStorageBytes = 8 << 10 })
	te.awaitReady()
	te.up.setConnected(false)

	c := te.connect("child1", "", key)
	body := make([]byte, 1000)
	acked := 0
	var sendErr error
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sendErr = c.Send(ctx, &message.Message{Body: body})
		cancel()
		if sendErr != nil {
			break
		}
		acked++
	}
	if sendErr == nil {
		t.Fatal("quota never reached")
	}
	if acked == 0 {
		t.Fatal("nothing accepted before the quota")
	}
	checkFor(t, 5*time.Second, func() error {
		return contains(te.logs.String(), "storage quota reached")
	})
	if got := te.queueLen(UpstreamEndpoint); got != int64(acked) {
		t.Fatalf("queue holds %d, %d were acknowledged", got, acked)
	}
	if te.e.Status().QuotaRefusals == 0 {
		t.Fatal("quota refusal not counted")
	}

	// Drain (as the link would) and send again.
	r, err := te.e.Store().NewReader(UpstreamEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	entries, err := r.Next(rctx, acked)
	rcancel()
	if err != nil || len(entries) != acked {
		t.Fatalf("read back %d of %d: %v", len(entries), acked, err)
	}
	if err := r.Ack(entries[len(entries)-1].Seq); err != nil {
		t.Fatal(err)
	}
	c2 := te.connect("child1", "", key)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c2.Send(ctx, &message.Message{Body: body}); err != nil {
		t.Fatalf("send after the backlog drained: %v", err)
	}
}

func TestEdgeHubDesiredTTLAndRoutes(t *testing.T) {
	hub := newFakeHub(t)
	dir := t.TempDir()
	te := startEdge(t, hub, dir, true)
	te.awaitReady()
	if got := te.e.Status().TTLSeconds; got != 7200 {
		t.Fatalf("default TTL %d, want 7200", got)
	}
	good := `{"schemaVersion":"1.0","routes":{"up":"FROM /messages/* INTO $upstream","toFilter":"FROM /messages/modules/sensor/outputs/out1 INTO BrokeredEndpoint(\"/modules/filter/inputs/in1\")"},"storeAndForwardConfiguration":{"timeToLiveSecs":60},"$version":3}`
	te.e.EdgeHubDesired([]byte(good))

	tests := []struct {
		name      string
		doc       string
		wantTTL   int64
		wantRoute string // a route that must be in force
		wantLog   string
	}{
		{"good config", `{}`, 60, "toFilter", ""},
		{"ttl zero refused", `{"storeAndForwardConfiguration":{"timeToLiveSecs":0}}`, 60, "toFilter", "timeToLiveSecs 0 out of range"},
		{"ttl above int32 refused", `{"storeAndForwardConfiguration":{"timeToLiveSecs":2147483648}}`, 60, "toFilter", "out of range"},
		{"ttl at int32 accepted", `{"storeAndForwardConfiguration":{"timeToLiveSecs":2147483647}}`, 2147483647, "toFilter", ""},
		{"bad route refused", `{"routes":{"broken":"FROM /messages/* INTO nowhere"}}`, 2147483647, "toFilter", `route \"broken\"`},
		{"ttl back to 120", `{"storeAndForwardConfiguration":{"timeToLiveSecs":120}}`, 120, "toFilter", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			te.e.EdgeHubDesired([]byte(tc.doc))
			st := te.e.Status()
			if st.TTLSeconds != tc.wantTTL {
				t.Fatalf("TTL %d, want %d", st.TTLSeconds, tc.wantTTL)
			}
			if _, ok := st.Routes[tc.wantRoute]; !ok {
				t.Fatalf("route %q not in force: %v", tc.wantRoute, st.Routes)
			}
			if _, ok := st.Routes["broken"]; ok {
				t.Fatal("a refused route is in force")
			}
			if tc.wantLog != "" {
				if err := contains(te.logs.String(), tc.wantLog); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	te.close()

	te2 := startEdge(t, hub, dir, false)
	te2.awaitReady()
	st := te2.e.Status()
	if st.TTLSeconds != 120 {
		t.Fatalf("TTL after restart %d, want 120", st.TTLSeconds)
	}
	if _, ok := st.Routes["toFilter"]; !ok {
		t.Fatalf("routes after restart: %v", st.Routes)
	}
}

func TestRouteToModuleInputDeliveredWhenModuleConnects(t *testing.T) {
	hub := newFakeHub(t)
	sensorKey := hub.addModule("edge1", "sensor")
	filterKey := hub.addModule("edge1", "filter")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	te.e.EdgeHubDesired([]byte(`{"routes":{"toFilter":"FROM /messages/modules/sensor/outputs/out1 INTO BrokeredEndpoint(\"/modules/filter/inputs/in1\")","up":"FROM /messages/modules/filter/* INTO $upstream"}}`))

	sensor := te.connect("edge1", "sensor", sensorKey)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const n = 10
	for i := range n {
		if err := sensor.SendOutput(ctx, "out1", &message.Message{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	// Not routed upstream: only filter's messages go there.
	if err := sensor.Send(ctx, &message.Message{Body: []byte("no route")}); err != nil {
		t.Fatal(err)
	}
	const ep = "/modules/filter/inputs/in1"
	if got := te.queueLen(ep); got != n {
		t.Fatalf("%s holds %d, want %d", ep, got, n)
	}
	if got := te.queueLen(UpstreamEndpoint); got != 0 {
		t.Fatalf("$upstream holds %d, want 0", got)
	}
	if got := te.e.Status().NoRoute; got != 1 {
		t.Fatalf("noRoute %d, want 1", got)
	}

	var mu sync.Mutex
	var got []string
	filter := te.newClient("edge1", "filter", filterKey)
	filter.OnInput(func(input string, msg *message.Message) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, input+":"+string(msg.Body))
	})
	if err := filter.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if l := te.queueLen(ep); l != 0 {
			return fmt.Errorf("%d still queued", l)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		if i >= len(got) || got[i] != fmt.Sprintf("in1:%d", i) {
			t.Fatalf("delivered %v, want in1:0..in1:%d in order", got, n-1)
		}
	}
}

// TestHTTPSTimeouts: the edge's HTTPS listener closes a connection whose
// request header never completes, and a keep-alive connection left idle,
// after Config.HTTPTimeouts.
func TestHTTPSTimeouts(t *testing.T) {
	te := startEdge(t, newFakeHub(t), t.TempDir(), true, func(c *Config) {
		c.HTTPTimeouts = gateway.HTTPTimeouts{ReadHeader: time.Second, Idle: 500 * time.Millisecond}
	})
	te.awaitReady()
	for _, send := range []string{
		"GET /status HTTP/1.1\r\nHost: localhost\r\nX-Half",
		"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n",
	} {
		gatewaytest.ClosedByServer(t, te.e.HTTPSAddr().String(), te.hub.pool(t), send)
	}
}

func TestStatusEndpoint(t *testing.T) {
	te := offlineBacklog(t, newFakeHub(t))
	res, err := te.httpsClient().Get("https://" + te.e.HTTPSAddr().String() + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, b)
	}
	var st struct {
		DeviceID string `json:"deviceId"`
		Link     struct {
			Connected      bool   `json:"connected"`
			Since          string `json:"since"`
			OfflinePeriods int    `json:"offlinePeriods"`
		} `json:"link"`
		Queues map[string]struct {
			Length           int64   `json:"length"`
			Bytes            int64   `json:"bytes"`
			OldestAgeSeconds float64 `json:"oldestAgeSeconds"`
			Priority         int     `json:"priority"`
			TTLSeconds       int64   `json:"ttlSeconds"`
		} `json:"queues"`
		LastSync         *time.Time        `json:"lastSync"`
		ConnectedClients []string          `json:"connectedClients"`
		TTLSeconds       int64             `json:"ttlSeconds"`
		Routes           map[string]string `json:"routes"`
		Expired          *uint64           `json:"expired"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	q := st.Queues[UpstreamEndpoint]
	switch {
	case st.DeviceID != "edge1":
		t.Errorf("deviceId %q", st.DeviceID)
	case st.Link.Connected || st.Link.OfflinePeriods != 1 || st.Link.Since == "":
		t.Errorf("link %+v", st.Link)
	case q.Length != 3 || q.Bytes == 0 || q.TTLSeconds != 7200:
		t.Errorf("$upstream queue %+v", q)
	case st.LastSync == nil:
		t.Error("no lastSync")
	case len(st.ConnectedClients) != 1 || st.ConnectedClients[0] != "child1":
		t.Errorf("connectedClients %v", st.ConnectedClients)
	case st.TTLSeconds != 7200:
		t.Errorf("ttlSeconds %d", st.TTLSeconds)
	case st.Routes[route.DefaultName] != route.DefaultText:
		t.Errorf("routes %v", st.Routes)
	case st.Expired == nil:
		t.Error("no expired count")
	}
}

func TestOfflineTwin(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	var mu sync.Mutex
	var replayed []string
	te.up.set(func(f *fakeUplink) {
		f.twinGet = func(ctx context.Context, d, m string) ([]byte, error) {
			return []byte(`{"desired":{"mode":"eco","$version":4},"reported":{"fw":"1.0","$version":7}}`), nil
		}
		f.twinReported = func(ctx context.Context, d, m string, patch []byte) (int64, error) {
			mu.Lock()
			defer mu.Unlock()
			replayed = append(replayed, string(patch))
			return 9, nil
		}
	})
	te.awaitReady()
	c := te.connect("child1", "", key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := c.GetTwin(ctx); err != nil {
		t.Fatal(err)
	}

	te.up.setConnected(false)
	v, err := c.UpdateReported(ctx, map[string]any{"temp": 21})
	if err != nil {
		t.Fatal(err)
	}
	if v != 8 {
		t.Fatalf("offline reported version %d, want 8", v)
	}
	desired, reported, err := c.GetTwin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if desired["mode"] != "eco" || reported["fw"] != "1.0" || fmt.Sprint(reported["temp"]) != "21" {
		t.Fatalf("offline twin: desired %v reported %v", desired, reported)
	}

	te.up.setConnected(true)
	checkFor(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(replayed) != 1 || !strings.Contains(replayed[0], `"temp":21`) {
			return fmt.Errorf("replayed %v", replayed)
		}
		return nil
	})
}

func TestCloudToChild(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()

	c := te.newClient("child1", "", key)
	c2d := make(chan string, 1)
	c.OnC2D(func(msg *message.Message) { c2d <- string(msg.Body) })
	c.OnMethod("reboot", func(ctx context.Context, name string, payload []byte) (int, []byte) {
		return 200, []byte(`{"ok":true}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		te.up.mu.Lock()
		defer te.up.mu.Unlock()
		if !te.up.attached["child1/"] {
			return errors.New("child not attached upstream")
		}
		return nil
	})
	// The client subscribes right after CONNACK; retry until it has.
	checkFor(t, 5*time.Second, func() error {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		defer ccancel()
		return te.e.DeliverC2D(cctx, "child1", &message.Message{Body: []byte("hello")})
	})
	if got := <-c2d; got != "hello" {
		t.Fatalf("c2d %q", got)
	}
	var status int
	var resp []byte
	checkFor(t, 5*time.Second, func() (err error) {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		defer ccancel()
		status, resp, err = te.e.InvokeMethod(cctx, "child1", "", "reboot", []byte(`{}`))
		return err
	})
	if status != 200 || string(resp) != `{"ok":true}` {
		t.Fatalf("method: %d %s", status, resp)
	}
	if err := te.e.DeliverC2D(ctx, "nobody", &message.Message{Body: []byte("x")}); err == nil {
		t.Fatal("c2d to a disconnected child succeeded")
	}
}
