package dataplane

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/service"
	"outpost/internal/topic"
)

func TestTelemetryStoredBeforeAck(t *testing.T) {
	e := newEnv(t)
	d := e.device("dev-1", false)
	m := e.module("dev-1", "mod(1)")
	dc := e.deviceClient(d, nil)
	mc := e.moduleClient(m, nil)
	ctx := ctxT(t)
	before := time.Now().Add(-time.Second)

	tests := []struct {
		name       string
		send       func() error
		subject    string
		wantModule string
		wantOutput string
	}{
		{"device", func() error {
			return dc.Send(ctx, &message.Message{Body: []byte(`{"t":1}`), Properties: map[string]string{"alert": "yes"},
				System: message.System{MessageID: "m1", ContentType: "application/json", ConnDeviceID: "spoofed"}})
		}, telemetrySubject("dev-1", ""), "", ""},
		{"module", func() error {
			return mc.Send(ctx, &message.Message{Body: []byte("plain")})
		}, telemetrySubject("dev-1", "mod(1)"), "mod(1)", ""},
		{"module output", func() error {
			return mc.SendOutput(ctx, "out1", &message.Message{Body: []byte("routed")})
		}, telemetrySubject("dev-1", "mod(1)"), "mod(1)", "out1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := len(e.stored(tc.subject))
			if err := tc.send(); err != nil {
				t.Fatal(err)
			}
			// The PUBACK came back: the stream must hold the message now,
			// without waiting.
			got := e.stored(tc.subject)
			if len(got) != n+1 {
				t.Fatalf("stream holds %d messages on %s after the ack; want %d", len(got), tc.subject, n+1)
			}
			msg := got[n]
			if msg.DeviceID != "dev-1" || msg.ModuleID != tc.wantModule {
				t.Errorf("origin %s/%s; want dev-1/%s", msg.DeviceID, msg.ModuleID, tc.wantModule)
			}
			if msg.System.ConnDeviceID != "dev-1" || msg.System.ConnModuleID != tc.wantModule {
				t.Errorf("connection ids %q/%q; want dev-1/%q", msg.System.ConnDeviceID, msg.System.ConnModuleID, tc.wantModule)
			}
			if msg.System.EnqueuedTime.Before(before) || msg.System.EnqueuedTime.After(time.Now().Add(time.Second)) {
				t.Errorf("enqueued time %v is not now", msg.System.EnqueuedTime)
			}
			if msg.System.OutputName != tc.wantOutput {
				t.Errorf("output %q; want %q", msg.System.OutputName, tc.wantOutput)
			}
		})
	}
	got := e.stored(telemetrySubject("dev-1", ""))[0]
	if got.System.MessageID != "m1" || got.System.ContentType != "application/json" || got.Properties["alert"] != "yes" || string(got.Body) != `{"t":1}` {
		t.Errorf("stored message %+v lost properties or body", got)
	}
}

func TestSubjectsEncodeIDs(t *testing.T) {
	tests := []struct{ d, m string }{
		{"a.b", ""},
		{"x*>$ (1)", "m.1"},
		{"dev", "$edgeHub"},
	}
	for _, tc := range tests {
		t.Run(tc.d, func(t *testing.T) {
			got := strings.Split(strings.TrimPrefix(telemetrySubject(tc.d, tc.m), subjTelemetry), ".")
			want := []string{tc.d}
			if tc.m != "" {
				want = append(want, tc.m)
			}
			if len(got) != len(want) {
				t.Fatalf("subject tokens %q; want %d", got, len(want))
			}
			for i, tok := range got {
				b, err := base64.RawURLEncoding.DecodeString(tok)
				if err != nil || string(b) != want[i] {
					t.Errorf("token %q decodes to %q (%v); want %q", tok, b, err, want[i])
				}
			}
		})
	}
}

