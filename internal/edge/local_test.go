package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/status"
	"outpost/internal/status/statustest"
)

// methodEnv is an offline edge with a calling module, a child and a
// module that answer methods, and a child that never connects.
type methodEnv struct {
	te        *testEdge
	callerKey string
	caller    *client.Client
	child2Key string
	release   chan struct{} // closed to let "slow" answer
}

func newMethodEnv(t *testing.T) *methodEnv {
	hub := newFakeHub(t)
	env := &methodEnv{release: make(chan struct{})}
	env.callerKey = hub.addModule("edge1", "caller")
	targetKey := hub.addModule("edge1", "target")
	childKey := hub.addDevice("child1")
	env.child2Key = hub.addDevice("child2")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	env.te = te
	t.Cleanup(func() {
		select {
		case <-env.release:
		default:
			close(env.release)
		}
	})

	echo := func(ctx context.Context, name string, payload []byte) (int, []byte) {
		return 200, []byte(fmt.Sprintf(`{"method":%q,"got":%s}`, name, payload))
	}
	slow := func(ctx context.Context, name string, payload []byte) (int, []byte) {
		select {
		case <-env.release:
		case <-ctx.Done():
		}
		return 200, []byte(`{}`)
	}
	for _, c := range []*client.Client{te.newClient("child1", "", childKey), te.newClient("edge1", "target", targetKey)} {
		c.OnMethod("echo", echo)
		c.OnMethod("slow", slow)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.Connect(ctx); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
	}
	env.caller = te.connect("edge1", "caller", env.callerKey)
	// Wait until both targets subscribed to methods.
	for _, target := range [][2]string{{"child1", ""}, {"edge1", "target"}} {
		checkFor(t, 5*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, _, err := env.caller.InvokeMethod(ctx, target[0], target[1], "echo", nil, time.Second)
			return err
		})
	}
	return env
}

