package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/message"
)

func TestPubackAfterCommit(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	e.be.telemetry = func(ctx context.Context, _ Identity, _ []*message.Message) error {
		entered <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rc := e.dialRaw(t)
	rc.mustConnect(e, "dev1")
	rc.publish("devices/dev1/messages/events/", []byte("hello"), 1, 7)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("backend never called")
	}
	// The backend holds the commit: no PUBACK may arrive meanwhile.
	if pk, err := rc.read(200 * time.Millisecond); err == nil {
		t.Fatalf("got packet type %d before commit", pk.FixedHeader.Type)
	} else if ne := (net.Error)(nil); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read: %v", err)
	}
	if n := len(e.be.storedMessages()); n != 0 {
		t.Fatalf("%d messages stored before commit", n)
	}
	close(release)
	pk, err := rc.read(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 {
		t.Fatalf("got type %d id %d, want PUBACK 7", pk.FixedHeader.Type, pk.PacketID)
	}
	if n := len(e.be.storedMessages()); n != 1 {
		t.Fatalf("%d messages stored, want 1", n)
	}
}

// TestPubackOrderAndBatching keeps 64 messages in flight and checks that
// PUBACKs follow PUBLISH order and that the backend sees batches.
func TestPubackOrderAndBatching(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	e.be.telemetry = func(context.Context, Identity, []*message.Message) error {
		time.Sleep(2 * time.Millisecond) // a commit that costs like an fsync
		return nil
	}
	rc := e.dialRaw(t)
	rc.mustConnect(e, "dev1")

	const total, window = 640, 64
	var next uint16 = 1
	send := func() {
		rc.publish("devices/dev1/messages/events/seq="+fmt.Sprint(next), []byte(fmt.Sprint(next)), 1, next)
		next++
	}
	for range window {
		send()
	}
	for want := uint16(1); want <= total; want++ {
		pk, err := rc.read(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for PUBACK %d: %v", want, err)
		}
		if pk.FixedHeader.Type != packets.Puback || pk.PacketID != want {
			t.Fatalf("got type %d id %d, want PUBACK %d", pk.FixedHeader.Type, pk.PacketID, want)
		}
		if next <= total {
			send()
		}
	}
	msgs := e.be.storedMessages()
	if len(msgs) != total {
		t.Fatalf("stored %d, want %d", len(msgs), total)
	}
	for i, m := range msgs {
		if got, want := string(m.Body), fmt.Sprint(i+1); got != want {
			t.Fatalf("message %d has body %q: stored out of order", i, got)
		}
	}
	calls := e.be.telemetryCalls()
	t.Logf("%d messages in %d backend calls", total, calls)
	if calls >= total/2 {
		t.Fatalf("%d backend calls for %d messages: no batching", calls, total)
	}
}

func TestTelemetryRefusedDisconnects(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"quota", fmt.Errorf("store: %w", ErrQuotaExceeded)},
		{"store failure", errors.New("disk on fire")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.be.addDevice("dev1", device{})
			e.be.telemetry = func(context.Context, Identity, []*message.Message) error { return tt.err }
			rc := e.dialRaw(t)
			rc.mustConnect(e, "dev1")
			rc.publish("devices/dev1/messages/events/", []byte("x"), 1, 1)
			rc.expectClosed()
			if n := len(e.be.storedMessages()); n != 0 {
				t.Fatalf("%d stored", n)
			}
		})
	}
}

