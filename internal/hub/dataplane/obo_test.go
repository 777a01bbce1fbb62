package dataplane

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/service"
)

// An edge reaches the hub for its child: C2D and desired updates arrive
// on the edge's connection once it subscribed for the child, and the
// child leaving the edge's scope drops the edge's connection.
func TestOnBehalfOfChild(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge-o", true)
	e.device("kid-o", false)
	if err := e.h.AddChildren(context.Background(), "edge-o", []string{"kid-o"}, false); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	got := make(chan string, 8)
	var mu sync.Mutex
	var drops int
	ec := e.deviceClient(edge, func(c *client.Client) {
		c.OnConnectionChange(func(up bool, _ error) {
			if !up {
				mu.Lock()
				drops++
				mu.Unlock()
			}
		})
	})
	for _, f := range []string{"devices/kid-o/messages/devicebound/#", "$iothub/kid-o/twin/desired/#"} {
		if err := ec.Subscribe(f, 1, func(tp string, b []byte) { got <- tp + " " + string(b) }); err != nil {
			t.Fatal(err)
		}
	}
	e.session("kid-o", "")
	next := func(prefix string) string {
		t.Helper()
		select {
		case s := <-got:
			if !strings.HasPrefix(s, prefix) {
				t.Errorf("edge got %q; want %s…", s, prefix)
			}
			return s
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing arrived for %s", prefix)
			return ""
		}
	}

	if _, err := e.svc.SendC2D(ctx, "kid-o", service.C2DMessage{Body: []byte("to-kid")}); err != nil {
		t.Fatal(err)
	}
	if s := next("devices/kid-o/messages/devicebound/"); !strings.HasSuffix(s, " to-kid") {
		t.Errorf("c2d through the edge: %q", s)
	}
	checkFor(t, 10*time.Second, func() error {
		if n := e.pendingC2D("kid-o"); n != 0 {
			return errors.New("c2d still queued after the edge acked it")
		}
		return nil
	})
	if _, err := e.svc.UpdateTwin(ctx, "kid-o", "", service.NewTwinPatch(nil, map[string]any{"mode": "eco"}), ""); err != nil {
		t.Fatal(err)
	}
	if s := next("$iothub/kid-o/twin/desired/"); !strings.Contains(s, `"mode":"eco"`) {
		t.Errorf("desired through the edge: %q", s)
	}

	if err := e.h.RemoveChildren(ctx, "edge-o", []string{"kid-o"}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if drops == 0 {
			return errors.New("edge still connected after its child left its scope")
		}
		return nil
	})
}
