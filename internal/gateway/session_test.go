package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/status"
	"outpost/internal/topic"
)

// inbox collects what a paho client receives.
type inbox chan paho.Message

func (in inbox) handler(_ paho.Client, m paho.Message) { in <- m }

func (in inbox) next(t testing.TB) paho.Message {
	t.Helper()
	select {
	case m := <-in:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message received")
		return nil
	}
}

func TestTwinRoundTrip(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	var reported []byte
	e.be.twinReported = func(_ context.Context, id Identity, patch []byte) (int64, error) {
		if id.ClientID() != "dev1" {
			return 0, fmt.Errorf("patch for %s", id.ClientID())
		}
		reported = patch
		return 42, nil
	}
	e.be.twinGet = func(_ context.Context, id Identity) ([]byte, error) {
		return []byte(`{"desired":{"$version":3},"reported":` + string(reported) + `}`), nil
	}
	c := e.mustConnect("dev1")
	in := make(inbox, 10)
	wait(t, c.Subscribe(topic.FilterTwinResponses, 0, in.handler))

	wait(t, c.Publish(topic.TwinReported("r1"), 0, false, `{"temp":21}`))
	m := in.next(t)
	if want := "$iothub/twin/res/204/?$rid=r1&$version=42"; m.Topic() != want {
		t.Fatalf("topic %q, want %q", m.Topic(), want)
	}
	if len(m.Payload()) != 0 {
		t.Fatalf("reported response body %q, want empty", m.Payload())
	}

	wait(t, c.Publish(topic.TwinGet("r2"), 0, false, ""))
	m = in.next(t)
	if want := "$iothub/twin/res/200/?$rid=r2"; m.Topic() != want {
		t.Fatalf("topic %q, want %q", m.Topic(), want)
	}
	if want := `{"desired":{"$version":3},"reported":{"temp":21}}`; string(m.Payload()) != want {
		t.Fatalf("body %s, want %s", m.Payload(), want)
	}

	t.Run("errors carry errorCode", func(t *testing.T) {
		e.be.twinGet = func(context.Context, Identity) ([]byte, error) {
			return nil, fmt.Errorf("lookup: %w", ErrThrottled)
		}
		wait(t, c.Publish(topic.TwinGet("r3"), 1, false, ""))
		m := in.next(t)
		if want := "$iothub/twin/res/429/?$rid=r3"; m.Topic() != want {
			t.Fatalf("topic %q, want %q", m.Topic(), want)
		}
		if want := `{"errorCode":429000,"message":"ThrottlingException: request rate too high; retry later"}`; string(m.Payload()) != want {
			t.Fatalf("error body %s, want %s", m.Payload(), want)
		}
	})
	t.Run("reported patch that is not JSON", func(t *testing.T) {
		wait(t, c.Publish(topic.TwinReported("r4"), 0, false, `{nope`))
		m := in.next(t)
		if !strings.HasPrefix(m.Topic(), "$iothub/twin/res/400/") {
			t.Fatalf("topic %q, want a 400", m.Topic())
		}
		if want := `{"errorCode":400000,"message":"ArgumentInvalid: reported patch is not JSON"}`; string(m.Payload()) != want {
			t.Fatalf("error body %s, want %s", m.Payload(), want)
		}
	})
}

func TestDesiredPush(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	c := e.mustConnect("dev1")
	s := e.be.session(t, "dev1")
	if err := s.SendDesired(5, []byte(`{"x":1,"$version":5}`)); !errors.Is(err, ErrNotSubscribed) {
		t.Fatalf("before subscribing: %v, want ErrNotSubscribed", err)
	}
	in := make(inbox, 1)
	wait(t, c.Subscribe(topic.FilterTwinDesired, 0, in.handler))
	if err := s.SendDesired(5, []byte(`{"x":1,"$version":5}`)); err != nil {
		t.Fatal(err)
	}
	m := in.next(t)
	if want := "$iothub/twin/PATCH/properties/desired/?$version=5"; m.Topic() != want {
		t.Fatalf("topic %q, want %q", m.Topic(), want)
	}
	if string(m.Payload()) != `{"x":1,"$version":5}` {
		t.Fatalf("payload %s", m.Payload())
	}
}