// An edge replays the same stored message (same store, sequence and
// stored time) after a crash: the stream keeps one, and the edge's
// duplicates are counted. A message of another store, or of the same
// store and sequence but another stored time (a wiped, restored or
// copied store), is new and kept. A device that is not an edge gets its
// properties kept as they are.
func TestEdgeReplayDeduplicated(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge-1", true)
	e.device("child-1", false)
	plain := e.device("plain-1", false)
	if err := e.h.AddChildren(context.Background(), "edge-1", []string{"child-1"}, false); err != nil {
		t.Fatal(err)
	}
	ec := e.deviceClient(edge, nil)
	pc := e.deviceClient(plain, nil)
	ctx := ctxT(t)

	const storeA, storeB = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	keyed := func(k edgeproto.ReplayKey, extra map[string]string) string {
		bag := map[string]string{}
		k.Put(bag, "edge-1")
		maps.Copy(bag, extra)
		return "devices/child-1/messages/events/" + topic.EncodeBag(bag)
	}
	first := edgeproto.ReplayKey{StoreID: storeA, Seq: 7, StoredAt: 1000}
	for i := range 3 {
		if err := ec.Publish(ctx, keyed(first, map[string]string{"k": "v"}), 1, []byte("once")); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	news := []struct {
		name string
		key  edgeproto.ReplayKey
	}{
		{"next sequence", edgeproto.ReplayKey{StoreID: storeA, Seq: 8, StoredAt: 1001}},
		{"same sequence, another store (wiped)", edgeproto.ReplayKey{StoreID: storeB, Seq: 7, StoredAt: 1000}},
		{"same store and sequence, another stored time (restored or copied)", edgeproto.ReplayKey{StoreID: storeA, Seq: 7, StoredAt: 2000}},
	}
	for _, n := range news {
		if err := ec.Publish(ctx, keyed(n.key, nil), 1, []byte(n.name)); err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
	}
	got := e.stored(telemetrySubject("child-1", ""))
	if len(got) != 1+len(news) {
		t.Fatalf("stream holds %d messages; want %d (only the replays dropped)", len(got), 1+len(news))
	}
	for i, n := range news {
		if string(got[i+1].Body) != n.name {
			t.Errorf("message %d is %q; want %q kept", i+1, got[i+1].Body, n.name)
		}
	}
	m := got[0]
	if m.System.EdgeID != "edge-1" || m.System.EdgeStore != storeA || m.System.EdgeSeq != 7 || string(m.Body) != "once" {
		t.Errorf("edge ids %q/%q/%d body %q; want edge-1/%s/7 once", m.System.EdgeID, m.System.EdgeStore, m.System.EdgeSeq, m.Body, storeA)
	}
	for _, k := range []string{edgeproto.BagEdgeID, edgeproto.BagStoreID, edgeproto.BagEdgeSeq, edgeproto.BagStoredAt} {
		if _, ok := m.Properties[k]; ok {
			t.Errorf("properties %v: replay key %s must be gone", m.Properties, k)
		}
	}
	if m.Properties["k"] != "v" {
		t.Errorf("properties %v: want k=v kept", m.Properties)
	}
	if m.System.ConnDeviceID != "child-1" {
		t.Errorf("connection device %q; want the child", m.System.ConnDeviceID)
	}
	met, err := e.p.NewMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if body, want := scrapeRecorder(t, e.p.MetricsHandler(met), "127.0.0.1:4000", ""), `outpost_hub_edge_duplicates_total{edge="edge-1"} 2`; !strings.Contains(body, want) {
		t.Errorf("metrics lack %q:\n%s", want, body)
	}

	// Not an edge: the keys are application properties like any other.
	for range 2 {
		if err := pc.Publish(ctx, "devices/plain-1/messages/events/"+topic.EncodeBag(map[string]string{edgeproto.BagEdgeSeq: "7"}), 1, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	pg := e.stored(telemetrySubject("plain-1", ""))
	if len(pg) != 2 || pg[0].Properties[edgeproto.BagEdgeSeq] != "7" || pg[0].System.EdgeID != "" {
		t.Errorf("plain device: %d messages, properties %v; want 2 with the keys kept", len(pg), pg[0].Properties)
	}
}

// An incomplete or malformed replay key is stored without de-duplication:
// two copies, never a loss.
func TestEdgeBadReplayKeyKept(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge-1", true)
	e.device("child-1", false)
	if err := e.h.AddChildren(context.Background(), "edge-1", []string{"child-1"}, false); err != nil {
		t.Fatal(err)
	}
	ec := e.deviceClient(edge, nil)
	ctx := ctxT(t)
	bags := []map[string]string{
		{edgeproto.BagEdgeID: "edge-1", edgeproto.BagEdgeSeq: "7"},
		{edgeproto.BagEdgeID: "edge-1", edgeproto.BagStoreID: "nothex", edgeproto.BagEdgeSeq: "7", edgeproto.BagStoredAt: "1"},
		{edgeproto.BagEdgeID: "edge-1", edgeproto.BagStoreID: "0123456789abcdef0123456789abcdef", edgeproto.BagEdgeSeq: "x", edgeproto.BagStoredAt: "1"},
	}
	for _, b := range bags {
		for range 2 {
			if err := ec.Publish(ctx, "devices/child-1/messages/events/"+topic.EncodeBag(b), 1, []byte("m")); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := e.stored(telemetrySubject("child-1", ""))
	if len(got) != 2*len(bags) {
		t.Fatalf("stream holds %d messages; want %d: a bad key must not drop anything", len(got), 2*len(bags))
	}
	for _, m := range got {
		if len(m.Properties) != 0 {
			t.Errorf("properties %v: the replay keys must not be stored", m.Properties)
		}
	}
}

// The hub answers a store's position with a sequence past every one it
// stored from that store, and counts a store found behind what it stored;
// a store that merely restarted, past what the hub stored but behind its
// record (which runs ahead), is not behind.
func TestStorePosition(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge-1", true)
	e.device("child-1", false)
	if err := e.h.AddChildren(context.Background(), "edge-1", []string{"child-1"}, false); err != nil {
		t.Fatal(err)
	}
	ec := e.deviceClient(edge, nil)
	ctx := ctxT(t)
	const sid = "0123456789abcdef0123456789abcdef"
	askReply := func(pos edgeproto.StorePosition) edgeproto.StorePositionReply {
		t.Helper()
		body, _ := json.Marshal(pos)
		raw, err := e.p.Extension(ctx, e.session("edge-1", ""), edgeproto.ReqStorePosition, body)
		if err != nil {
			t.Fatalf("store position %+v: %v", pos, err)
		}
		var r edgeproto.StorePositionReply
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	ask := func(pos edgeproto.StorePosition) uint64 {
		t.Helper()
		return askReply(pos).Next
	}
	if n := ask(edgeproto.StorePosition{StoreID: sid, Next: 1}); n != 1 {
		t.Errorf("new store: next %d; want 1", n)
	}
	bag := map[string]string{}
	edgeproto.ReplayKey{StoreID: sid, Seq: 500, StoredAt: 1}.Put(bag, "edge-1")
	if err := ec.Publish(ctx, "devices/child-1/messages/events/"+topic.EncodeBag(bag), 1, []byte("m")); err != nil {
		t.Fatal(err)
	}
	// The edge restarted after message 500: not behind, though the
	// record runs ahead of it; still told to move past the record.
	if r := askReply(edgeproto.StorePosition{StoreID: sid, Next: 501}); r.Behind || r.Next < 501 {
		t.Errorf("store restarted past what the hub stored: %+v; want not behind, next at least 501", r)
	}
	if c := e.p.EdgeCounts()["edge-1"]; c.StoreRewinds != 0 {
		t.Errorf("store rewinds counted %d for a restart; want 0", c.StoreRewinds)
	}
	// The store restored from before message 500.
	if r := askReply(edgeproto.StorePosition{StoreID: sid, Next: 100}); !r.Behind || r.Next <= 500 {
		t.Errorf("store behind the hub: %+v; want behind, next past 500", r)
	}
	if c := e.p.EdgeCounts()["edge-1"]; c.StoreRewinds != 1 {
		t.Errorf("store rewinds counted %d; want 1", c.StoreRewinds)
	}
	// At message 500 exactly: the hub has it, so behind.
	if r := askReply(edgeproto.StorePosition{StoreID: sid, Next: 500}); !r.Behind {
		t.Errorf("store whose next the hub stored: %+v; want behind", r)
	}
	// A store ahead of the hub: its own word stands, and is recorded.
	if n := ask(edgeproto.StorePosition{StoreID: sid, Next: 1 << 40}); n != 1<<40 {
		t.Errorf("store ahead: next %d; want %d", n, uint64(1<<40))
	}
	if n := ask(edgeproto.StorePosition{StoreID: sid, Next: 5}); n != 1<<40 {
		t.Errorf("after the store said 2^40: next %d; want %d", n, uint64(1<<40))
	}
	// Another store of the same edge has a record of its own.
	if n := ask(edgeproto.StorePosition{StoreID: "fedcba9876543210fedcba9876543210", Next: 3}); n != 3 {
		t.Errorf("another store: next %d; want 3", n)
	}
	for _, bad := range []string{`{"storeId":"x","next":1}`, `{"storeId":"` + sid + `","next":0}`, `not json`} {
		if _, err := e.p.Extension(ctx, e.session("edge-1", ""), edgeproto.ReqStorePosition, []byte(bad)); err == nil {
			t.Errorf("store position %s: accepted", bad)
		}
	}
}

// TestMonitorEvents reads the stream through the service REST API, as
// `outpost monitor-events` does.
func TestMonitorEvents(t *testing.T) {
	e := newEnv(t)
	d1 := e.device("d1", false)
	d2 := e.device("d2", false)
	c1 := e.deviceClient(d1, nil)
	c2 := e.deviceClient(d2, nil)
	ctx := ctxT(t)
	send := func(c *client.Client, body string) {
		t.Helper()
		if err := c.Send(ctx, &message.Message{Body: []byte(body), Properties: map[string]string{"p": body}}); err != nil {
			t.Fatal(err)
		}
	}
	send(c1, "old-1")

	// read collects n events with opts, sending with trigger once the
	// reader is in place.
	read := func(t *testing.T, opts service.EventsOptions, n int, trigger func()) []service.Event {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		var got []service.Event
		errc := make(chan error, 1)
		go func() {
			errc <- e.svc.MonitorEvents(rctx, opts, func() {
				if trigger != nil {
					go trigger()
				}
			}, func(ev service.Event) error {
				got = append(got, ev)
				if len(got) == n {
					cancel()
				}
				return nil
			})
		}()
		if err := <-errc; err != nil {
			t.Fatalf("monitor: %v", err)
		}
		if len(got) != n {
			t.Fatalf("got %d events; want %d", len(got), n)
		}
		return got
	}

	t.Run("from now", func(t *testing.T) {
		got := read(t, service.EventsOptions{}, 2, func() { send(c1, "new-1"); send(c2, "new-2") })
		if string(got[0].Body) != "new-1" || string(got[1].Body) != "new-2" {
			t.Errorf("bodies %q %q; want new-1 new-2", got[0].Body, got[1].Body)
		}
		if got[1].DeviceID != "d2" || got[1].Properties["p"] != "new-2" || got[1].System.EnqueuedTime.IsZero() || got[1].SequenceNumber == 0 {
			t.Errorf("event %+v lacks origin, properties, enqueued time or sequence", got[1])
		}
	})
	t.Run("from start, one device", func(t *testing.T) {
		got := read(t, service.EventsOptions{DeviceID: "d1", FromStart: true}, 2, nil)
		if string(got[0].Body) != "old-1" || string(got[1].Body) != "new-1" {
			t.Errorf("bodies %q %q; want old-1 new-1", got[0].Body, got[1].Body)
		}
	})
	t.Run("consumer group keeps its position", func(t *testing.T) {
		opts := service.EventsOptions{FromStart: true, ConsumerGroup: "analytics"}
		first := read(t, opts, 3, nil)
		if string(first[0].Body) != "old-1" || string(first[2].Body) != "new-2" {
			t.Fatalf("first read %q..%q; want old-1..new-2", first[0].Body, first[2].Body)
		}
		second := read(t, opts, 1, func() { send(c2, "new-3") })
		if string(second[0].Body) != "new-3" {
			t.Errorf("second read of the group starts at %q; want new-3, where the first stopped", second[0].Body)
		}
	})
	t.Run("unauthorized", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(e.https.Listener.Addr().String())
		bad, err := service.New(service.Config{RootCAs: e.pool,
			ConnectionString: "HostName=localhost:" + port + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + sas.GenerateKey()})
		if err != nil {
			t.Fatal(err)
		}
		err = bad.MonitorEvents(ctx, service.EventsOptions{}, nil, func(service.Event) error { return nil })
		if st, _ := serviceStatus(err); st != 401 {
			t.Errorf("monitor with a wrong key: %v; want 401", err)
		}
	})
}

func TestTelemetryOverHTTPS(t *testing.T) {
	e := newEnv(t)
	d := e.device("https-dev", false)
	path := "/devices/https-dev/messages/events?api-version=2021-04-12"
	resp := e.deviceHTTPBody(http.MethodPost, path, d, []byte("single"), http.Header{"Iothub-App-Color": {"red"}, "Iothub-Messageid": {"h1"}})
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("single: %d %s", resp.StatusCode, readAll(t, resp.Body))
	}
	batch := `[{"body":"` + base64.StdEncoding.EncodeToString([]byte("b1")) + `","properties":{"iothub-app-n":"1"}},` +
		`{"body":"` + base64.StdEncoding.EncodeToString([]byte("b2")) + `","properties":{"iothub-app-n":"2"}}]`
	resp = e.deviceHTTPBody(http.MethodPost, path, d, []byte(batch), http.Header{"Content-Type": {"application/vnd.microsoft.iothub.json"}})
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("batch: %d %s", resp.StatusCode, readAll(t, resp.Body))
	}
	got := e.stored(telemetrySubject("https-dev", ""))
	if len(got) != 3 {
		t.Fatalf("stored %d messages; want 3", len(got))
	}
	if string(got[0].Body) != "single" || got[0].Properties["color"] != "red" || got[0].System.MessageID != "h1" {
		t.Errorf("single message %q %v %+v", got[0].Body, got[0].Properties, got[0].System)
	}
	for i, m := range got[1:] {
		if string(m.Body) != fmt.Sprintf("b%d", i+1) || m.Properties["n"] != fmt.Sprint(i+1) || m.System.EnqueuedTime.IsZero() || m.System.ConnDeviceID != "https-dev" {
			t.Errorf("batch message %d: %q %v %+v", i, m.Body, m.Properties, m.System)
		}
	}
}
