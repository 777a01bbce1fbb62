package outposttest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/identity"
	"outpost/internal/service"
)

// stateAtHub reads an identity's connection state (deviceId or
// deviceId/moduleId) through the service API, as an operator would.
func (e *Env) stateAtHub(t testing.TB, cid string) (string, time.Time) {
	t.Helper()
	d, m, _ := strings.Cut(cid, "/")
	if m == "" {
		dev, err := e.svc.GetDevice(ctxFor(t), d)
		if err != nil {
			t.Fatalf("get device %s: %v", d, err)
		}
		return dev.ConnectionState, dev.ConnectionStateUpdatedTime
	}
	mod, err := e.svc.GetModule(ctxFor(t), d, m)
	if err != nil {
		t.Fatalf("get module %s: %v", cid, err)
	}
	return mod.ConnectionState, mod.ConnectionStateUpdatedTime
}

// awaitStates waits until the hub shows every identity in the state given.
func (e *Env) awaitStates(t testing.TB, timeout time.Duration, want map[string]string) {
	t.Helper()
	CheckFor(t, timeout, 20*time.Millisecond, func() error {
		var wrong []string
		for cid, w := range want {
			if s, _ := e.stateAtHub(t, cid); s != w {
				wrong = append(wrong, fmt.Sprintf("%s is %s, want %s", cid, s, w))
			}
		}
		if len(wrong) > 0 {
			return fmt.Errorf("at the hub: %s", strings.Join(wrong, "; "))
		}
		return nil
	})
}

// Children and modules connected through an edge show Connected at the
// hub while they are connected to the edge and its link is up.
func TestPresenceThroughEdge(t *testing.T) {
	t.Parallel()
	const (
		on  = identity.Connected
		off = identity.Disconnected
	)
	env := NewEnv(t)
	env.CreateEdge("edge1")
	env.CreateDevice("child1")
	env.CreateDevice("child2")
	env.AddChildren("edge1", "child1", "child2")
	mod, err := env.Service().CreateModule(ctxFor(t), identity.Module{DeviceID: "child1", ModuleID: "mod1"})
	if err != nil {
		t.Fatal(err)
	}
	node := env.StartEdge(t, "edge1")
	env.awaitStates(t, 10*time.Second, map[string]string{"edge1": on, "child1": off, "child2": off, "child1/mod1": off})

	c1 := node.Child(t, "child1")
	c2 := node.Child(t, "child2")
	mc, err := client.New(client.Config{
		ConnectionString: service.ModuleConnectionString(mod, HubHostName, node.MQTTAddr()),
		RootCAs:          env.RootCAs,
		Logger:           env.log.With("side", "child", "module", "child1/mod1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mc.Close() })
	if err := mc.Connect(ctxFor(t)); err != nil {
		t.Fatalf("module through the edge: %v", err)
	}
	start := time.Now()
	env.awaitStates(t, 10*time.Second, map[string]string{"child1": on, "child2": on, "child1/mod1": on})
	t.Logf("children Connected at the hub %v after they connected", time.Since(start).Round(time.Millisecond))

	c2.Close()
	env.awaitStates(t, 10*time.Second, map[string]string{"child2": off, "child1": on, "child1/mod1": on})

	node.Cut()
	start = time.Now()
	env.awaitStates(t, 10*time.Second, map[string]string{"edge1": off, "child1": off, "child1/mod1": off, "child2": off})
	t.Logf("edge and children Disconnected at the hub %v after the cut", time.Since(start).Round(time.Millisecond))
	if !c1.Connected() || !mc.Connected() {
		t.Fatal("the children lost the edge when its link was cut")
	}

	node.Restore()
	start = time.Now()
	env.awaitStates(t, 20*time.Second, map[string]string{"edge1": on, "child1": on, "child1/mod1": on, "child2": off})
	t.Logf("edge and children Connected at the hub again %v after the restore", time.Since(start).Round(time.Millisecond))

	t.Run("report out of scope changes nothing", func(t *testing.T) {
		// Another edge, straight at the hub, names edge1's children.
		env.CreateEdge("edge2")
		env.CreateDevice("child3")
		env.AddChildren("edge2", "child3")
		_, since1 := env.stateAtHub(t, "child1")
		ec, err := client.New(client.Config{
			ConnectionString: service.DeviceConnectionString(env.device("edge2"), env.HubMQTTHost(), ""),
			RootCAs:          env.RootCAs,
			Logger:           env.log.With("side", "edge2"),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ec.Close() })
		if err := ec.Connect(ctxFor(t)); err != nil {
			t.Fatal(err)
		}
		replies := make(chan string, 4)
		if err := ec.Subscribe("$outpost/res/#", 0, func(topic string, payload []byte) { replies <- topic + " " + string(payload) }); err != nil {
			t.Fatal(err)
		}
		request := func(rid string, body any) string {
			t.Helper()
			b, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			if err := ec.Publish(ctxFor(t), "$outpost/req/presence/?$rid="+rid, 1, b); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-replies:
				return r
			case <-time.After(10 * time.Second):
				t.Fatalf("no reply to presence request %s", rid)
				return ""
			}
		}
		r := request("1", map[string]any{"connected": []string{"child3", "child2", "child1/mod1"}, "disconnected": []string{"child1"}})
		if !strings.HasPrefix(r, "$outpost/res/200/") || !strings.Contains(r, `"refused":["child2","child1/mod1"]`) {
			t.Fatalf("reply %q; want 200 refusing child2 and child1/mod1", r)
		}
		// edge2's reports are written in order: once child3 is
		// Disconnected again, the first report is all written.
		env.awaitStates(t, 10*time.Second, map[string]string{"child3": on})
		request("2", map[string]any{"disconnected": []string{"child3"}})
		env.awaitStates(t, 10*time.Second, map[string]string{"child3": off})
		env.awaitStates(t, time.Second, map[string]string{"child1": on, "child1/mod1": on, "child2": off})
		if _, since := env.stateAtHub(t, "child1"); !since.Equal(since1) {
			t.Errorf("child1 connectionStateUpdatedTime moved from %v to %v", since1, since)
		}
	})

	c1.Close()
	mc.Close()
	env.awaitStates(t, 10*time.Second, map[string]string{"child1": off, "child1/mod1": off, "edge1": on})
}