func TestMethodInvoke(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	c := e.mustConnect("dev1")
	s := e.be.session(t, "dev1")
	var answer atomic.Bool
	answer.Store(true)
	unanswered := make(chan struct{}, 1)
	wait(t, c.Subscribe(topic.FilterMethods, 0, func(c paho.Client, m paho.Message) {
		tp, err := topic.Parse(m.Topic())
		if err != nil || tp.Kind != topic.KindMethodRequest {
			t.Errorf("method topic %q: %v", m.Topic(), err)
			return
		}
		if answer.Load() {
			c.Publish(topic.MethodResponse(201, tp.RID), 0, false, `{"echo":`+string(m.Payload())+`,"name":"`+tp.MethodName+`"}`)
			return
		}
		select {
		case unanswered <- struct{}{}:
		default:
		}
	}))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	status, resp, err := s.InvokeMethod(ctx, "reboot", []byte(`{"delay":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if status != 201 || string(resp) != `{"echo":{"delay":1},"name":"reboot"}` {
		t.Fatalf("got %d %s", status, resp)
	}

	t.Run("timeout", func(t *testing.T) {
		answer.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if _, _, err := s.InvokeMethod(ctx, "slow", nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want deadline exceeded", err)
		}
	})
	t.Run("bad name", func(t *testing.T) {
		if _, _, err := s.InvokeMethod(ctx, "a/b", nil); err == nil {
			t.Fatal("accepted a method name with /")
		}
	})
	t.Run("device drops with the call pending", func(t *testing.T) {
		// Sent: ErrConnectionLost, which callers must not retry, and
		// not ErrNotConnected, which they may.
		for len(unanswered) > 0 {
			<-unanswered // left by the timeout case
		}
		got := make(chan error, 1)
		go func() {
			_, _, err := s.InvokeMethod(ctx, "reboot", nil)
			got <- err
		}()
		select {
		case <-unanswered:
		case <-time.After(10 * time.Second):
			t.Fatal("request not received")
		}
		c.Disconnect(0)
		select {
		case err := <-got:
			if !errors.Is(err, ErrConnectionLost) || errors.Is(err, ErrNotConnected) {
				t.Fatalf("got %v, want ErrConnectionLost", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the call did not end with the connection")
		}
	})
	t.Run("device gone", func(t *testing.T) {
		checkFor(t, 5*time.Second, func() error {
			if _, _, err := s.InvokeMethod(ctx, "x", nil); !errors.Is(err, ErrNotConnected) {
				return fmt.Errorf("got %v, want ErrNotConnected", err)
			}
			return nil
		})
	})
}

func TestC2DDelivery(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	c := e.mustConnect("dev1")
	s := e.be.session(t, "dev1")
	msg := &message.Message{Body: []byte("turn on"), Properties: map[string]string{"k": "v w"},
		System: message.System{MessageID: "c1", CorrelationID: "corr"}}

	if err := <-s.SendC2D(msg); !errors.Is(err, ErrNotSubscribed) {
		t.Fatalf("before subscribing: %v, want ErrNotSubscribed", err)
	}
	in := make(inbox, 1)
	wait(t, c.Subscribe(topic.C2DFilter("dev1"), 1, in.handler))
	acked := s.SendC2D(msg)
	m := in.next(t)
	tp, err := topic.Parse(m.Topic())
	if err != nil || tp.Kind != topic.KindC2D || tp.DeviceID != "dev1" {
		t.Fatalf("topic %q: %+v %v", m.Topic(), tp, err)
	}
	if tp.Bag["k"] != "v w" || tp.Bag[message.KeyMessageID] != "c1" || tp.Bag[message.KeyCorrelationID] != "corr" {
		t.Fatalf("bag %v", tp.Bag)
	}
	if m.Qos() != 1 || string(m.Payload()) != "turn on" {
		t.Fatalf("qos %d payload %q", m.Qos(), m.Payload())
	}
	select {
	case err := <-acked:
		if err != nil {
			t.Fatalf("ack: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ack")
	}

	t.Run("no ack before disconnect", func(t *testing.T) {
		rc := e.dialRaw(t)
		rc.mustConnect(e, "dev1") // takes over the paho session and its subscription
		s := e.be.session(t, "dev1")
		checkFor(t, 5*time.Second, func() error {
			if e.srv.Sessions("dev1", "") != s {
				return errors.New("new session not current yet")
			}
			return nil
		})
		acked := s.SendC2D(msg)
		pk, err := rc.read(10 * time.Second)
		if err != nil || pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 {
			t.Fatalf("got %v %v, want a QoS 1 PUBLISH", pk.FixedHeader, err)
		}
		rc.nc.Close() // never PUBACK
		select {
		case err := <-acked:
			// Sent, so a delivery that counts; not ErrNotConnected.
			if !errors.Is(err, ErrConnectionLost) || errors.Is(err, ErrNotConnected) {
				t.Fatalf("got %v, want ErrConnectionLost", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("ack channel never yielded")
		}
	})
}

func TestModuleInput(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1/mod1", device{})
	e.be.addDevice("dev1", device{})
	c := e.mustConnect("dev1/mod1")
	s := e.be.session(t, "dev1/mod1")
	in := make(inbox, 1)
	wait(t, c.Subscribe(topic.ModuleInputFilter("dev1", "mod1"), 1, in.handler))
	acked := s.SendInput("in1", &message.Message{Body: []byte("reading"), Properties: map[string]string{"a": "1"}})
	m := in.next(t)
	tp, err := topic.Parse(m.Topic())
	if err != nil || tp.Kind != topic.KindModuleInput || tp.Input != "in1" || tp.Bag["a"] != "1" {
		t.Fatalf("topic %q: %+v %v", m.Topic(), tp, err)
	}
	if err := <-acked; err != nil {
		t.Fatal(err)
	}

	e.mustConnect("dev1")
	dev := e.be.session(t, "dev1")
	if err := <-dev.SendInput("in1", &message.Message{}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("input to a device: %v, want ErrNotSupported", err)
	}
	if err := <-s.SendC2D(&message.Message{}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("c2d to a module: %v, want ErrNotSupported", err)
	}
}

// TestPersistentSession: a clean-session-0 client's subscriptions survive
// a reconnect; the SDK's twin client relies on it.
func TestPersistentSession(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	c := e.mustConnect("dev1")
	wait(t, c.Subscribe(topic.FilterTwinResponses, 0, nil))
	c.Disconnect(100)

	in := make(inbox, 1)
	opts := e.pahoOptions("dev1", e.token("dev1", time.Hour)).SetDefaultPublishHandler(in.handler)
	c2, err := e.connect(opts)
	if err != nil {
		t.Fatal(err)
	}
	wait(t, c2.Publish(topic.TwinGet("after-reconnect"), 0, false, ""))
	if m := in.next(t); m.Topic() != "$iothub/twin/res/200/?$rid=after-reconnect" {
		t.Fatalf("topic %q", m.Topic())
	}

	t.Run("clean session forgets", func(t *testing.T) {
		c2.Disconnect(100)
		in := make(inbox, 1)
		opts := e.pahoOptions("dev1", e.token("dev1", time.Hour)).SetDefaultPublishHandler(in.handler).SetCleanSession(true)
		c3, err := e.connect(opts)
		if err != nil {
			t.Fatal(err)
		}
		s := e.be.session(t, "dev1")
		checkFor(t, 5*time.Second, func() error {
			if e.srv.Sessions("dev1", "") != s {
				return errors.New("not current yet")
			}
			return nil
		})
		if err := s.SendDesired(1, []byte("{}")); !errors.Is(err, ErrNotSubscribed) {
			t.Fatalf("got %v, want ErrNotSubscribed", err)
		}
		c3.Disconnect(0)
	})
}

func TestTokenExpiryDrops(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClockSkew = time.Millisecond })
	e.be.addDevice("dev1", device{})
	lost := make(chan error, 1)
	opts := e.pahoOptions("dev1", e.token("dev1", 2*time.Second)).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	if _, err := e.connect(opts); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("connection not dropped after its token expired")
	}
}

func TestDisconnectIdentity(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	lost := make(chan error, 1)
	opts := e.pahoOptions("dev1", e.token("dev1", time.Hour)).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	if _, err := e.connect(opts); err != nil {
		t.Fatal(err)
	}
	e.be.session(t, "dev1")
	if !e.srv.DisconnectIdentity("dev1", "", "device disabled") {
		t.Fatal("DisconnectIdentity found nothing")
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("not dropped")
	}
	checkFor(t, 5*time.Second, func() error {
		if e.srv.Sessions("dev1", "") != nil {
			return errors.New("session still listed")
		}
		e.be.mu.Lock()
		defer e.be.mu.Unlock()
		if len(e.be.events) != 2 || e.be.events[1] != "-dev1" {
			return fmt.Errorf("presence events %v", e.be.events)
		}
		return nil
	})
	if e.srv.DisconnectIdentity("dev1", "", "again") {
		t.Fatal("DisconnectIdentity of a gone identity reported true")
	}
}

func TestSessionTakeoverNeedsAuth(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	lost := make(chan error, 1)
	opts := e.pahoOptions("dev1", e.token("dev1", time.Hour)).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	first, err := e.connect(opts)
	if err != nil {
		t.Fatal(err)
	}
	rc := e.dialRaw(t)
	if code := rc.connect("dev1", username("dev1"), "SharedAccessSignature sr=x&sig=eA%3D%3D&se=1", false); code == 0 {
		t.Fatal("impostor accepted")
	}
	wait(t, first.Publish("devices/dev1/messages/events/", 1, false, "still here"))

	e.mustConnect("dev1")
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("first connection not taken over")
	}
}

func TestWebSocket(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	u := strings.Replace(e.https.URL, "https://", "wss://", 1) + WebSocketPath
	opts := e.pahoOptions("dev1", e.token("dev1", time.Hour))
	opts.Servers = nil
	opts.AddBroker(u)
	c, err := e.connect(opts)
	if err != nil {
		t.Fatal(err)
	}
	in := make(inbox, 1)
	wait(t, c.Subscribe(topic.FilterTwinResponses, 0, in.handler))
	big := strings.Repeat("x", 100_000) // spans many WebSocket reads
	wait(t, c.Publish("devices/dev1/messages/events/", 1, false, big))
	wait(t, c.Publish(topic.TwinGet("ws"), 0, false, ""))
	if m := in.next(t); m.Topic() != "$iothub/twin/res/200/?$rid=ws" {
		t.Fatalf("topic %q", m.Topic())
	}
	msgs := e.be.storedMessages()
	if len(msgs) != 1 || len(msgs[0].Body) != len(big) {
		t.Fatalf("stored %d messages", len(msgs))
	}
	s := e.be.session(t, "dev1")
	c.Disconnect(0)
	checkFor(t, 5*time.Second, func() error {
		if err := s.SendDesired(1, nil); !errors.Is(err, ErrNotConnected) {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
}

func TestExtension(t *testing.T) {
	echo := func(_ context.Context, id Identity, name string, p []byte) ([]byte, error) {
		if name == "echo" {
			return append([]byte(id.ClientID()+":"), p...), nil
		}
		return nil, status.NotFound(status.CodeNotFound, "no such extension")
	}
	e := newEnv(t, func(c *Config) { c.Backend = extBackend{fakeBackend: c.Backend.(*fakeBackend), ext: echo} })
	e.be.addDevice("edge1", device{edge: true})
	c := e.mustConnect("edge1")
	in := make(inbox, 2)
	wait(t, c.Subscribe(edgeproto.ResFilter, 0, in.handler))
	wait(t, c.Publish("$outpost/req/echo/?$rid=7", 1, false, "hi"))
	m := in.next(t)
	if m.Topic() != "$outpost/res/200/?$rid=7" || string(m.Payload()) != "edge1:hi" {
		t.Fatalf("got %q %q", m.Topic(), m.Payload())
	}
	wait(t, c.Publish("$outpost/req/nope/?$rid=8", 0, false, ""))
	// The refusal's body is the one shape the edge's link parses back.
	if m := in.next(t); m.Topic() != "$outpost/res/404/?$rid=8" || string(m.Payload()) != `{"errorCode":404000,"message":"NotFound: no such extension"}` {
		t.Fatalf("got %q %s", m.Topic(), m.Payload())
	}
	t.Run("without an Extender", func(t *testing.T) {
		e := newEnv(t)
		e.be.addDevice("dev1", device{})
		c := e.mustConnect("dev1")
		in := make(inbox, 1)
		wait(t, c.Subscribe(edgeproto.ResFilter, 0, in.handler))
		wait(t, c.Publish("$outpost/req/echo/?$rid=1", 0, false, ""))
		if m := in.next(t); m.Topic() != "$outpost/res/404/?$rid=1" {
			t.Fatalf("got %q", m.Topic())
		}
	})
}

// TestC2DTopicTooLong: a C2D message whose properties make its topic
// longer than a packet can say is refused as too large, never written
// with its length wrapped around, and the device's next message arrives
// intact.
func TestC2DTopicTooLong(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	c := e.mustConnect("dev1")
	s := e.be.session(t, "dev1")
	in := make(inbox, 2)
	wait(t, c.Subscribe(topic.C2DFilter("dev1"), 1, in.handler))
	big := &message.Message{Body: []byte("big"), Properties: map[string]string{"p": strings.Repeat("x", topic.MaxNameLen)}}
	if err := <-s.SendC2D(big); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("SendC2D with a %d-byte property: %v, want ErrMessageTooLarge", topic.MaxNameLen, err)
	}
	if err := <-s.SendC2D(&message.Message{Body: []byte("next")}); err != nil {
		t.Fatalf("next C2D: %v", err)
	}
	if m := in.next(t); string(m.Payload()) != "next" {
		t.Fatalf("received %.40q on %.40q, want the next message", m.Payload(), m.Topic())
	}
}
