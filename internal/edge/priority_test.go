package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/message"
)

func TestSplitEndpoint(t *testing.T) {
	tests := []struct {
		ep   string
		sink string
		prio int
		ok   bool
	}{
		{"$upstream", "$upstream", 0, true},
		{"$upstream/p3", "$upstream", 3, true},
		{"$upstream/p0", "", 0, false},
		{"$upstream/p10", "", 0, false},
		{"$upstream/p03", "", 0, false},
		{"/modules/m/inputs/in1/p9", "/modules/m/inputs/in1", 9, true},
		{"/modules/m/inputs/p3", "/modules/m/inputs/p3", 0, true},
		{"/devices/d/messages/devicebound/p1", "/devices/d/messages/devicebound", 1, true},
		{"/devices/d/messages/p1", "", 0, false},
		{"junk", "", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.ep, func(t *testing.T) {
			s, p, ok := splitEndpoint(tc.ep)
			if ok != tc.ok || (ok && (s.String() != tc.sink || p != tc.prio)) {
				t.Fatalf("splitEndpoint(%q) = %q, %d, %v", tc.ep, s.String(), p, ok)
			}
		})
	}
}

const priorityRoutes = `{"routes":{
	"bulk":{"route":"FROM /messages/* WHERE $connectionDeviceId = 'bulk' INTO $upstream","priority":5},
	"alarm":{"route":"FROM /messages/* WHERE $connectionDeviceId = 'alarm' INTO $upstream","priority":1},
	"plain":"FROM /messages/* WHERE $connectionDeviceId = 'plain' INTO $upstream"}}`

