package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/message"
)

// fakeObserver records what the gateway reports.
type fakeObserver struct {
	mu       sync.Mutex
	pubacks  []time.Duration
	accepted int
	refused  map[string]int
}

func newFakeObserver() *fakeObserver { return &fakeObserver{refused: map[string]int{}} }

func (o *fakeObserver) ObservePuback(d time.Duration) {
	o.mu.Lock()
	o.pubacks = append(o.pubacks, d)
	o.mu.Unlock()
}

func (o *fakeObserver) ObserveAccepted(n int) {
	o.mu.Lock()
	o.accepted += n
	o.mu.Unlock()
}

func (o *fakeObserver) ObserveRefused(reason string, n int) {
	o.mu.Lock()
	o.refused[reason] += n
	o.mu.Unlock()
}

// observed is what the observer saw so far.
type observed struct {
	pubacks  []time.Duration
	accepted int
	refused  map[string]int
}

func (o *fakeObserver) snapshot() observed {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := map[string]int{}
	for k, v := range o.refused {
		r[k] = v
	}
	return observed{pubacks: append([]time.Duration(nil), o.pubacks...), accepted: o.accepted, refused: r}
}

// commitTime is what the fake backend's commit costs, so PUBACK
// latencies have a floor the test can check.
const commitTime = 20 * time.Millisecond

