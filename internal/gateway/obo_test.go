package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/internal/message"
	"outpost/internal/topic"
)

// TestOnBehalfOf: an edge connected to the hub acts for the identities in
// its scope, and only those.
func TestOnBehalfOf(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("edge1", device{edge: true, scope: []string{"child1", "edge1/mod1"}})
	e.be.addDevice("child1", device{})
	var (
		mu      sync.Mutex
		twinFor []Identity
	)
	e.be.twinGet = func(_ context.Context, id Identity) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		twinFor = append(twinFor, id)
		return []byte(`{"desired":{"$version":1},"reported":{"$version":1}}`), nil
	}
	edge := e.mustConnect("edge1")

	t.Run("telemetry for a child", func(t *testing.T) {
		wait(t, edge.Publish("devices/child1/messages/events/%24.mid=x1", 1, false, "from child"))
		wait(t, edge.Publish("devices/edge1/modules/mod1/messages/events/%24.on=out", 1, false, "from module"))
		wait(t, edge.Publish("devices/edge1/messages/events/", 1, false, "from edge"))
		msgs := e.be.storedMessages()
		if len(msgs) != 3 {
			t.Fatalf("stored %d", len(msgs))
		}
		for i, want := range []struct{ d, m string }{{"child1", ""}, {"edge1", "mod1"}, {"edge1", ""}} {
			got := msgs[i]
			if got.DeviceID != want.d || got.ModuleID != want.m || got.System.ConnDeviceID != want.d || got.System.ConnModuleID != want.m {
				t.Errorf("message %d: %s/%s conn %s/%s, want %s/%s", i, got.DeviceID, got.ModuleID,
					got.System.ConnDeviceID, got.System.ConnModuleID, want.d, want.m)
			}
		}
		if msgs[0].System.MessageID != "x1" || msgs[1].System.OutputName != "out" {
			t.Errorf("properties lost: %+v / %+v", msgs[0].System, msgs[1].System)
		}
	})

	t.Run("twin for a child", func(t *testing.T) {
		in := make(inbox, 1)
		wait(t, edge.Subscribe(topic.OBOTwinResponseFilter("child1"), 0, in.handler))
		wait(t, edge.Publish(topic.OBOTwinGet("child1", "g1"), 0, false, ""))
		if m := in.next(t); m.Topic() != "$iothub/child1/twin/res/200/?$rid=g1" {
			t.Fatalf("topic %q", m.Topic())
		}
		mu.Lock()
		last := twinFor[len(twinFor)-1]
		mu.Unlock()
		if last.ClientID() != "child1" || last.AuthMethod != AuthOnBehalfOf || last.Via != "edge1" {
			t.Fatalf("backend saw %+v", last)
		}
	})

	t.Run("pushes for a child go through the edge", func(t *testing.T) {
		methods := make(inbox, 1)
		wait(t, edge.Subscribe(topic.OBOMethodFilter("child1"), 0, func(c paho.Client, m paho.Message) {
			tp, err := topic.Parse(m.Topic())
			if err != nil || tp.OnBehalfOf != "child1" {
				t.Errorf("method topic %q: %v", m.Topic(), err)
				return
			}
			c.Publish(topic.OBOMethodResponse("child1", 200, tp.RID), 0, false, `"done"`)
			methods <- m
		}))
		c2d := make(inbox, 1)
		wait(t, edge.Subscribe(topic.C2DFilter("child1"), 1, c2d.handler))
		desired := make(inbox, 1)
		wait(t, edge.Subscribe(topic.OBOTwinDesiredFilter("child1"), 0, desired.handler))

		s := e.srv.Sessions("child1", "")
		if s == nil || s.Identity().Via != "edge1" {
			t.Fatalf("session for child1: %v", s)
		}
		if got := e.be.session(t, "child1"); got != s {
			t.Fatal("backend was not told the child is reachable")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		status, resp, err := s.InvokeMethod(ctx, "reboot", []byte("{}"))
		if err != nil || status != 200 || string(resp) != `"done"` {
			t.Fatalf("invoke: %d %s %v", status, resp, err)
		}
		if m := methods.next(t); m.Topic() != "$iothub/child1/methods/post/reboot/?$rid="+rid(t, m.Topic()) {
			t.Fatalf("method topic %q", m.Topic())
		}
		acked := s.SendC2D(&message.Message{Body: []byte("c2d")})
		if m := c2d.next(t); m.Topic() != "devices/child1/messages/devicebound/" {
			t.Fatalf("c2d topic %q", m.Topic())
		}
		if err := <-acked; err != nil {
			t.Fatal(err)
		}
		if err := s.SendDesired(4, []byte(`{"$version":4}`)); err != nil {
			t.Fatal(err)
		}
		if m := desired.next(t); m.Topic() != "$iothub/child1/twin/desired/?$version=4" {
			t.Fatalf("desired topic %q", m.Topic())
		}

		// The child connecting itself takes precedence over the edge.
		e.mustConnect("child1")
		checkFor(t, 5*time.Second, func() error {
			if got := e.srv.Sessions("child1", ""); got == nil || got.Identity().Via != "" {
				return fmt.Errorf("session %v", got)
			}
			return nil
		})

		s.Disconnect("child removed from scope")
		if err := s.SendDesired(5, nil); !errors.Is(err, ErrNotConnected) {
			t.Fatalf("after Disconnect: %v", err)
		}
	})

	t.Run("reconnecting edge keeps its on-behalf-of sessions", func(t *testing.T) {
		e.be.addDevice("edge2", device{edge: true, scope: []string{"child2"}})
		c := e.mustConnect("edge2")
		wait(t, c.Subscribe(topic.OBOTwinDesiredFilter("child2"), 0, nil))
		e.be.session(t, "child2")
		c.Disconnect(100)
		checkFor(t, 5*time.Second, func() error {
			if e.srv.Sessions("child2", "") != nil {
				return errors.New("child2 still reachable")
			}
			return nil
		})
		desired := make(inbox, 1)
		opts := e.pahoOptions("edge2", e.token("edge2", time.Hour)).SetDefaultPublishHandler(desired.handler)
		if _, err := e.connect(opts); err != nil {
			t.Fatal(err)
		}
		var s Session
		checkFor(t, 5*time.Second, func() error {
			if s = e.srv.Sessions("child2", ""); s == nil {
				return errors.New("child2 not reachable after reconnect")
			}
			return nil
		})
		if err := s.SendDesired(9, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if m := desired.next(t); m.Topic() != "$iothub/child2/twin/desired/?$version=9" {
			t.Fatalf("topic %q", m.Topic())
		}
	})

	for _, tt := range []struct {
		name string
		act  func(rc *rawClient)
	}{
		{"telemetry outside scope", func(rc *rawClient) { rc.publish("devices/stranger/messages/events/", []byte("x"), 1, 1) }},
		{"twin outside scope", func(rc *rawClient) { rc.publish(topic.OBOTwinGet("stranger", "1"), nil, 0, 0) }},
		{"subscribe outside scope", func(rc *rawClient) { rc.subscribe(1, topic.OBOMethodFilter("stranger")) }},
		{"c2d outside scope", func(rc *rawClient) { rc.subscribe(1, topic.C2DFilter("stranger")) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.be.storedMessages())
			rc := e.dialRaw(t)
			rc.mustConnect(e, "edge1")
			tt.act(rc)
			rc.expectClosed()
			if n := len(e.be.storedMessages()); n != before {
				t.Fatalf("stored %d, want %d", n, before)
			}
		})
	}
}

func rid(t *testing.T, topicName string) string {
	t.Helper()
	tp, err := topic.Parse(topicName)
	if err != nil {
		t.Fatal(err)
	}
	return tp.RID
}