// httpInvoke calls the edge's HTTPS method endpoint as ModuleClient does.
// httpInvoke calls a method through the edge's HTTPS endpoint; the
// response's body is read into the []byte and replayable.
func (env *methodEnv) httpInvoke(t *testing.T, callerID, key, deviceID, moduleID string, body any) (*http.Response, []byte) {
	t.Helper()
	te := env.te
	path := "/twins/" + deviceID
	if moduleID != "" {
		path += "/modules/" + moduleID
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequest("POST", "https://"+te.e.HTTPSAddr().String()+path+"/methods?api-version=2021-04-12", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if callerID != "" {
		req.Header.Set("x-ms-edge-moduleId", callerID)
	}
	if key != "" {
		d, m, _ := strings.Cut(callerID, "/")
		tok, err := sas.Sign(sas.DeviceResource(hubHost, d, m), key, "", time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", tok)
	}
	hc := te.httpsClient()
	defer hc.CloseIdleConnections()
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()
	res.Body = io.NopCloser(bytes.NewReader(out))
	return res, out
}

func TestLocalMethodsOffline(t *testing.T) {
	env := newMethodEnv(t)
	type result struct {
		status  int    // HTTP status (or InvokeError status)
		code    string // error code, "" on success
		payload string // on success
	}
	tests := []struct {
		name               string
		device, module     string
		method             string
		respT, connT       int
		connectChild2After time.Duration
		want               result
		maxTime            time.Duration
	}{
		{name: "module to child", device: "child1", method: "echo", want: result{200, "", `{"method":"echo","got":{"n":1}}`}},
		{name: "module to module", device: "edge1", module: "target", method: "echo", want: result{200, "", `{"method":"echo","got":{"n":1}}`}},
		{name: "target offline, no connect timeout", device: "child2", method: "echo", want: result{404, "DeviceNotOnline", ""}, maxTime: time.Second},
		{name: "target outside the scope", device: "stranger", method: "echo", want: result{404, "DeviceNotFound", ""}, maxTime: time.Second},
		{name: "module outside the scope", device: "child1", module: "nope", method: "echo", want: result{404, "ModuleNotFound", ""}, maxTime: time.Second},
		{name: "the edge itself", device: "edge1", method: "echo", want: result{404, "DeviceNotFound", ""}, maxTime: time.Second},
		{name: "response timeout", device: "child1", method: "slow", respT: 1, want: result{504, "GatewayTimeout", ""}, maxTime: 3 * time.Second},
		{name: "bad method name", device: "child1", method: "a/b", want: result{400, "ArgumentInvalid", ""}},
		{name: "target connects within connect timeout", device: "child2", method: "echo", connT: 10, connectChild2After: 300 * time.Millisecond,
			want: result{200, "", `{"method":"echo","got":{"n":1}}`}},
	}
	for _, door := range []string{"https", "mqtt"} {
		for _, tc := range tests {
			t.Run(door+"/"+tc.name, func(t *testing.T) {
				var wg sync.WaitGroup
				defer wg.Wait()
				if tc.connectChild2After > 0 {
					c2 := env.te.newClient("child2", "", env.child2Key)
					c2.OnMethod("echo", func(ctx context.Context, name string, payload []byte) (int, []byte) {
						return 200, []byte(fmt.Sprintf(`{"method":%q,"got":%s}`, name, payload))
					})
					wg.Add(1)
					go func() {
						defer wg.Done()
						time.Sleep(tc.connectChild2After) // the scenario: the target arrives late
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						defer cancel()
						if err := c2.Connect(ctx); err != nil {
							t.Errorf("child2 connect: %v", err)
						}
					}()
					// Close only after Connect returned: closing a client whose
					// Connect is still finishing makes that Connect fail.
					defer func() { wg.Wait(); c2.Close() }()
				}
				start := time.Now()
				var got result
				if door == "https" {
					res, body := env.httpInvoke(t, "edge1/caller", env.callerKey, tc.device, tc.module, map[string]any{
						"methodName": tc.method, "payload": map[string]int{"n": 1},
						"responseTimeoutInSeconds": tc.respT, "connectTimeoutInSeconds": tc.connT})
					got.status = res.StatusCode
					if res.StatusCode == 200 {
						var r struct {
							Status  int             `json:"status"`
							Payload json.RawMessage `json:"payload"`
						}
						if err := json.Unmarshal(body, &r); err != nil {
							t.Fatalf("%v: %s", err, body)
						}
						got.status, got.payload = r.Status, string(r.Payload)
					} else {
						// The refusal is in the full IoT Hub shape.
						got.code = statustest.CheckHTTP(t, res, &status.Error{Status: tc.want.status, Code: tc.want.code}).Code
					}
				} else {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					res, err := env.caller.Invoke(ctx, client.MethodCall{DeviceID: tc.device, ModuleID: tc.module, MethodName: tc.method,
						Payload: []byte(`{"n":1}`), ResponseTimeout: time.Duration(tc.respT) * time.Second, ConnectTimeout: time.Duration(tc.connT) * time.Second})
					cancel()
					var ie *client.InvokeError
					switch {
					case err == nil:
						got.status, got.payload = res.Status, string(res.Payload)
					case errors.As(err, &ie):
						got.status, got.code = ie.Status, ie.Code
					default:
						t.Fatalf("invoke: %v", err)
					}
				}
				if got != tc.want {
					t.Fatalf("got %+v, want %+v", got, tc.want)
				}
				if tc.maxTime > 0 && time.Since(start) > tc.maxTime {
					t.Fatalf("took %v, want under %v", time.Since(start), tc.maxTime)
				}
			})
		}
	}
}

func TestLocalMethodHTTPSAuth(t *testing.T) {
	env := newMethodEnv(t)
	body := map[string]any{"methodName": "echo"}
	tests := []struct {
		name, caller, key string
		want              int
	}{
		{"no header, no token", "", "", 401},
		{"header without token", "edge1/caller", "", 401},
		{"wrong key", "edge1/caller", env.child2Key, 401},
		{"token of another identity", "edge1/target", env.callerKey, 401},
		{"unknown caller", "edge1/ghost", env.callerKey, 401},
		{"right key", "edge1/caller", env.callerKey, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, out := env.httpInvoke(t, tc.caller, tc.key, "child1", "", body)
			if res.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, tc.want, out)
			}
			if tc.want == http.StatusUnauthorized {
				statustest.CheckHTTP(t, res, &status.Error{Status: tc.want, Code: status.CodeUnauthorized})
			}
		})
	}
}

