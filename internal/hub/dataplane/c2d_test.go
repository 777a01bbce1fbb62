package dataplane

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/internal/client"
	"outpost/internal/clocktest"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/service"
	"outpost/internal/topic"
)

func TestC2DOverMQTT(t *testing.T) {
	e := newEnv(t)
	d := e.device("c2d-dev", false)
	ctx := ctxT(t)

	// Queued while offline, delivered in order at connect.
	for i := range 3 {
		if _, err := e.svc.SendC2D(ctx, "c2d-dev", service.C2DMessage{Body: []byte("m" + strconv.Itoa(i)), Properties: map[string]string{"n": strconv.Itoa(i)}, CorrelationID: "corr"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.pendingC2D("c2d-dev"); n != 3 {
		t.Fatalf("pending %d; want 3", n)
	}
	got := make(chan *message.Message, 10)
	e.deviceClient(d, func(c *client.Client) { c.OnC2D(func(m *message.Message) { got <- m }) })
	next := func() *message.Message {
		t.Helper()
		select {
		case m := <-got:
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("no c2d message arrived")
			return nil
		}
	}
	for i := range 3 {
		m := next()
		if string(m.Body) != "m"+strconv.Itoa(i) || m.Properties["n"] != strconv.Itoa(i) || m.System.CorrelationID != "corr" || m.System.MessageID == "" {
			t.Errorf("message %d: body %q props %v system %+v", i, m.Body, m.Properties, m.System)
		}
	}
	// Acknowledged messages leave the queue.
	checkFor(t, 10*time.Second, func() error {
		if n := e.pendingC2D("c2d-dev"); n != 0 {
			return fmt.Errorf("%d still pending", n)
		}
		return nil
	})
	// Pushed at once while connected.
	id, err := e.svc.SendC2D(ctx, "c2d-dev", service.C2DMessage{Body: []byte("live"), MessageID: "mine"})
	if err != nil || id != "mine" {
		t.Fatalf("send: %q %v", id, err)
	}
	if m := next(); string(m.Body) != "live" || m.System.MessageID != "mine" {
		t.Errorf("live message %q id %q", m.Body, m.System.MessageID)
	}
}

func TestC2DQueueLimit(t *testing.T) {
	e := newEnv(t)
	e.device("full-dev", false)
	ctx := ctxT(t)
	for i := range DefaultMaxC2DPending {
		if _, err := e.svc.SendC2D(ctx, "full-dev", service.C2DMessage{Body: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	_, err := e.svc.SendC2D(ctx, "full-dev", service.C2DMessage{Body: []byte("one too many")})
	if st, code := serviceStatus(err); st != http.StatusForbidden || code != "DeviceMaximumQueueDepthExceeded" {
		t.Fatalf("51st message: %v; want 403 DeviceMaximumQueueDepthExceeded", err)
	}
	// Another device's queue is its own.
	e.device("other-dev", false)
	if _, err := e.svc.SendC2D(ctx, "other-dev", service.C2DMessage{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SendC2D(ctx, "ghost", service.C2DMessage{Body: []byte("x")}); !service.IsNotFound(err) {
		t.Errorf("c2d to an unknown device: %v; want 404", err)
	}
	if _, err := e.svc.SendC2D(ctx, "other-dev", service.C2DMessage{Body: make([]byte, MaxC2DSize+1)}); err == nil {
		t.Error("an oversize c2d message was accepted")
	}
}

func TestC2DExpiry(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.C2DTTL = time.Second })
	e.device("ttl-dev", false)
	ctx := ctxT(t)
	tests := []struct {
		name   string
		expiry time.Time
	}{
		{"default ttl", time.Time{}},
		{"message expiry", time.Now().Add(1500 * time.Millisecond)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.svc.SendC2D(ctx, "ttl-dev", service.C2DMessage{Body: []byte("short"), Expiry: tc.expiry}); err != nil {
				t.Fatal(err)
			}
			if n := e.pendingC2D("ttl-dev"); n != 1 {
				t.Fatalf("pending %d right after send; want 1", n)
			}
			checkFor(t, 15*time.Second, func() error {
				if n := e.pendingC2D("ttl-dev"); n != 0 {
					return fmt.Errorf("%d pending", n)
				}
				return nil
			})
		})
	}
	_, err := e.svc.SendC2D(ctx, "ttl-dev", service.C2DMessage{Body: []byte("late"), Expiry: time.Now().Add(-time.Minute)})
	if st, _ := serviceStatus(err); st != http.StatusBadRequest {
		t.Errorf("already expired message: %v; want 400", err)
	}
}

func TestC2DOverHTTPS(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxDeliveryCount = 3 })
	d := e.device("poll-dev", false)
	ctx := ctxT(t)
	base := "/devices/poll-dev/messages/devicebound"
	send := func(body string) {
		t.Helper()
		if _, err := e.svc.SendC2D(ctx, "poll-dev", service.C2DMessage{Body: []byte(body), Properties: map[string]string{"k": body}}); err != nil {
			t.Fatal(err)
		}
	}
	// receive returns the body and lock of the next message, "" on 204.
	receive := func() (string, string) {
		t.Helper()
		body, lock, h := e.receiveC2D(d)
		if body != "" && (h.Get("iothub-app-k") != body || h.Get("iothub-messageid") == "") {
			t.Errorf("receive headers %v", h)
		}
		return body, lock
	}
	settle := func(method, path string) int {
		t.Helper()
		return e.deviceHTTP(method, path, d).StatusCode
	}

	if body, _ := receive(); body != "" {
		t.Fatalf("empty queue gave %q", body)
	}
	t.Run("complete", func(t *testing.T) {
		send("a")
		body, lock := receive()
		if body != "a" {
			t.Fatalf("got %q; want a", body)
		}
		if b, _ := receive(); b != "" {
			t.Errorf("a locked message was offered again: %q", b)
		}
		if st := settle(http.MethodDelete, base+"/"+lock); st != http.StatusNoContent {
			t.Fatalf("complete: %d", st)
		}
		if n := e.pendingC2D("poll-dev"); n != 0 {
			t.Errorf("%d pending after complete", n)
		}
	})
	t.Run("reject", func(t *testing.T) {
		send("b")
		_, lock := receive()
		if st := settle(http.MethodDelete, base+"/"+lock+"?reject"); st != http.StatusNoContent {
			t.Fatalf("reject: %d", st)
		}
		if b, _ := receive(); b != "" {
			t.Errorf("rejected message offered again: %q", b)
		}
		if n := e.pendingC2D("poll-dev"); n != 0 {
			t.Errorf("%d pending after reject", n)
		}
	})
	t.Run("abandon until max delivery count", func(t *testing.T) {
		send("c")
		for i := range 3 {
			var body, lock string
			checkFor(t, 5*time.Second, func() error {
				if body, lock = receive(); body != "c" {
					return fmt.Errorf("delivery %d: got %q", i+1, body)
				}
				return nil
			})
			if st := settle(http.MethodPost, base+"/"+lock+"/abandon"); st != http.StatusNoContent {
				t.Fatalf("abandon %d: %d", i+1, st)
			}
		}
		if n := e.pendingC2D("poll-dev"); n != 0 {
			t.Errorf("%d pending after the last allowed delivery was abandoned; want it dropped", n)
		}
		if b, _ := receive(); b != "" {
			t.Errorf("message offered a fourth time: %q", b)
		}
	})
	t.Run("bad lock", func(t *testing.T) {
		if st := settle(http.MethodDelete, base+"/bm90LWEtbG9jaw"); st != http.StatusPreconditionFailed {
			t.Errorf("settle with a made-up lock: %d; want 412", st)
		}
	})
	t.Run("another device's lock", func(t *testing.T) {
		other := e.device("other-poller", false)
		send("d")
		_, lock := receive()
		if st := e.deviceHTTP(http.MethodDelete, "/devices/other-poller/messages/devicebound/"+lock, other).StatusCode; st != http.StatusPreconditionFailed {
			t.Errorf("settling another device's lock: %d; want 412", st)
		}
		if st := settle(http.MethodDelete, base+"/"+lock); st != http.StatusNoContent {
			t.Errorf("owner's complete after the refused attempt: %d", st)
		}
	})
}

// lazyDevice connects d over MQTT with a client that acknowledges
// nothing by itself, subscribes to C2D, and returns the first message.
func (e *env) lazyDevice(t *testing.T, d identity.Device) (paho.Client, paho.Message) {
	t.Helper()
	got := make(chan paho.Message, 1)
	c := e.pahoWith(e.pahoOptions(d.DeviceID, e.deviceToken(d)).SetCleanSession(true).SetAutoAckDisabled(true))
	tok := c.Subscribe(topic.C2DFilter(d.DeviceID), 1, func(_ paho.Client, m paho.Message) {
		select {
		case got <- m:
		default:
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	select {
	case m := <-got:
		return c, m
	case <-time.After(10 * time.Second):
		t.Fatal("no c2d message arrived")
		return nil, nil
	}
}

// Every MQTT delivery counts, across connections, and the message is
// dropped after MaxDeliveryCount of them, as in IoT Hub.
func TestC2DMaxDeliveryOverMQTT(t *testing.T) {
	const maxDeliveries = 3
	e := newEnv(t, func(c *Config) { c.MaxDeliveryCount = maxDeliveries })
	d := e.device("lazy-dev", false)
	ctx := ctxT(t)
	send := func(body string) {
		t.Helper()
		if _, err := e.svc.SendC2D(ctx, "lazy-dev", service.C2DMessage{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	send("first")
	send("second")
	for i := range maxDeliveries {
		c, m := e.lazyDevice(t, d)
		if string(m.Payload()) != "first" {
			t.Fatalf("connection %d got %q; want first", i+1, m.Payload())
		}
		c.Disconnect(0) // without a PUBACK
	}
	c, m := e.lazyDevice(t, d)
	if string(m.Payload()) != "second" {
		t.Fatalf("after %d unacknowledged deliveries got %q; want the next message", maxDeliveries, m.Payload())
	}
	if n := e.pendingC2D("lazy-dev"); n != 1 {
		t.Errorf("%d pending; want 1, the first message dropped", n)
	}
	m.Ack()
	checkFor(t, 10*time.Second, func() error {
		if n := e.pendingC2D("lazy-dev"); n != 0 {
			return fmt.Errorf("%d pending after the PUBACK", n)
		}
		return nil
	})
	c.Disconnect(0)

	// An acknowledged message is not sent again.
	send("third")
	if _, m := e.lazyDevice(t, d); string(m.Payload()) != "third" {
		t.Fatalf("after a PUBACK got %q; want third", m.Payload())
	}
}

// MQTT and HTTPS deliveries of a message add up to one count.
func TestC2DDeliveryCountShared(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxDeliveryCount = 2 })
	d := e.device("mixed-dev", false)
	ctx := ctxT(t)
	abandon := func(t *testing.T, lock string) {
		t.Helper()
		if st := e.deviceHTTP(http.MethodPost, "/devices/mixed-dev/messages/devicebound/"+lock+"/abandon", d).StatusCode; st != http.StatusNoContent {
			t.Fatalf("abandon: %d", st)
		}
	}
	// mqtt delivers the next message once, unacknowledged.
	mqtt := func(t *testing.T, want string) {
		t.Helper()
		c, m := e.lazyDevice(t, d)
		if string(m.Payload()) != want {
			t.Fatalf("mqtt got %q; want %q", m.Payload(), want)
		}
		c.Disconnect(0)
	}
	receive := func(t *testing.T, want string) string {
		t.Helper()
		var body, lock string
		// An abandoned or unacknowledged message is offered again at once.
		checkFor(t, 10*time.Second, func() error {
			if body, lock, _ = e.receiveC2D(d); body != want {
				return fmt.Errorf("https got %q; want %q", body, want)
			}
			return nil
		})
		return lock
	}
	tests := []struct {
		name  string
		steps func(t *testing.T, body string)
	}{
		{"https then mqtt", func(t *testing.T, body string) {
			abandon(t, receive(t, body))
			mqtt(t, body)
			// A third delivery would exceed the count.
			if got, _, _ := e.receiveC2D(d); got != "" {
				t.Errorf("https got %q after two deliveries; want nothing", got)
			}
		}},
		{"mqtt then https", func(t *testing.T, body string) {
			mqtt(t, body)
			abandon(t, receive(t, body)) // the last delivery: dropped
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := "m" + strconv.Itoa(i)
			if _, err := e.svc.SendC2D(ctx, "mixed-dev", service.C2DMessage{Body: []byte(body)}); err != nil {
				t.Fatal(err)
			}
			tc.steps(t, body)
			if n := e.pendingC2D("mixed-dev"); n != 0 {
				t.Errorf("%d pending after two deliveries; want the message dropped", n)
			}
		})
	}
}

// TestC2DLockOfAnOldMessage: a lock runs from the receive, not from
// when the message was queued, and expires LockTimeout after it.
func TestC2DLockOfAnOldMessage(t *testing.T) {
	const lockTimeout = 2 * time.Second
	clock := clocktest.Real()
	e := newEnv(t, func(c *Config) {
		c.LockTimeout = lockTimeout
		c.Now = clock.Now
	})
	d := e.device("old-dev", false)
	base := "/devices/old-dev/messages/devicebound/"
	send := func(body string) {
		t.Helper()
		if _, err := e.svc.SendC2D(ctxT(t), "old-dev", service.C2DMessage{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	send("old")
	// The stream's own clock stamps the message, so it must really age.
	<-time.After(lockTimeout + lockTimeout/4)
	body, lock, _ := e.receiveC2D(d)
	if body != "old" {
		t.Fatalf("received %q; want old", body)
	}
	if st := e.deviceHTTP(http.MethodDelete, base+lock, d).StatusCode; st != http.StatusNoContent {
		t.Fatalf("complete of a message queued %v before its lock: %d; want 204", lockTimeout+lockTimeout/4, st)
	}

	send("late")
	body, lock, _ = e.receiveC2D(d)
	if body != "late" {
		t.Fatalf("received %q; want late", body)
	}
	clock.Advance(lockTimeout + time.Second)
	if st := e.deviceHTTP(http.MethodDelete, base+lock, d).StatusCode; st != http.StatusPreconditionFailed {
		t.Errorf("complete after the lock expired: %d; want 412", st)
	}
}
