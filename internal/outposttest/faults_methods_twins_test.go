package outposttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/service"
	"outpost/internal/soak"
)

// callBound is how much longer than its own timeouts a method call may
// take to answer: the trip, and a loaded machine.
const callBound = 3 * time.Second

// hubCall invokes echo on child1 from the hub, timing it.
func hubCall(t *testing.T, env *Env, method string, respT, connT int) (service.MethodResult, time.Duration, error) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(respT+connT)*time.Second+2*callBound)
	defer cancel()
	res, err := env.Service().InvokeMethod(ctx, "child1", "", service.MethodRequest{
		MethodName: method, Payload: json.RawMessage(`{"n":1}`),
		ResponseTimeoutInSeconds: respT, ConnectTimeoutInSeconds: connT,
	})
	d := time.Since(start)
	if d > time.Duration(respT+connT)*time.Second+callBound {
		t.Errorf("%s: answered after %v, past its timeouts (%d s + %d s)", method, d, respT, connT)
	}
	return res, d, err
}

func wantStatus(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var se *service.Error
	var ie *client.InvokeError
	switch {
	case errors.As(err, &se):
		if se.Status != status || se.Code != code {
			t.Errorf("%s: %d %s (%v), want %d %s", what, se.Status, se.Code, err, status, code)
		}
	case errors.As(err, &ie):
		if ie.Status != status || ie.Code != code {
			t.Errorf("%s: %d %s (%v), want %d %s", what, ie.Status, ie.Code, err, status, code)
		}
	default:
		t.Errorf("%s: %v, want %d %s", what, err, status, code)
	}
}

// Direct methods with the link up, cut and silent: from the hub on a
// child through the edge, and locally from one child to another. Each
// gives the right answer or the right error, never a hang past its
// timeouts.
func TestMethodsAcrossLinkFaults(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1", "child2", "child3"})
	release := make(chan struct{})
	defer close(release)
	s.node.Child(t, "child1", func(c *client.Client) {
		c.OnMethod("echo", func(ctx context.Context, name string, payload []byte) (int, []byte) { return 200, payload })
		c.OnMethod("stuck", func(ctx context.Context, name string, payload []byte) (int, []byte) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return 500, nil
		})
	})
	caller := s.node.Child(t, "child2")
	local := func(device, method string, connT time.Duration) (client.MethodResult, time.Duration, error) {
		start := time.Now()
		res, err := caller.Invoke(ctxFor(t), client.MethodCall{DeviceID: device, MethodName: method, Payload: []byte(`{"n":2}`),
			ResponseTimeout: 2 * time.Second, ConnectTimeout: connT})
		d := time.Since(start)
		if d > 2*time.Second+connT+callBound {
			t.Errorf("local %s on %s: answered after %v, past its timeouts", method, device, d)
		}
		return res, d, err
	}
	okEcho := func(what string, status int, payload []byte, err error, want string) {
		t.Helper()
		if err != nil || status != 200 || string(payload) != want {
			t.Errorf("%s: %d %s %v, want 200 %s", what, status, payload, err, want)
		}
	}

	// Link up.
	CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := s.env.Service().InvokeMethod(ctxFor(t), "child1", "", service.MethodRequest{MethodName: "echo", ResponseTimeoutInSeconds: 5})
		return err // until the hub knows child1 is behind the edge
	})
	res, _, err := hubCall(t, s.env, "echo", 5, 0)
	okEcho("hub, link up", res.Status, res.Payload, err, `{"n":1}`)
	lr, _, err := local("child1", "echo", 0)
	okEcho("local, link up", lr.Status, lr.Payload, err, `{"n":2}`)
	_, d, err := hubCall(t, s.env, "stuck", 1, 0)
	wantStatus(t, "hub, target does not answer", err, 504, "GatewayTimeout")
	t.Logf("hub call on a stuck target: 504 after %v", d)
	_, _, err = local("child3", "echo", time.Second)
	wantStatus(t, "local, target not connected", err, 404, "DeviceNotOnline")

	// Link cut: the hub cannot reach the child; the edge still can.
	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	_, d, err = hubCall(t, s.env, "echo", 5, 2)
	wantStatus(t, "hub, link cut", err, 404, "DeviceNotOnline")
	t.Logf("hub call with the link cut: 404 after %v (connect timeout 2 s)", d)
	lr, _, err = local("child1", "echo", 0)
	okEcho("local, link cut", lr.Status, lr.Payload, err, `{"n":2}`)
	_, _, err = local("child1", "stuck", 0)
	wantStatus(t, "local stuck, link cut", err, 504, "GatewayTimeout")
	_, _, err = local("child3", "echo", time.Second)
	wantStatus(t, "local, not connected, link cut", err, 404, "DeviceNotOnline")

	// A silent link: until the keepalive tells, the hub believes the edge
	// is there; a call through it must still end by its timeouts.
	s.node.Restore()
	s.node.AwaitLink(t, true, 30*time.Second)
	CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := s.env.Service().InvokeMethod(ctxFor(t), "child1", "", service.MethodRequest{MethodName: "echo", ResponseTimeoutInSeconds: 5})
		return err
	})
	s.node.Stall()
	_, d, err = hubCall(t, s.env, "echo", 2, 2)
	if err == nil {
		t.Error("hub call through a silent link succeeded")
	} else {
		t.Logf("hub call through a silent link: %v after %v", err, d)
		var se *service.Error
		if !errors.As(err, &se) || (se.Status != 504 && se.Status != 404) {
			t.Errorf("hub call through a silent link: %v, want 504 GatewayTimeout or 404 DeviceNotOnline", err)
		}
	}
	lr, _, err = local("child1", "echo", 0)
	okEcho("local, link silent", lr.Status, lr.Payload, err, `{"n":2}`)

	// Back: the hub reaches the child again.
	s.node.Restore()
	s.node.AwaitLink(t, true, 30*time.Second)
	CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		res, _, err := hubCall(t, s.env, "echo", 5, 0)
		if err != nil {
			return err
		}
		if res.Status != 200 || string(res.Payload) != `{"n":1}` {
			return fmt.Errorf("%d %s", res.Status, res.Payload)
		}
		return nil
	})
}