// TestChildToChild covers both paths of docs/edge-local.md, offline:
// child → route → module → route → child, and a direct route from a
// child into another child's devicebound endpoint, stored until the
// child connects.
func TestChildToChild(t *testing.T) {
	hub := newFakeHub(t)
	aKey := hub.addDevice("childA")
	bKey := hub.addDevice("childB")
	cKey := hub.addDevice("childC")
	relayKey := hub.addModule("edge1", "relay")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	te.e.EdgeHubDesired([]byte(`{"routes":{
		"aToRelay":"FROM /messages/* WHERE $connectionDeviceId = 'childA' INTO BrokeredEndpoint(\"/modules/relay/inputs/fromA\")",
		"relayToB":"FROM /messages/modules/relay/outputs/toB INTO BrokeredEndpoint(\"/devices/childB/messages/devicebound\")",
		"aToC":"FROM /messages/* WHERE kind = 'direct' INTO BrokeredEndpoint(\"/devices/childC/messages/devicebound\")"}}`))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	relay := te.newClient("edge1", "relay", relayKey)
	relay.OnInput(func(input string, msg *message.Message) {
		out := &message.Message{Body: append([]byte("relayed:"), msg.Body...), Properties: map[string]string{"from": msg.Properties["from"]}}
		if err := relay.SendOutput(ctx, "toB", out); err != nil {
			t.Errorf("relay output: %v", err)
		}
	})
	if err := relay.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	type got struct {
		mu   sync.Mutex
		msgs []string
	}
	var gotB, gotC got
	recv := func(g *got) func(*message.Message) {
		return func(m *message.Message) {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.msgs = append(g.msgs, string(m.Body)+"|"+m.Properties["from"])
		}
	}
	b := te.newClient("childB", "", bKey)
	b.OnC2D(recv(&gotB))
	if err := b.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	a := te.connect("childA", "", aKey)
	const n = 5
	for i := range n {
		if err := a.Send(ctx, &message.Message{Body: []byte(fmt.Sprint(i)), Properties: map[string]string{"from": "childA"}}); err != nil {
			t.Fatal(err)
		}
		if err := a.Send(ctx, &message.Message{Body: []byte(fmt.Sprint("d", i)), Properties: map[string]string{"kind": "direct", "from": "childA"}}); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 10*time.Second, func() error {
		gotB.mu.Lock()
		defer gotB.mu.Unlock()
		if len(gotB.msgs) < 2*n {
			return fmt.Errorf("childB got %v", gotB.msgs)
		}
		return nil
	})
	gotB.mu.Lock()
	// Both of A's kinds of messages reach the relay (the first route has
	// no condition on kind), in order.
	for i := range n {
		if want := fmt.Sprintf("relayed:%d|childA", i); gotB.msgs[2*i] != want {
			t.Errorf("childB message %d: %q, want %q (all: %v)", 2*i, gotB.msgs[2*i], want, gotB.msgs)
		}
	}
	gotB.mu.Unlock()

	// childC was never connected: its messages wait in the store.
	if l := te.queueLen("/devices/childC/messages/devicebound"); l != n {
		t.Fatalf("childC's queue holds %d, want %d", l, n)
	}
	c := te.newClient("childC", "", cKey)
	c.OnC2D(recv(&gotC))
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		gotC.mu.Lock()
		defer gotC.mu.Unlock()
		if len(gotC.msgs) != n {
			return fmt.Errorf("childC got %v", gotC.msgs)
		}
		for i, m := range gotC.msgs {
			if m != fmt.Sprintf("d%d|childA", i) {
				return fmt.Errorf("childC got %v, want d0..d%d in order", gotC.msgs, n-1)
			}
		}
		return nil
	})
	checkFor(t, 5*time.Second, func() error {
		if l := te.queueLen("/devices/childC/messages/devicebound"); l != 0 {
			return fmt.Errorf("%d still queued for childC", l)
		}
		return nil
	})
}

// A local method request goes to the target once: when the target drops
// before answering, the call fails and is not replayed on its next
// connection, even within the connect timeout.
func TestLocalMethodAtMostOnce(t *testing.T) {
	env := newMethodEnv(t)
	first := make(chan struct{}, 1)
	c1 := env.te.newClient("child2", "", env.child2Key)
	c1.OnMethod("reboot", func(ctx context.Context, _ string, _ []byte) (int, []byte) {
		first <- struct{}{}
		<-ctx.Done()
		return 200, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c1.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := env.caller.Invoke(ctx, client.MethodCall{DeviceID: "child2", MethodName: "reboot",
			ResponseTimeout: 20 * time.Second, ConnectTimeout: 20 * time.Second})
		done <- err
	}()
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the target")
	}
	c1.Close() // drops with the call pending
	var mu sync.Mutex
	again := 0
	c2 := env.te.newClient("child2", "", env.child2Key)
	c2.OnMethod("reboot", func(context.Context, string, []byte) (int, []byte) {
		mu.Lock()
		again++
		mu.Unlock()
		return 200, nil
	})
	if err := c2.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	select {
	case err := <-done:
		var ie *client.InvokeError
		if !errors.As(err, &ie) || ie.Status != http.StatusNotFound || ie.Code != "DeviceNotOnline" {
			t.Fatalf("invoke: %v; want 404 DeviceNotOnline", err)
		}
	case <-ctx.Done():
		t.Fatal("the call did not end")
	}
	// The call has ended, so a replay would have happened already.
	mu.Lock()
	defer mu.Unlock()
	if again != 0 {
		t.Fatalf("the request was delivered again, %d times, to the next connection", again)
	}
}