func TestObserverMQTT(t *testing.T) {
	tests := []struct {
		name      string
		telemetry func(context.Context, Identity, []*message.Message) error
		publish   func(rc *rawClient)
		// what the client must see: n PUBACKs, or a dropped connection
		pubacks int
		closed  bool
		want    func(t *testing.T, o observed)
		settled func(o observed) bool // when the observer has seen it all
		maxSize int
	}{
		{
			name: "qos1 telemetry and a twin request",
			telemetry: func(context.Context, Identity, []*message.Message) error {
				time.Sleep(commitTime) // the cost of a synced commit
				return nil
			},
			publish: func(rc *rawClient) {
				for i := uint16(1); i <= 3; i++ {
					rc.publish("devices/dev1/messages/events/", []byte("m"), 1, i)
				}
				rc.publish("$iothub/twin/GET/?$rid=1", nil, 1, 4)
			},
			pubacks: 4,
			settled: func(o observed) bool { return len(o.pubacks) == 4 },
			want: func(t *testing.T, o observed) {
				if o.accepted != 3 {
					t.Errorf("accepted %d, want 3 (the twin request is not telemetry)", o.accepted)
				}
				for i, d := range o.pubacks[:3] {
					if d < commitTime || d > time.Minute {
						t.Errorf("puback %d latency %v, want at least the commit's %v", i, d, commitTime)
					}
				}
			},
		},
		{
			name: "qos0 telemetry has no puback",
			publish: func(rc *rawClient) {
				rc.publish("devices/dev1/messages/events/", []byte("m"), 0, 0)
			},
			settled: func(o observed) bool { return o.accepted == 1 },
			want: func(t *testing.T, o observed) {
				if len(o.pubacks) != 0 {
					t.Errorf("%d pubacks observed for QoS 0", len(o.pubacks))
				}
			},
		},
		{
			name: "store full",
			telemetry: func(context.Context, Identity, []*message.Message) error {
				return fmt.Errorf("store: full: %w", ErrQuotaExceeded)
			},
			publish: func(rc *rawClient) {
				rc.publish("devices/dev1/messages/events/", []byte("m"), 1, 1)
			},
			closed:  true,
			settled: func(o observed) bool { return o.refused[RefusedQuota] > 0 },
			want: func(t *testing.T, o observed) {
				if o.refused[RefusedQuota] != 1 || len(o.pubacks) != 0 || o.accepted != 0 {
					t.Errorf("observed %+v, want one quota refusal and nothing else", o)
				}
			},
		},
		{
			name:    "too large",
			maxSize: 16,
			publish: func(rc *rawClient) {
				rc.publish("devices/dev1/messages/events/", []byte(strings.Repeat("x", 17)), 1, 1)
			},
			closed:  true,
			settled: func(o observed) bool { return o.refused[RefusedTooLarge] > 0 },
			want: func(t *testing.T, o observed) {
				if o.refused[RefusedTooLarge] != 1 || len(o.pubacks) != 0 || o.accepted != 0 {
					t.Errorf("observed %+v, want one too-large refusal and nothing else", o)
				}
			},
		},
		{
			name: "backend says too large",
			telemetry: func(context.Context, Identity, []*message.Message) error {
				return ErrMessageTooLarge
			},
			publish: func(rc *rawClient) {
				rc.publish("devices/dev1/messages/events/", []byte("m"), 1, 1)
			},
			closed:  true,
			settled: func(o observed) bool { return o.refused[RefusedTooLarge] > 0 },
			want: func(t *testing.T, o observed) {
				if o.refused[RefusedTooLarge] != 1 || o.refused[RefusedQuota] != 0 {
					t.Errorf("observed %+v, want one too-large refusal", o)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := newFakeObserver()
			e := newEnv(t, func(c *Config) {
				c.Observer = obs
				if tt.maxSize > 0 {
					c.MaxMessageSize = tt.maxSize
				}
			})
			e.be.addDevice("dev1", device{})
			e.be.telemetry = tt.telemetry
			rc := e.dialRaw(t)
			rc.mustConnect(e, "dev1")
			tt.publish(rc)
			if tt.closed {
				rc.expectClosed()
			}
			for i := 0; i < tt.pubacks; i++ {
				pk, err := rc.read(10 * time.Second)
				if err != nil {
					t.Fatalf("puback %d: %v", i, err)
				}
				if pk.FixedHeader.Type != packets.Puback {
					t.Fatalf("got packet type %d, want PUBACK", pk.FixedHeader.Type)
				}
			}
			checkFor(t, 10*time.Second, func() error {
				if o := obs.snapshot(); !tt.settled(o) {
					return fmt.Errorf("observer saw %+v", o)
				}
				return nil
			})
			tt.want(t, obs.snapshot())
		})
	}
}

func TestObserverHTTPS(t *testing.T) {
	obs := newFakeObserver()
	e := newEnv(t, func(c *Config) {
		c.Observer = obs
		c.MaxMessageSize = 16
	})
	e.be.addDevice("dev1", device{})
	c := e.httpClient()
	const path = "/devices/dev1/messages/events?api-version=2021-04-12"

	steps := []struct {
		name         string
		body         string
		wantStatus   int
		wantAccepted int
		wantTooLarge int
	}{
		{"accepted", "small", http.StatusNoContent, 1, 0},
		{"too large", strings.Repeat("x", 17), http.StatusRequestEntityTooLarge, 1, 1},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			resp, body := e.do(t, c, "POST", path, e.token("dev1", time.Hour), nil, st.body)
			if resp.StatusCode != st.wantStatus {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, st.wantStatus)
			}
			o := obs.snapshot()
			if o.accepted != st.wantAccepted || o.refused[RefusedTooLarge] != st.wantTooLarge {
				t.Errorf("observed %+v, want accepted %d, too large %d", o, st.wantAccepted, st.wantTooLarge)
			}
			if len(o.pubacks) != 0 {
				t.Errorf("HTTPS reported %d pubacks", len(o.pubacks))
			}
		})
	}
}

func TestConnectedClients(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	e.be.addDevice("dev2", device{})
	want := func(direct int) {
		t.Helper()
		checkFor(t, 10*time.Second, func() error {
			if d, v := e.srv.ConnectedClients(); d != direct || v != 0 {
				return fmt.Errorf("connected clients %d direct, %d via edge; want %d, 0", d, v, direct)
			}
			return nil
		})
	}
	want(0)
	c1 := e.mustConnect("dev1")
	e.mustConnect("dev2")
	want(2)
	c1.Disconnect(0)
	want(1)

	src := MetricsSource(func() *Server { return e.srv })
	if got := src.ConnectedClients(); got.Direct != 1 || got.ViaEdge != 0 {
		t.Errorf("MetricsSource clients = %+v, want 1 direct", got)
	}
	none := MetricsSource(func() *Server { return nil })
	if got := none.ConnectedClients(); got.Direct != 0 || got.ViaEdge != 0 || none.AuthFailures() != nil {
		t.Errorf("MetricsSource of no server = %+v, %v; want nothing", got, none.AuthFailures())
	}
}
