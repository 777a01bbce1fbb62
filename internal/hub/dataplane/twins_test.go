package dataplane

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/internal/client"
	"outpost/internal/service"
	"outpost/internal/topic"
)

type desiredUpdate struct {
	patch   map[string]any
	version int64
}

func TestTwinsOverMQTT(t *testing.T) {
	e := newEnv(t)
	d := e.device("twin-dev", false)
	m := e.module("twin-dev", "mod")
	ctx := ctxT(t)

	clients := map[string]*client.Client{}
	updates := map[string]chan desiredUpdate{}
	for _, cid := range []string{"device", "module"} {
		ch := make(chan desiredUpdate, 8)
		updates[cid] = ch
		setup := func(c *client.Client) {
			c.OnDesired(func(p map[string]any, v int64) { ch <- desiredUpdate{p, v} })
		}
		if cid == "device" {
			clients[cid] = e.deviceClient(d, setup)
		} else {
			clients[cid] = e.moduleClient(m, setup)
		}
	}

	for _, tc := range []struct{ name, module string }{{"device", ""}, {"module", "mod"}} {
		t.Run(tc.name, func(t *testing.T) {
			c := clients[tc.name]
			desired, reported, err := c.GetTwin(ctx)
			if err != nil {
				t.Fatalf("get twin: %v", err)
			}
			v0 := reported["$version"]
			if desired["$version"] == nil || v0 == nil {
				t.Fatalf("twin sections lack $version: %v %v", desired, reported)
			}
			v, err := c.UpdateReported(ctx, map[string]any{"temp": 21})
			if err != nil {
				t.Fatalf("reported patch: %v", err)
			}
			if fmt.Sprint(v) == fmt.Sprint(v0) {
				t.Errorf("reported version stayed %v after a patch", v)
			}
			tw, err := e.svc.GetTwin(ctx, "twin-dev", tc.module)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(tw.Properties.Reported["temp"]) != "21" {
				t.Errorf("service sees reported %v; want temp 21", tw.Properties.Reported)
			}

			// Desired through the service API reaches the connection now.
			e.session("twin-dev", tc.module)
			up, err := e.svc.UpdateTwin(ctx, "twin-dev", tc.module, service.NewTwinPatch(nil, map[string]any{"rate": 5}), "")
			if err != nil {
				t.Fatal(err)
			}
			select {
			case u := <-updates[tc.name]:
				if fmt.Sprint(u.patch["rate"]) != "5" {
					t.Errorf("desired patch %v; want rate 5", u.patch)
				}
				want, _ := up.Properties.Desired["$version"].(float64)
				if float64(u.version) != want {
					t.Errorf("desired patch version %d; want the twin's %v", u.version, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no desired update reached the device")
			}
			desired, _, err = c.GetTwin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := json.Marshal(desired["rate"]); string(b) != "5" {
				t.Errorf("twin GET desired %v; want rate 5", desired)
			}
		})
	}
}

func TestTwinReportedRefused(t *testing.T) {
	e := newEnv(t)
	d := e.device("bad-twin", false)
	c := e.deviceClient(d, nil)
	deep := map[string]any{}
	cur := deep
	for range 12 {
		n := map[string]any{}
		cur["a"] = n
		cur = n
	}
	if _, err := c.UpdateReported(ctxT(t), deep); err == nil {
		t.Fatal("a reported patch nested beyond the limit was accepted")
	}
}

// TestTwinReportedTextRefused: over MQTT, a reported patch whose text the
// JSON decoder would silently replace (invalid UTF-8, a lone surrogate),
// or with a '$' inside a key, is answered 400 and changes nothing.
func TestTwinReportedTextRefused(t *testing.T) {
	e := newEnv(t)
	d := e.device("text-dev", false)
	pub := e.twinPatcher(t, d.DeviceID, e.deviceToken(d), topic.FilterTwinResponses)
	patch := func(rid, body string) paho.Message { return pub(topic.TwinReported(rid), body) }
	if m := patch("ok", `{"temp":21}`); !strings.HasPrefix(m.Topic(), "$iothub/twin/res/204/?$rid=ok") {
		t.Fatalf("valid patch answered on %s", m.Topic())
	}
	tests := []struct{ name, body, msg string }{
		{"invalid UTF-8 value", "{\"temp\":\"\xff\"}", "patch is not valid UTF-8 at byte 9"},
		{"invalid UTF-8 key", "{\"t\xe9mp\":1}", "not valid UTF-8"},
		{"lone surrogate", `{"temp":"\udc00"}`, "lone UTF-16 surrogate"},
		{"dollar inside a key", `{"te$mp":1}`, `key "te$mp" contains '$'`},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rid := strconv.Itoa(i)
			m := patch(rid, tc.body)
			if want := "$iothub/twin/res/400/?$rid=" + rid; m.Topic() != want {
				t.Fatalf("answered on %s; want %s", m.Topic(), want)
			}
			var b struct {
				Message string `json:"message"`
			}
			if err := json.Unmarshal(m.Payload(), &b); err != nil || !strings.Contains(b.Message, tc.msg) {
				t.Fatalf("response %s (%v); want it to say %q", m.Payload(), err, tc.msg)
			}
		})
	}
	tw, err := e.svc.GetTwin(ctxT(t), "text-dev", "")
	if err != nil {
		t.Fatal(err)
	}
	if v := tw.Properties.Reported["$version"]; fmt.Sprint(v) != "2" || fmt.Sprint(tw.Properties.Reported["temp"]) != "21" {
		t.Fatalf("reported %v after the refusals; want only the valid patch, at $version 2", tw.Properties.Reported)
	}
}