// Desired changes made at the hub and reported changes made by the child
// at the edge, all while the link is down, converge once it returns: the
// child ends with the hub's desired properties, the hub with every
// reported one, and neither sees a version go backwards.
func TestTwinsConvergeAfterOffline(t *testing.T) {
	t.Parallel()
	n := soak.N(100, 1000)
	s := newStory(t, []string{"child1"})
	var mu sync.Mutex
	desired := map[string]any{}
	var desiredVersions []int64
	c := s.node.Child(t, "child1", func(c *client.Client) {
		c.OnDesired(func(patch map[string]any, version int64) {
			mu.Lock()
			defer mu.Unlock()
			for k, v := range patch {
				if k != "$version" {
					desired[k] = v
				}
			}
			desiredVersions = append(desiredVersions, version)
		})
	})
	ctx := ctxFor(t)
	d0, _, err := c.GetTwin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	maps.Copy(desired, d0)
	delete(desired, "$version")
	desiredVersions = append(desiredVersions, int64(d0["$version"].(float64)))
	mu.Unlock()
	if _, err := c.UpdateReported(ctx, map[string]any{"online": true}); err != nil {
		t.Fatal(err)
	}
	hubReported := func() (map[string]any, int64) {
		tw, err := s.env.Service().GetTwin(ctxFor(t), "child1", "")
		if err != nil {
			t.Fatal(err)
		}
		v, _ := tw.Properties.Reported["$version"].(float64)
		return tw.Properties.Reported, int64(v)
	}
	_, before := hubReported()

	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	want := map[string]any{}
	for i := range n {
		k := fmt.Sprintf("d%04d", i%(n/2+1)) // half of them change a key twice
		want[k] = float64(i)
		if _, err := s.env.Service().UpdateTwin(ctx, "child1", "", service.NewTwinPatch(nil, map[string]any{k: i}), "*"); err != nil {
			t.Fatalf("desired change %d: %v", i, err)
		}
	}
	wantReported := map[string]any{"online": true}
	var localVersions []int64
	for i := range n {
		k := fmt.Sprintf("r%04d", i%(n/2+1))
		wantReported[k] = float64(i)
		v, err := c.UpdateReported(ctx, map[string]any{k: i})
		if err != nil {
			t.Fatalf("reported change %d offline: %v", i, err)
		}
		localVersions = append(localVersions, v)
	}
	for i := 1; i < len(localVersions); i++ {
		if localVersions[i] <= localVersions[i-1] {
			t.Errorf("reported version the edge answered offline went from %d to %d", localVersions[i-1], localVersions[i])
			break
		}
	}

	// The hub's view while the link returns: its reported version only
	// moves forward.
	s.node.Restore()
	last := before
	CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		rep, v := hubReported()
		if v < last {
			t.Fatalf("hub's reported version went back from %d to %d", last, v)
		}
		last = v
		for k, wv := range wantReported {
			if rep[k] != wv {
				return fmt.Errorf("hub reported %s = %v, want %v (version %d)", k, rep[k], wv, v)
			}
		}
		return nil
	})
	tw, err := s.env.Service().GetTwin(ctx, "child1", "")
	if err != nil {
		t.Fatal(err)
	}
	hubDesiredV := int64(tw.Properties.Desired["$version"].(float64))
	CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for k, wv := range want {
			if desired[k] != wv {
				return fmt.Errorf("child's desired %s = %v, want %v (versions seen %v)", k, desired[k], wv, desiredVersions)
			}
		}
		if got := desiredVersions[len(desiredVersions)-1]; got != hubDesiredV {
			return fmt.Errorf("child's desired version %d, hub's %d", got, hubDesiredV)
		}
		return nil
	})
	mu.Lock()
	for i := 1; i < len(desiredVersions); i++ {
		if desiredVersions[i] <= desiredVersions[i-1] {
			t.Errorf("desired version seen by the child went from %d to %d", desiredVersions[i-1], desiredVersions[i])
		}
	}
	t.Logf("FIGURE %d desired and %d reported changes offline converged: hub reported version %d -> %d, child desired versions %v, edge's offline reported versions %d..%d",
		n, n, before, last, desiredVersions, localVersions[0], localVersions[len(localVersions)-1])
	mu.Unlock()

	// The reported version the child sees never goes back across the
	// reconnect: the edge's merged patch carries the version it answered
	// offline, and the hub's is at least that.
	lastLocal := localVersions[len(localVersions)-1]
	if last < lastLocal {
		t.Errorf("hub's reported version %d after the reconnect, below the %d the child was answered offline", last, lastLocal)
	}
	_, r1, err := c.GetTwin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := int64(r1["$version"].(float64)); got < lastLocal {
		t.Errorf("child's twin GET after the reconnect: reported version %d, it was answered %d offline", got, lastLocal)
	}
	// Online again, the child's next reported version is the hub's and
	// moves on from what the hub holds.
	v, err := c.UpdateReported(ctx, map[string]any{"after": true})
	if err != nil {
		t.Fatal(err)
	}
	if v <= last {
		t.Errorf("reported version %d after reconnect, hub had %d", v, last)
	}
	if v <= lastLocal {
		t.Errorf("the child's reported version went back from %d (answered offline) to %d (the hub's)", lastLocal, v)
	}
	t.Logf("FIGURE reported versions seen by the child: %d..%d offline, %d on GET after the reconnect, %d on the next update; hub %d -> %d", localVersions[0], lastLocal, int64(r1["$version"].(float64)), v, before, last)
}
