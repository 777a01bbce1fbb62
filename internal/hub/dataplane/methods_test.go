package dataplane

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/service"
	"outpost/internal/topic"
)

func TestDirectMethods(t *testing.T) {
	e := newEnv(t)
	d := e.device("meth-dev", false)
	m := e.module("meth-dev", "mod")
	e.device("offline-dev", false)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	handlers := func(c *client.Client) {
		c.OnMethod("echo", func(_ context.Context, _ string, p []byte) (int, []byte) { return 200, p })
		c.OnMethod("text", func(context.Context, string, []byte) (int, []byte) { return 201, []byte("not json") })
		c.OnMethod("slow", func(ctx context.Context, _ string, _ []byte) (int, []byte) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return 200, nil
		})
	}
	e.deviceClient(d, handlers)
	e.moduleClient(m, handlers)
	e.session("meth-dev", "")
	e.session("meth-dev", "mod")
	ctx := ctxT(t)

	tests := []struct {
		name        string
		device, mod string
		req         service.MethodRequest
		wantStatus  int // device status, or HTTP status of the error
		wantPayload string
		wantCode    string
	}{
		{"device round trip", "meth-dev", "", service.MethodRequest{MethodName: "echo", Payload: json.RawMessage(`{"x":[1,2]}`)}, 200, `{"x":[1,2]}`, ""},
		{"module round trip", "meth-dev", "mod", service.MethodRequest{MethodName: "echo", Payload: json.RawMessage(`"hi"`)}, 200, `"hi"`, ""},
		{"non-JSON answer becomes a string", "meth-dev", "", service.MethodRequest{MethodName: "text"}, 201, `"not json"`, ""},
		{"no handler", "meth-dev", "", service.MethodRequest{MethodName: "nope"}, 501, "", ""},
		{"not online", "offline-dev", "", service.MethodRequest{MethodName: "echo"}, http.StatusNotFound, "", "DeviceNotOnline"},
		{"unknown device", "ghost", "", service.MethodRequest{MethodName: "echo"}, http.StatusNotFound, "", "DeviceNotFound"},
		{"timeout", "meth-dev", "", service.MethodRequest{MethodName: "slow", ResponseTimeoutInSeconds: 1}, http.StatusGatewayTimeout, "", "GatewayTimeout"},
		{"bad method name", "meth-dev", "", service.MethodRequest{MethodName: "a/b"}, http.StatusBadRequest, "", "ArgumentInvalid"},
		{"timeout out of range", "meth-dev", "", service.MethodRequest{MethodName: "echo", ResponseTimeoutInSeconds: 301}, http.StatusBadRequest, "", "ArgumentInvalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := e.svc.InvokeMethod(ctx, tc.device, tc.mod, tc.req)
			if tc.wantCode != "" || tc.wantStatus >= 400 && tc.wantStatus != 501 {
				st, code := serviceStatus(err)
				if st != tc.wantStatus || (tc.wantCode != "" && code != tc.wantCode) {
					t.Fatalf("invoke: %v (status %d, code %q); want %d %s", err, st, code, tc.wantStatus, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("invoke: %v", err)
			}
			if res.Status != tc.wantStatus {
				t.Errorf("status %d; want %d", res.Status, tc.wantStatus)
			}
			if tc.wantPayload != "" && string(res.Payload) != tc.wantPayload {
				t.Errorf("payload %s; want %s", res.Payload, tc.wantPayload)
			}
		})
	}
}

// A call with a connect timeout waits for the device to come online.
func TestMethodWaitsForConnect(t *testing.T) {
	e := newEnv(t)
	d := e.device("late-dev", false)
	ctx := ctxT(t)
	type result struct {
		res service.MethodResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := e.svc.InvokeMethod(ctx, "late-dev", "", service.MethodRequest{MethodName: "ping", ConnectTimeoutInSeconds: 20, ResponseTimeoutInSeconds: 5})
		done <- result{res, err}
	}()
	c, err := e.newClient(serviceDeviceCS(e, d.DeviceID, d.Authentication.SymmetricKey.PrimaryKey), nil, func(c *client.Client) {
		c.OnMethod("ping", func(context.Context, string, []byte) (int, []byte) { return 200, []byte(`"pong"`) })
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.res.Status != 200 || string(r.res.Payload) != `"pong"` {
			t.Fatalf("invoke: %+v %v; want 200 pong", r.res, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("method call did not complete after the device connected")
	}
}

// An edge that subscribed to a child's method topic answers for it.
func TestMethodOnBehalfOf(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge-m", true)
	e.device("child-m", false)
	if err := e.h.AddChildren(context.Background(), "edge-m", []string{"child-m"}, false); err != nil {
		t.Fatal(err)
	}
	ec := e.deviceClient(edge, nil)
	ctx := ctxT(t)
	err := ec.Subscribe("$iothub/child-m/methods/post/#", 0, func(tp string, payload []byte) {
		p, err := topic.Parse(tp)
		if err != nil {
			t.Errorf("parse %s: %v", tp, err)
			return
		}
		_ = ec.Publish(context.Background(), topic.OBOMethodResponse("child-m", 200, p.RID), 0, []byte(`{"via":"edge"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	e.session("child-m", "")
	res, err := e.svc.InvokeMethod(ctx, "child-m", "", service.MethodRequest{MethodName: "hello", ResponseTimeoutInSeconds: 5})
	if err != nil || res.Status != 200 || string(res.Payload) != `{"via":"edge"}` {
		t.Fatalf("invoke through edge: %+v %v", res, err)
	}
}

// A method request goes to the device once: when the device drops
// before answering, the call fails and is not replayed on its next
// connection, even within the connect timeout.
func TestMethodAtMostOnce(t *testing.T) {
	e := newEnv(t)
	d := e.device("once-dev", false)
	ctx := ctxT(t)
	first := make(chan struct{}, 1)
	c1 := e.deviceClient(d, func(c *client.Client) {
		c.OnMethod("reboot", func(ctx context.Context, _ string, _ []byte) (int, []byte) {
			first <- struct{}{}
			<-ctx.Done()
			return 200, nil
		})
	})
	e.session("once-dev", "")
	done := make(chan error, 1)
	go func() {
		_, err := e.svc.InvokeMethod(ctx, "once-dev", "", service.MethodRequest{MethodName: "reboot", ConnectTimeoutInSeconds: 30, ResponseTimeoutInSeconds: 30})
		done <- err
	}()
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the device")
	}
	c1.Close() // drops with the call pending
	var again atomic.Int32
	e.deviceClient(d, func(c *client.Client) {
		c.OnMethod("reboot", func(context.Context, string, []byte) (int, []byte) {
			again.Add(1)
			return 200, nil
		})
	})
	select {
	case err := <-done:
		if st, code := serviceStatus(err); st != http.StatusNotFound || code != "DeviceNotOnline" {
			t.Fatalf("invoke: %v; want 404 DeviceNotOnline", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("the call did not end")
	}
	// The call has ended, so a replay would have happened already.
	if n := again.Load(); n != 0 {
		t.Fatalf("the request was delivered again, %d times, to the next connection", n)
	}
}

func serviceDeviceCS(e *env, deviceID, key string) string {
	return "HostName=" + e.mqttHost() + ";DeviceId=" + deviceID + ";SharedAccessKey=" + key
}