// TestReportedVersionFloor: an edge's reported patch for its child may
// carry the "$version" the edge answered offline, and the child's
// reported version becomes at least that; a device patching its own
// twin, the edge included, is refused with 400 and its version stays.
func TestReportedVersionFloor(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge-v", true)
	e.device("kid-v", false)
	dev := e.device("plain-v", false)
	ctx := ctxT(t)
	if err := e.h.AddChildren(ctx, "edge-v", []string{"kid-v"}, false); err != nil {
		t.Fatal(err)
	}
	patcher := func(cid, token, filter string) func(pub, body string) string {
		p := e.twinPatcher(t, cid, token, filter)
		return func(pub, body string) string { return p(pub, body).Topic() }
	}
	reportedVersion := func(t *testing.T, id string) float64 {
		t.Helper()
		tw, err := e.svc.GetTwin(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		v, _ := tw.Properties.Reported["$version"].(float64)
		return v
	}

	forKid := patcher("edge-v", e.deviceToken(edge), topic.OBOTwinResponseFilter("kid-v"))
	for _, tc := range []struct {
		body string
		want int64
	}{
		{`{"a":1,"$version":50}`, 50}, // raised to the edge's
		{`{"a":2,"$version":10}`, 51}, // never lowered
		{`{"a":3}`, 52},
	} {
		rid := strconv.FormatInt(tc.want, 10)
		if got, want := forKid(topic.OBOTwinReported("kid-v", rid), tc.body), topic.OBOTwinResponse("kid-v", 204, rid, tc.want); got != want {
			t.Errorf("edge's patch %s for its child answered on %s; want %s", tc.body, got, want)
		}
	}
	if v := reportedVersion(t, "kid-v"); v != 52 {
		t.Errorf("child's reported version at the hub %v; want 52", v)
	}
	for i, bad := range []string{`{"a":1,"$version":0}`, `{"a":1,"$version":-3}`, `{"a":1,"$version":1.5}`, `{"a":1,"$version":"9"}`, `{"a":1,"$version":9007199254740992}`} {
		rid := "bad" + strconv.Itoa(i)
		if got, want := forKid(topic.OBOTwinReported("kid-v", rid), bad), topic.OBOTwinResponse("kid-v", 400, rid, 0); got != want {
			t.Errorf("edge's patch %s answered on %s; want %s", bad, got, want)
		}
	}

	self := func(name, cid, token string) {
		t.Run(name, func(t *testing.T) {
			patch := e.twinPatcher(t, cid, token, topic.FilterTwinResponses)
			before := reportedVersion(t, cid)
			if got, want := patch(topic.TwinReported("own"), `{"x":1,"$version":500}`).Topic(), topic.TwinResponse(400, "own", 0); got != want {
				t.Errorf("own patch with $version answered on %s; want %s", got, want)
			}
			if v := reportedVersion(t, cid); v != before {
				t.Errorf("reported version moved from %v to %v on a refused patch", before, v)
			}
		})
	}
	self("plain device", "plain-v", e.deviceToken(dev))
	self("edge's own twin", "edge-v", e.deviceToken(edge))
}

// twinPatcher connects cid, subscribes to filter (its twin responses) and
// returns a function that publishes body on a twin topic and returns the
// response.
func (e *env) twinPatcher(t *testing.T, cid, token, filter string) func(topicName, body string) paho.Message {
	t.Helper()
	c := e.paho(cid, token, nil)
	res := make(chan paho.Message, 8)
	if tok := c.Subscribe(filter, 0, func(_ paho.Client, m paho.Message) { res <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return func(topicName, body string) paho.Message {
		t.Helper()
		if tok := c.Publish(topicName, 0, false, []byte(body)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		select {
		case m := <-res:
			return m
		case <-time.After(10 * time.Second):
			t.Fatalf("no twin response to %s", topicName)
			return nil
		}
	}
}