func TestTopicRulesDisconnect(t *testing.T) {
	tests := []struct {
		name string
		cid  string
		act  func(rc *rawClient)
	}{
		{"telemetry as another device qos1", "dev1", func(rc *rawClient) {
			rc.publish("devices/dev2/messages/events/", []byte("x"), 1, 1)
		}},
		{"telemetry as another device qos0", "dev1", func(rc *rawClient) {
			rc.publish("devices/dev2/messages/events/", []byte("x"), 0, 0)
		}},
		{"module telemetry as its device", "dev1/mod1", func(rc *rawClient) {
			rc.publish("devices/dev1/messages/events/", []byte("x"), 1, 1)
		}},
		{"publish to own c2d topic", "dev1", func(rc *rawClient) {
			rc.publish("devices/dev1/messages/devicebound/", []byte("x"), 1, 1)
		}},
		{"publish desired patch", "dev1", func(rc *rawClient) {
			rc.publish("$iothub/twin/PATCH/properties/desired/?$version=3", []byte("{}"), 0, 0)
		}},
		{"on-behalf-of topic without being an edge", "dev1", func(rc *rawClient) {
			rc.publish("$iothub/dev2/twin/get/?$rid=1", nil, 0, 0)
		}},
		{"publish to $SYS qos1", "dev1", func(rc *rawClient) {
			rc.publish("$SYS/broker/clients", []byte("x"), 1, 1)
		}},
		{"publish with wildcard", "dev1", func(rc *rawClient) {
			rc.publish("devices/+/messages/events/", []byte("x"), 1, 1)
		}},
		{"unknown topic", "dev1", func(rc *rawClient) {
			rc.publish("hello/world", []byte("x"), 0, 0)
		}},
		{"qos 2", "dev1", func(rc *rawClient) {
			rc.publish("devices/dev1/messages/events/", []byte("x"), 2, 1)
		}},
		{"subscribe another device's c2d", "dev1", func(rc *rawClient) {
			rc.subscribe(1, "devices/dev2/messages/devicebound/#")
		}},
		{"subscribe everything", "dev1", func(rc *rawClient) { rc.subscribe(1, "#") }},
		{"subscribe wildcard device", "dev1", func(rc *rawClient) {
			rc.subscribe(1, "devices/+/messages/devicebound/#")
		}},
		{"subscribe $SYS", "dev1", func(rc *rawClient) { rc.subscribe(1, "$SYS/#") }},
		{"one bad filter among good ones", "dev1", func(rc *rawClient) {
			rc.subscribe(1, "$iothub/twin/res/#", "devices/dev2/messages/devicebound/#")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.be.addDevice("dev1", device{})
			e.be.addDevice("dev1/mod1", device{})
			rc := e.dialRaw(t)
			rc.mustConnect(e, tt.cid)
			tt.act(rc)
			rc.expectClosed()
			if n := len(e.be.storedMessages()); n != 0 {
				t.Fatalf("%d messages stored", n)
			}
		})
	}
}

func TestOversizeRefused(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	for _, tt := range []struct {
		name string
		size int
		ok   bool
	}{
		{"exactly the limit", message.MaxSize, true},
		{"one byte over", message.MaxSize + 1, false},
		{"far over", 4 * message.MaxSize, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.be.storedMessages())
			rc := e.dialRaw(t)
			rc.mustConnect(e, "dev1")
			// The server may close while a refused message is still being
			// written, so a write error is expected there.
			err := rc.tryWrite(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
				TopicName:   "devices/dev1/messages/events/",
				Payload:     bytes.Repeat([]byte("a"), tt.size),
				PacketID:    1,
			})
			if tt.ok && err != nil {
				t.Fatal(err)
			}
			if !tt.ok {
				rc.expectClosed()
				if n := len(e.be.storedMessages()); n != before {
					t.Fatalf("stored %d, want %d", n, before)
				}
				return
			}
			pk, err := rc.read(10 * time.Second)
			if err != nil || pk.FixedHeader.Type != packets.Puback {
				t.Fatalf("got %v %v, want PUBACK", pk.FixedHeader.Type, err)
			}
		})
	}
}

func TestTelemetryProperties(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	e.be.addDevice("dev1/mod1", device{})
	dev := e.mustConnect("dev1")
	mod := e.mustConnect("dev1/mod1")

	wait(t, dev.Publish("devices/dev1/messages/events/%24.cdid=evil&%24.cmid=evilmod&%24.mid=m1&%24.ct=application%2Fjson&temp=high%20ish", 1, false, "{}"))
	wait(t, mod.Publish("devices/dev1/modules/mod1/messages/events/%24.on=out1&%24.cdid=evil/", 1, false, "o"))
	wait(t, dev.Publish("devices/dev1/messages/events/", 0, false, "qos0"))

	var msgs []*message.Message
	checkFor(t, 5*time.Second, func() error {
		if msgs = e.be.storedMessages(); len(msgs) != 3 {
			return fmt.Errorf("%d stored", len(msgs))
		}
		return nil
	})
	byBody := map[string]*message.Message{}
	for _, m := range msgs {
		byBody[string(m.Body)] = m
	}
	d := byBody["{}"]
	if d.DeviceID != "dev1" || d.System.ConnDeviceID != "dev1" || d.System.ConnModuleID != "" {
		t.Errorf("device message ids: %+v", d)
	}
	if d.System.MessageID != "m1" || d.System.ContentType != "application/json" || d.Properties["temp"] != "high ish" {
		t.Errorf("device message properties: %+v %v", d.System, d.Properties)
	}
	m := byBody["o"]
	if m.DeviceID != "dev1" || m.ModuleID != "mod1" || m.System.ConnDeviceID != "dev1" || m.System.ConnModuleID != "mod1" {
		t.Errorf("module message ids: %+v", m)
	}
	if m.System.OutputName != "out1" {
		t.Errorf("output name %q, want out1", m.System.OutputName)
	}
	if byBody["qos0"] == nil {
		t.Error("qos 0 message not delivered")
	}
}