// sendN sends n messages "{prefix}{i}" from c.
func sendN(t *testing.T, c interface {
	Send(context.Context, *message.Message) error
}, prefix string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		if err := c.Send(ctx, &message.Message{Body: []byte(fmt.Sprint(prefix, i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUpstreamPriorities: routes into $upstream with different priorities
// queue apart, and a drain by priority (as the link does it) serves newer
// high-priority data before an older low-priority backlog, each device
// in order.
func TestUpstreamPriorities(t *testing.T) {
	hub := newFakeHub(t)
	keys := map[string]string{}
	for _, d := range []string{"bulk", "alarm", "plain"} {
		keys[d] = hub.addDevice(d)
	}
	te := startEdge(t, hub, t.TempDir(), true, drainingUplink)
	te.awaitReady()
	te.up.setConnected(false)
	te.e.EdgeHubDesired([]byte(priorityRoutes))

	want := []string{"$upstream", "$upstream/p1", "$upstream/p5"}
	if got := te.e.UpstreamEndpoints(); !slices.Equal(got, want) {
		t.Fatalf("UpstreamEndpoints %v, want %v", got, want)
	}
	const backlog = 300
	sendN(t, te.connect("bulk", "", keys["bulk"]), "b", backlog)
	sendN(t, te.connect("alarm", "", keys["alarm"]), "a", 5)
	sendN(t, te.connect("plain", "", keys["plain"]), "p", 2)
	for ep, n := range map[string]int64{"$upstream": 2, "$upstream/p1": 5, "$upstream/p5": backlog} {
		if got := te.queueLen(ep); got != n {
			t.Fatalf("%s holds %d, want %d", ep, got, n)
		}
	}
	if p := te.e.Store().Stats()["$upstream/p5"].Priority; p != 5 {
		t.Fatalf("$upstream/p5 has store priority %d", p)
	}

	st := te.e.Store()
	var readers []*store.Reader
	byName := map[string]*store.Reader{}
	for _, ep := range te.e.UpstreamEndpoints() {
		r, err := st.NewReader(ep)
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, r)
		byName[ep] = r
	}
	var got []string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(got) < backlog+7 {
		entries, err := st.NextByPriority(ctx, readers, 64)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			got = append(got, string(e.Msg.Body))
		}
		if err := byName[entries[0].Endpoint].Ack(entries[len(entries)-1].Seq); err != nil {
			t.Fatal(err)
		}
		if len(got) == 7 {
			// New high-priority data overtakes the backlog still queued.
			sendN(t, te.connect("alarm", "", keys["alarm"]), "late", 1)
		}
	}
	head := []string{"p0", "p1", "a0", "a1", "a2", "a3", "a4"}
	if !slices.Equal(got[:7], head) {
		t.Fatalf("drain began %v, want %v", got[:7], head)
	}
	i := slices.Index(got, "late0")
	if i < 0 || i > 7+64 {
		t.Fatalf("late high-priority message drained at %d of %d", i, len(got))
	}
	var bulk []string
	for _, b := range got {
		if b[0] == 'b' {
			bulk = append(bulk, b)
		}
	}
	for j, b := range bulk {
		if b != fmt.Sprint("b", j) {
			t.Fatalf("backlog out of order at %d: %v", j, bulk[:j+1])
		}
	}
}

// TestUpstreamEndpointPriority: "$upstream" has store priority 0 even
// when no route into it has priority 0 (an endpoint nobody configured
// would have store.DefaultPriority and rank below "$upstream/pN"),
// whether the routes are restored at start or arrive as desired
// properties, and whether the link drains by priority or not.
func TestUpstreamEndpointPriority(t *testing.T) {
	const lowOnly = `{"bulk":{"route":"FROM /messages/* INTO $upstream","priority":5}}`
	tests := []struct {
		name   string
		stored bool // the routes are in the store when the edge starts
		drains bool
		want   map[string]int
	}{
		{"stored, by priority", true, true, map[string]int{"$upstream": 0, "$upstream/p5": 5}},
		{"stored, single queue", true, false, map[string]int{"$upstream": 0}},
		{"desired, by priority", false, true, map[string]int{"$upstream": 0, "$upstream/p5": 5}},
		{"desired, single queue", false, false, map[string]int{"$upstream": 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := newFakeHub(t)
			dir := t.TempDir()
			if tc.stored {
				st, err := store.Open(store.Config{Dir: dir})
				if err != nil {
					t.Fatal(err)
				}
				b, err := json.Marshal(storedConfig{Routes: json.RawMessage(lowOnly)})
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Put([]byte(kvConfig), b); err != nil {
					t.Fatal(err)
				}
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}
			}
			e, err := New(Config{
				HubHostName: hubHost, DeviceID: "edge1", Key: edgeKey, StorageDir: dir,
				NewUplink: func(UplinkDeps) (Uplink, error) { return &fakeUplink{hub: hub, drains: tc.drains}, nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.Close() })
			if !tc.stored {
				e.EdgeHubDesired([]byte(`{"routes":` + lowOnly + `}`))
			}
			// The link reads every endpoint listed, creating any the
			// routes did not.
			for _, ep := range e.UpstreamEndpoints() {
				if _, err := e.Store().NewReader(ep); err != nil {
					t.Fatal(err)
				}
			}
			got := map[string]int{}
			for ep, st := range e.Store().Stats() {
				if isUpstream(ep) {
					got[ep] = st.Priority
				}
			}
			if !maps.Equal(got, tc.want) {
				t.Fatalf("upstream endpoint priorities %v, want %v", got, tc.want)
			}
		})
	}
}

// TestUpstreamSingleQueueWithoutDrainer: a link that reads "$upstream"
// alone gets every route's messages there, whatever the priority.
func TestUpstreamSingleQueueWithoutDrainer(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("bulk")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	te.e.EdgeHubDesired([]byte(priorityRoutes))
	if got := te.e.UpstreamEndpoints(); !slices.Equal(got, []string{"$upstream"}) {
		t.Fatalf("UpstreamEndpoints %v", got)
	}
	sendN(t, te.connect("bulk", "", key), "b", 3)
	if got := te.queueLen(UpstreamEndpoint); got != 3 {
		t.Fatalf("$upstream holds %d", got)
	}
}

// TestLocalDeliveryPriorities: a module input fed by routes of different
// priorities gets the high-priority messages first when it connects.
func TestLocalDeliveryPriorities(t *testing.T) {
	hub := newFakeHub(t)
	bulkKey := hub.addDevice("bulk")
	alarmKey := hub.addDevice("alarm")
	filterKey := hub.addModule("edge1", "filter")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	te.e.EdgeHubDesired([]byte(`{"routes":{
		"bulk":{"route":"FROM /messages/* WHERE $connectionDeviceId = 'bulk' INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")","priority":7},
		"alarm":{"route":"FROM /messages/* WHERE $connectionDeviceId = 'alarm' INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")","priority":2}}}`))
	sendN(t, te.connect("bulk", "", bulkKey), "b", 100)
	sendN(t, te.connect("alarm", "", alarmKey), "a", 3)
	if got := te.queueLen("/modules/filter/inputs/in/p7"); got != 100 {
		t.Fatalf("bulk queue %d", got)
	}

	var mu sync.Mutex
	var got []string
	f := te.newClient("edge1", "filter", filterKey)
	f.OnInput(func(input string, m *message.Message) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, string(m.Body))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) < 103 {
			return fmt.Errorf("filter got %d", len(got))
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got[:3], []string{"a0", "a1", "a2"}) {
		t.Fatalf("delivery began %v", got[:5])
	}
	for i, b := range got[3:] {
		if b != fmt.Sprint("b", i) {
			t.Fatalf("bulk out of order at %d: %v", i, got[3:3+i+1])
		}
	}
}