func TestGarbageDoesNotHurtServer(t *testing.T) {
	// A short connect timeout also ends the connections that sent half a
	// CONNECT and then nothing.
	e := newEnv(t, func(c *Config) { c.ConnectTimeout = 500 * time.Millisecond })
	e.be.addDevice("dev1", device{})
	garbage := map[string][]byte{
		"random":                  []byte("\x00\xff\x13\x37 definitely not mqtt \x7f"),
		"publish before connect":  {0x30, 0x05, 0x00, 0x01, 'a', 'b', 'c'},
		"connect with bad length": {0x10, 0xff, 0xff, 0xff, 0xff, 0x7f},
		"truncated connect":       {0x10, 0x0c, 0x00, 0x04, 'M', 'Q'},
		"nothing at all":          {},
		"wrong protocol name":     {0x10, 0x0c, 0x00, 0x04, 'X', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00},
		"http request":            []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
	}
	for name, b := range garbage {
		t.Run(name, func(t *testing.T) {
			rc := e.dialRaw(t)
			if _, err := rc.nc.Write(b); err != nil {
				t.Fatal(err)
			}
			rc.expectClosed()
		})
	}
	t.Run("garbage after connect", func(t *testing.T) {
		rc := e.dialRaw(t)
		rc.mustConnect(e, "dev1")
		if _, err := rc.nc.Write([]byte{0xf0, 0x00, 0x00}); err != nil {
			t.Fatal(err)
		}
		rc.expectClosed()
	})
	t.Run("good client still served", func(t *testing.T) {
		c := e.mustConnect("dev1")
		wait(t, c.Publish("devices/dev1/messages/events/", 1, false, "ok"))
	})
}

func TestTLSRequired(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.ServeMQTT(plain) //nolint:errcheck // ends with Shutdown
	nc, err := net.Dial("tcp", plain.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rc := newRawClient(t, nc)
	rc.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	rc.expectClosed()
}

func TestAllowPlainTCP(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AllowPlainTCP = true })
	e.be.addDevice("dev1", device{})
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.ServeMQTT(plain) //nolint:errcheck // ends with Shutdown
	opts := e.pahoOptions("dev1", e.token("dev1", time.Hour))
	opts.Servers = nil
	opts.AddBroker("tcp://" + plain.Addr().String())
	c, err := e.connect(opts)
	if err != nil {
		t.Fatal(err)
	}
	wait(t, c.Publish("devices/dev1/messages/events/", 1, false, "plain"))
}

func TestConcurrentClients(t *testing.T) {
	e := newEnv(t)
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		cid := fmt.Sprintf("d%d", i)
		e.be.addDevice(cid, device{})
		c := e.mustConnect(cid)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				c.Publish("devices/"+cid+"/messages/events/", 1, false, fmt.Sprint(j)).Wait()
			}
		}()
	}
	wg.Wait()
	msgs := e.be.storedMessages()
	if len(msgs) != n*50 {
		t.Fatalf("stored %d, want %d", len(msgs), n*50)
	}
	last := map[string]int{}
	for _, m := range msgs {
		var j int
		fmt.Sscan(string(m.Body), &j)
		if prev, ok := last[m.DeviceID]; ok && j != prev+1 {
			t.Fatalf("%s: message %d after %d", m.DeviceID, j, prev)
		}
		last[m.DeviceID] = j
		if !strings.HasPrefix(m.DeviceID, "d") || m.System.ConnDeviceID != m.DeviceID {
			t.Fatalf("bad ids %+v", m)
		}
	}
}
