package client

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/topic"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEndpoint(t *testing.T) {
	const key = "a2V5a2V5a2V5"
	tests := []struct {
		name       string
		cs         string
		transport  Transport
		dialAddr   string
		wantDial   string
		wantSNI    string
		wantUser   string
		wantClient string
		wantWS     string
		wantErr    string
	}{
		{
			name:       "device",
			cs:         "HostName=hub.example;DeviceId=d1;SharedAccessKey=" + key,
			wantDial:   "hub.example:8883",
			wantSNI:    "hub.example",
			wantUser:   "hub.example/d1/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1",
			wantClient: "d1",
		},
		{
			name:       "module",
			cs:         "HostName=hub.example;DeviceId=d1;ModuleId=m1;SharedAccessKey=" + key,
			wantDial:   "hub.example:8883",
			wantSNI:    "hub.example",
			wantUser:   "hub.example/d1/m1/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1",
			wantClient: "d1/m1",
		},
		{
			name:       "gateway with port",
			cs:         "HostName=hub.example;DeviceId=d1;SharedAccessKey=" + key + ";GatewayHostName=edge.local:18883",
			wantDial:   "edge.local:18883",
			wantSNI:    "edge.local",
			wantUser:   "hub.example/d1/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1",
			wantClient: "d1",
		},
		{
			name:       "hub with port",
			cs:         "HostName=localhost:18443;DeviceId=d1;SharedAccessKey=" + key,
			wantDial:   "localhost:18443",
			wantSNI:    "localhost",
			wantUser:   "localhost:18443/d1/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1",
			wantClient: "d1",
		},
		{
			name:       "websocket default port",
			cs:         "HostName=hub.example;DeviceId=d1;SharedAccessKey=" + key + ";GatewayHostName=edge.local",
			transport:  MQTTWebSocket,
			wantDial:   "edge.local:443",
			wantSNI:    "edge.local",
			wantUser:   "hub.example/d1/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1",
			wantClient: "d1",
			wantWS:     "wss://edge.local:443/$iothub/websocket",
		},
		{
			name:       "dial address override",
			cs:         "HostName=hub.example;DeviceId=d1;SharedAccessKey=" + key,
			dialAddr:   "10.0.0.7:9000",
			wantDial:   "10.0.0.7:9000",
			wantSNI:    "hub.example",
			wantUser:   "hub.example/d1/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1",
			wantClient: "d1",
		},
		{
			name:       "ipv6 with port",
			cs:         "HostName=[::1]:18883;DeviceId=d1;SharedAccessKey=" + key,
			wantDial:   "[::1]:18883",
			wantSNI:    "::1",
			wantUser:   "[::1]:18883/d1/?api-version=2021-04-12&DeviceClientType=outpost-go%2F0.1",
			wantClient: "d1",
		},
		{name: "x509 without certificate", cs: "HostName=h;DeviceId=d;x509=true", wantErr: "Certificate"},
		{name: "service string", cs: "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key, wantErr: "service"},
		{name: "bad port", cs: "HostName=h:99999;DeviceId=d;SharedAccessKey=" + key, wantErr: "port"},
		{name: "bad dial address", cs: "HostName=h;DeviceId=d;SharedAccessKey=" + key, dialAddr: "nohostport", wantErr: "DialAddr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{ConnectionString: tt.cs, Transport: tt.transport, DialAddr: tt.dialAddr}
			if err := cfg.fill(); err != nil {
				t.Fatal(err)
			}
			e, err := newEndpoint(&cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := [4]string{e.dialAddr, e.serverName, e.username, e.clientID}
			want := [4]string{tt.wantDial, tt.wantSNI, tt.wantUser, tt.wantClient}
			if got != want {
				t.Errorf("got %q\nwant %q", got, want)
			}
			if tt.wantWS != "" && e.wsURL != tt.wantWS {
				t.Errorf("ws url = %q, want %q", e.wsURL, tt.wantWS)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	cs := "HostName=h;DeviceId=d;SharedAccessKey=a2V5"
	tests := []struct {
		name string
		cfg  Config
	}{
		{"short ttl", Config{ConnectionString: cs, TokenTTL: time.Millisecond}},
		{"negative in-flight", Config{ConnectionString: cs, MaxInFlight: -1}},
		{"tiny keepalive", Config{ConnectionString: cs, KeepAlive: time.Millisecond}},
		{"unknown transport", Config{ConnectionString: cs, Transport: 9}},
		{"empty connection string", Config{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

// TestConnectVariants connects for real with each kind of connection
// string; the test hub checks username, token signature, audience and
// expiry, or the client certificate.
func TestConnectVariants(t *testing.T) {
	h := newTestHub(t)
	_, port, _ := net.SplitHostPort(h.addr)
	_, wsPort, _ := net.SplitHostPort(h.wsAddr)
	cert := h.pki.issue(t, "x509dev", x509.ExtKeyUsageClientAuth)
	tests := []struct {
		name     string
		cfg      func() Config
		clientID string
	}{
		{"device via dial address", func() Config { return h.config(h.connString("dev1", "", "")) }, "dev1"},
		{"module", func() Config { return h.config(h.connString("dev2", "mod1", "")) }, "dev2/mod1"},
		{"gateway host name with port", func() Config {
			return Config{ConnectionString: h.connString("dev3", "", ";GatewayHostName=localhost:"+port), RootCAs: h.pki.pool}
		}, "dev3"},
		{"hub host name with port", func() Config {
			h.mu.Lock()
			h.identity = "localhost"
			h.mu.Unlock()
			k := h.addKey("dev4")
			return Config{ConnectionString: "HostName=localhost:" + port + ";DeviceId=dev4;SharedAccessKey=" + k, RootCAs: h.pki.pool}
		}, "dev4"},
		{"fixed shared access signature", func() Config {
			k := h.addKey("dev5")
			tok, err := sas.Sign(sas.DeviceResource(testHubName, "dev5", ""), k, "", time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return h.config("HostName=" + testHubName + ";DeviceId=dev5;SharedAccessSignature=" + tok)
		}, "dev5"},
		{"x509", func() Config {
			cfg := h.config("HostName=" + testHubName + ";DeviceId=x509dev;x509=true")
			cfg.Certificate = &cert
			return cfg
		}, "x509dev"},
		{"websocket", func() Config {
			return Config{
				ConnectionString: h.connString("dev6", "", ";GatewayHostName=localhost:"+wsPort),
				RootCAs:          h.pki.pool,
				Transport:        MQTTWebSocket,
			}
		}, "dev6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.mu.Lock()
			h.identity = testHubName
			h.mu.Unlock()
			cfg := tt.cfg()
			c := newClient(t, cfg, nil)
			if !c.Connected() {
				t.Fatal("not connected after Connect")
			}
			// One round trip proves the session works end to end.
			if err := c.Send(ctxT(t), &message.Message{Body: []byte("hi")}); err != nil {
				t.Fatal(err)
			}
			pws := h.passwordsOf(tt.clientID)
			if len(pws) == 0 {
				t.Fatal("hub saw no connection")
			}
			if strings.Contains(tt.name, "x509") {
				if pws[0] != "" {
					t.Errorf("x509 password = %q, want empty", pws[0])
				}
			} else if !strings.HasPrefix(pws[0], "SharedAccessSignature sr=") {
				t.Errorf("password = %q, want a SAS token", pws[0])
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

func TestConnectRefused(t *testing.T) {
	h := newTestHub(t)
	wrongKey := sas.GenerateKey()
	h.addKey("dev1")
	tests := []struct {
		name  string
		cfg   Config
		check func(error) bool
	}{
		{"wrong key", h.config("HostName=" + testHubName + ";DeviceId=dev1;SharedAccessKey=" + wrongKey),
			func(err error) bool {
				var ce *ConnectError
				return errors.As(err, &ce) && (ce.Code == 4 || ce.Code == 5)
			}},
		{"wrong TLS host", Config{
			ConnectionString: "HostName=other.example;DeviceId=dev2;SharedAccessKey=" + h.addKey("dev2"), RootCAs: h.pki.pool,
			DialAddr: h.addr, // the certificate is not for other.example
		}, func(err error) bool {
			var he x509.HostnameError
			return errors.As(err, &he)
		}},
		{"unknown CA", Config{ConnectionString: h.connString("dev3", "", ";GatewayHostName="+h.addr)},
			func(err error) bool { return err != nil && strings.Contains(err.Error(), "tls") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Connect(ctxT(t))
			if !tt.check(err) {
				t.Fatalf("Connect = %v", err)
			}
			if c.Connected() {
				t.Fatal("connected after a refusal")
			}
		})
	}
}

// The wrong-host case above goes through DialAddr with the hub's identity
// as the TLS name; this makes sure the happy path of DialAddr also holds.
func TestDialAddrVerifiesHostName(t *testing.T) {
	h := newTestHub(t)
	h.identity = "localhost"
	k := h.addKey("dev1")
	c := newClient(t, Config{
		ConnectionString: "HostName=localhost;DeviceId=dev1;SharedAccessKey=" + k,
		RootCAs:          h.pki.pool,
		DialAddr:         h.addr,
	}, nil)
	if err := c.Send(ctxT(t), &message.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
}

func TestSendWaitsForPuback(t *testing.T) {
	h := newTestHub(t)
	h.manualAck = true
	c := newClient(t, h.config(h.connString("dev1", "", "")), nil)
	msg := &message.Message{
		Body:       []byte(`{"t":21}`),
		Properties: map[string]string{"alert": "high temp", "k&=": "v/?"},
		System:     message.System{MessageID: "m-1", CorrelationID: "c-1", ContentType: "application/json", ContentEncoding: "utf-8"},
	}
	done := make(chan error, 1)
	go func() { done <- c.Send(ctxT(t), msg) }()
	waitFor(t, 5*time.Second, "hub receives the message", func() error {
		if h.heldCount() != 1 {
			return fmt.Errorf("%d held", h.heldCount())
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("Send returned %v before the PUBACK", err)
	default:
	}
	h.ackHeld()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := h.received()[0]
	want := map[string]string{"$.mid": "m-1", "$.cid": "c-1", "$.ct": "application/json", "$.ce": "utf-8", "alert": "high temp", "k&=": "v/?"}
	if fmt.Sprint(got.topic.Bag) != fmt.Sprint(want) || string(got.payload) != `{"t":21}` || got.topic.DeviceID != "dev1" {
		t.Errorf("hub got %+v %q, want bag %v", got.topic, got.payload, want)
	}
}

// A Send whose context is already cancelled must publish nothing, even
// when a window slot is free (the slot and ctx.Done race otherwise).
func TestSendCancelledSendsNothing(t *testing.T) {
	h := newTestHub(t)
	c := newClient(t, h.config(h.connString("dev1", "", "")), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 50 {
		if err := c.Send(ctx, &message.Message{Body: []byte("x")}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Send with a cancelled context = %v, want context.Canceled", err)
		}
	}
	if err := c.Send(ctxT(t), &message.Message{Body: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	if got := h.received(); len(got) != 1 || string(got[0].payload) != "after" {
		t.Fatalf("hub received %d messages, want only the one sent with a live context", len(got))
	}
}

func TestSendAsyncPipelines(t *testing.T) {
	h := newTestHub(t)
	h.manualAck = true
	const window = 64
	c := newClient(t, h.config(h.connString("dev1", "", "")), nil)
	var chans []<-chan error
	for i := range window {
		chans = append(chans, c.SendAsync(&message.Message{Body: []byte(fmt.Sprint(i))}))
	}
	// All of the window is on the wire before a single PUBACK.
	waitFor(t, 5*time.Second, "hub holds the whole window", func() error {
		if n := h.heldCount(); n != window {
			return fmt.Errorf("%d held", n)
		}
		return nil
	})
	// One more must wait for a slot; it goes out once the window drains.
	extra := make(chan (<-chan error), 1)
	go func() { extra <- c.SendAsync(&message.Message{Body: []byte(fmt.Sprint(window))}) }()
	h.ackHeld()
	chans = append(chans, <-extra)
	waitFor(t, 5*time.Second, "the extra message arrives", func() error {
		if n := h.heldCount(); n != 1 {
			return fmt.Errorf("%d held", n)
		}
		return nil
	})
	h.ackHeld()
	for i, ch := range chans {
		if err := <-ch; err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	for i, r := range h.received() {
		if string(r.payload) != fmt.Sprint(i) {
			t.Fatalf("message %d arrived as %q: order lost", i, r.payload)
		}
	}
}

// TestThroughput sends a burst through the window with immediate acks and
// logs the rate; it asserts completeness and order only.
func TestThroughput(t *testing.T) {
	h := newTestHub(t)
	c := newClient(t, h.config(h.connString("dev1", "", "")), nil)
	const n = 5000
	body := make([]byte, 256)
	start := time.Now()
	chans := make([]<-chan error, 0, n)
	for range n {
		chans = append(chans, c.SendAsync(&message.Message{Body: body}))
	}
	for i, ch := range chans {
		if err := <-ch; err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	el := time.Since(start)
	t.Logf("%d messages of 256 B in %v: %.0f msg/s", n, el, n/el.Seconds())
	if got := len(h.received()); got != n {
		t.Fatalf("hub got %d messages, want %d", got, n)
	}
}

func TestInFlightFailOnDrop(t *testing.T) {
	h := newTestHub(t)
	h.manualAck = true
	c := newClient(t, h.config(h.connString("dev1", "", "")), nil)
	var chans []<-chan error
	for range 10 {
		chans = append(chans, c.SendAsync(&message.Message{Body: []byte("x")}))
	}
	sendErr := make(chan error, 1)
	go func() { sendErr <- c.Send(ctxT(t), &message.Message{Body: []byte("y")}) }()
	waitFor(t, 5*time.Second, "hub holds all", func() error {
		if n := h.heldCount(); n != 11 {
			return fmt.Errorf("%d held", n)
		}
		return nil
	})
	h.mu.Lock()
	h.held = nil
	h.mu.Unlock()
	h.drop("dev1")
	for i, ch := range chans {
		if err := <-ch; !errors.Is(err, ErrConnectionLost) {
			t.Fatalf("async %d: %v, want ErrConnectionLost", i, err)
		}
	}
	if err := <-sendErr; !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("Send: %v, want ErrConnectionLost", err)
	}
	// The client comes back and sending works again.
	h.mu.Lock()
	h.manualAck = false
	h.mu.Unlock()
	if err := c.WaitConnected(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctxT(t), &message.Message{Body: []byte("z")}); err != nil {
		t.Fatal(err)
	}
}

func TestSendOutputAndModuleInput(t *testing.T) {
	h := newTestHub(t)
	inputs := make(chan *message.Message, 1)
	c := newClient(t, h.config(h.connString("edge1", "filter", "")), func(c *Client) {
		c.OnInput(func(input string, m *message.Message) {
			if input != m.System.InputName {
				t.Errorf("input %q vs InputName %q", input, m.System.InputName)
			}
			inputs <- m
		})
	})
	if err := c.SendOutput(ctxT(t), "out1", &message.Message{Body: []byte("o")}); err != nil {
		t.Fatal(err)
	}
	got := h.received()[0].topic
	if got.ModuleID != "filter" || got.Output != "out1" {
		t.Errorf("hub got %+v, want module filter output out1", got)
	}
	h.publish(topic.ModuleInput("edge1", "filter", "in1", map[string]string{"$.mid": "i-1", "color": "red"}), []byte("payload"), 1)
	select {
	case m := <-inputs:
		if m.System.InputName != "in1" || m.System.MessageID != "i-1" || m.Properties["color"] != "red" ||
			string(m.Body) != "payload" || m.DeviceID != "edge1" || m.ModuleID != "filter" {
			t.Errorf("input message = %+v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no module input")
	}
}

func TestTwin(t *testing.T) {
	h := newTestHub(t)
	desired := make(chan map[string]any, 1)
	versions := make(chan int64, 1)
	c := newClient(t, h.config(h.connString("dev1", "", "")), func(c *Client) {
		c.OnDesired(func(patch map[string]any, v int64) {
			desired <- patch
			versions <- v
		})
	})
	t.Run("update reported", func(t *testing.T) {
		v, err := c.UpdateReported(ctxT(t), map[string]any{"fw": "1.2", "temp": 21})
		if err != nil {
			t.Fatal(err)
		}
		if v != 2 {
			t.Errorf("version = %d, want 2", v)
		}
	})
	t.Run("get", func(t *testing.T) {
		d, r, err := c.GetTwin(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if d["interval"] != float64(5) || d["$version"] != float64(3) {
			t.Errorf("desired = %v", d)
		}
		props, _ := r["props"].(map[string]any)
		if props["fw"] != "1.2" || r["$version"] != float64(2) {
			t.Errorf("reported = %v", r)
		}
	})
	t.Run("desired patch", func(t *testing.T) {
		h.publish(topic.TwinDesiredPatch(7), []byte(`{"interval":10,"$version":7}`), 0)
		select {
		case p := <-desired:
			if p["interval"] != float64(10) || <-versions != 7 {
				t.Errorf("patch = %v", p)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no desired patch")
		}
	})
	t.Run("error body fails the call", func(t *testing.T) {
		h.mu.Lock()
		h.twinError = true
		h.mu.Unlock()
		defer func() { h.mu.Lock(); h.twinError = false; h.mu.Unlock() }()
		_, err := c.UpdateReported(ctxT(t), map[string]any{"x": 1})
		var te *TwinError
		if !errors.As(err, &te) || te.Code != "400027" || te.Message != "patch too deep" {
			t.Fatalf("err = %v, want TwinError 400027", err)
		}
	})
	t.Run("concurrent requests", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, err := c.GetTwin(ctxT(t))
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestTwinErrorRule(t *testing.T) {
	tests := []struct {
		name string
		res  twinResponse
		code string
		ok   bool
	}{
		{"204 empty", twinResponse{status: 204}, "", true},
		{"200 doc", twinResponse{status: 200, body: []byte(`{"desired":{}}`)}, "", true},
		{"numeric code", twinResponse{status: 200, body: []byte(`{"errorCode":400027,"message":"m"}`)}, "400027", false},
		{"string code", twinResponse{status: 400, body: []byte(` {"errorCode":"Bad","Message":"m"}`)}, "Bad", false},
		{"status only", twinResponse{status: 429, body: []byte(`throttled`)}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := twinFailure(tt.res)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			var te *TwinError
			if err != nil && (!errors.As(err, &te) || te.Code != tt.code) {
				t.Fatalf("err = %#v, want code %q", err, tt.code)
			}
		})
	}
}

func TestMethods(t *testing.T) {
	h := newTestHub(t)
	c := newClient(t, h.config(h.connString("dev1", "", "")), func(c *Client) {
		c.OnMethod("reboot", func(ctx context.Context, name string, payload []byte) (int, []byte) {
			var in struct{ Delay int }
			if err := json.Unmarshal(payload, &in); err != nil {
				return 400, []byte(`{"error":"bad payload"}`)
			}
			return 200, []byte(fmt.Sprintf(`{"rebootIn":%d}`, in.Delay))
		})
	})
	tests := []struct {
		name       string
		method     string
		payload    string
		wantStatus int
		wantBody   string
	}{
		{"registered", "reboot", `{"delay":3}`, 200, `{"rebootIn":3}`},
		{"bad payload", "reboot", `nope`, 400, `{"error":"bad payload"}`},
		{"unknown method", "selfDestruct", `{}`, 501, `{"message":"method not implemented"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := h.invoke(tt.method, []byte(tt.payload))
			if err != nil {
				t.Fatal(err)
			}
			if r.status != tt.wantStatus || string(r.payload) != tt.wantBody {
				t.Errorf("got %d %s, want %d %s", r.status, r.payload, tt.wantStatus, tt.wantBody)
			}
		})
	}
	t.Run("catch-all registered later", func(t *testing.T) {
		c.OnMethod("", func(ctx context.Context, name string, _ []byte) (int, []byte) {
			return 202, []byte(`"` + name + `"`)
		})
		r, err := h.invoke("ping", []byte(`null`))
		if err != nil {
			t.Fatal(err)
		}
		if r.status != 202 || string(r.payload) != `"ping"` {
			t.Errorf("got %d %s", r.status, r.payload)
		}
	})
}

func TestC2D(t *testing.T) {
	h := newTestHub(t)
	got := make(chan *message.Message, 10)
	newClient(t, h.config(h.connString("dev1", "", "")), func(c *Client) {
		c.OnC2D(func(m *message.Message) { got <- m })
	})
	for i := range 3 {
		h.publish(topic.C2D("dev1", map[string]string{"$.mid": fmt.Sprint("c", i), "$.to": "/devices/dev1/messages/devicebound", "n": fmt.Sprint(i)}), []byte(fmt.Sprint("cmd", i)), 1)
	}
	for i := range 3 {
		select {
		case m := <-got:
			if m.DeviceID != "dev1" || m.System.MessageID != fmt.Sprint("c", i) || m.Properties["n"] != fmt.Sprint(i) ||
				string(m.Body) != fmt.Sprint("cmd", i) || m.System.To != "/devices/dev1/messages/devicebound" {
				t.Errorf("message %d = %+v", i, m)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("C2D %d did not arrive", i)
		}
	}
}

func TestReconnectResubscribes(t *testing.T) {
	h := newTestHub(t)
	h.forget = true // the hub forgets subscriptions: only re-subscribing brings C2D back
	got := make(chan *message.Message, 10)
	events := make(chan bool, 10)
	c := newClient(t, h.config(h.connString("dev1", "", "")), func(c *Client) {
		c.OnC2D(func(m *message.Message) { got <- m })
		c.OnConnectionChange(func(up bool, err error) {
			if !up && err == nil {
				t.Error("down event without a cause")
			}
			events <- up
		})
	})
	if up := <-events; !up {
		t.Fatal("first event is not up")
	}
	start := time.Now()
	h.drop("dev1")
	if up := <-events; up {
		t.Fatal("missing down event")
	}
	if up := <-events; !up {
		t.Fatal("missing up event")
	}
	t.Logf("reconnected in %v", time.Since(start))
	if err := c.WaitConnected(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "C2D re-subscribed", func() error {
		n := 0
		for _, f := range h.subsOf("dev1") {
			if f == topic.C2DFilter("dev1") {
				n++
			}
		}
		if n < 2 {
			return fmt.Errorf("C2D subscribed %d times", n)
		}
		return nil
	})
	h.publish(topic.C2D("dev1", map[string]string{"$.mid": "after"}), []byte("later"), 1)
	select {
	case m := <-got:
		if m.System.MessageID != "after" {
			t.Errorf("got %+v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("C2D after reconnect did not arrive")
	}
	if err := c.Send(ctxT(t), &message.Message{Body: []byte("back")}); err != nil {
		t.Fatal(err)
	}
}

func TestTokenRenewal(t *testing.T) {
	h := newTestHub(t)
	cfg := h.config(h.connString("dev1", "", ""))
	cfg.TokenTTL = 2 * time.Second
	var downs sync.Map
	c := newClient(t, cfg, func(c *Client) {
		c.OnConnectionChange(func(up bool, err error) {
			if !up {
				downs.Store(time.Now(), err)
			}
		})
	})
	// Keep sending across the renewal: the senders must not notice it.
	stop := make(chan struct{})
	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				sendErr <- nil
				return
			default:
			}
			if err := c.Send(ctxT(t), &message.Message{Body: []byte("tick")}); err != nil {
				sendErr <- err
				return
			}
		}
	}()
	waitFor(t, 10*time.Second, "the hub sees a renewed token", func() error {
		pws := h.passwordsOf("dev1")
		if len(pws) < 2 {
			return fmt.Errorf("%d connections", len(pws))
		}
		a, err1 := sas.ParseToken(pws[0])
		b, err2 := sas.ParseToken(pws[1])
		if err1 != nil || err2 != nil {
			return fmt.Errorf("bad tokens: %v %v", err1, err2)
		}
		if !b.Expiry.After(a.Expiry) {
			return fmt.Errorf("second token expires %v, not after %v", b.Expiry, a.Expiry)
		}
		return nil
	})
	close(stop)
	if err := <-sendErr; err != nil {
		t.Fatalf("a send failed across the renewal: %v", err)
	}
	downs.Range(func(k, v any) bool {
		t.Errorf("connection reported down during renewal: %v", v)
		return true
	})
}

func TestCloseIdempotentAndFinal(t *testing.T) {
	h := newTestHub(t)
	c := newClient(t, h.config(h.connString("dev1", "", "")), nil)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctxT(t), &message.Message{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if err := <-c.SendAsync(&message.Message{}); !errors.Is(err, ErrClosed) {
		t.Errorf("SendAsync after Close = %v, want ErrClosed", err)
	}
	if _, _, err := c.GetTwin(ctxT(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("GetTwin after Close = %v, want ErrClosed", err)
	}
	if err := c.Connect(ctxT(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Connect after Close = %v, want ErrClosed", err)
	}
}

func TestSendTooLarge(t *testing.T) {
	c, err := New(Config{ConnectionString: "HostName=h;DeviceId=d;SharedAccessKey=a2V5"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Send(context.Background(), &message.Message{Body: make([]byte, message.MaxSize+1)})
	if err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("err = %v", err)
	}
	if err := c.Send(context.Background(), &message.Message{}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Send before Connect = %v, want ErrNotConnected", err)
	}
}

func TestRawPublishSubscribe(t *testing.T) {
	h := newTestHub(t)
	got := make(chan string, 1)
	c := newClient(t, h.config(h.connString("edge1", "", "")), nil)
	obo := topic.OBOTwinDesiredFilter("child1")
	if err := c.Subscribe(obo, 0, func(t string, p []byte) { got <- t + " " + string(p) }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "subscribed", func() error {
		for _, f := range h.subsOf("edge1") {
			if f == obo {
				return nil
			}
		}
		return errors.New("not yet")
	})
	h.publish(topic.OBOTwinDesired("child1", 4), []byte(`{"$version":4}`), 0)
	select {
	case s := <-got:
		if s != topic.OBOTwinDesired("child1", 4)+` {"$version":4}` {
			t.Errorf("got %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing on the raw subscription")
	}
	if err := c.Publish(ctxT(t), topic.Telemetry("child1", "", nil), 1, []byte("for child")); err != nil {
		t.Fatal(err)
	}
	if err := <-c.PublishAsync(topic.Telemetry("child1", "", nil), []byte("again")); err != nil {
		t.Fatal(err)
	}
	if r := h.received(); len(r) != 2 || r[0].topic.DeviceID != "child1" {
		t.Errorf("hub got %+v", r)
	}
}

// stallConn stops delivering what the server sends once stalled, like a
// link whose far end vanished without a FIN.
type stallConn struct {
	net.Conn
	stalled <-chan struct{}
	closed  chan struct{}
	once    sync.Once
}

func (c *stallConn) Read(p []byte) (int, error) {
	select {
	case <-c.stalled:
		<-c.closed
		return 0, net.ErrClosed
	default:
	}
	return c.Conn.Read(p)
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func TestKeepaliveDetectsDeadLink(t *testing.T) {
	h := newTestHub(t)
	stall := make(chan struct{})
	var mu sync.Mutex
	dials := 0
	cfg := h.config(h.connString("dev1", "", ""))
	cfg.KeepAlive = time.Second
	cfg.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		dials++
		st := stall
		if dials > 1 {
			st = make(chan struct{}) // later connections are healthy
		}
		return &stallConn{Conn: conn, stalled: st, closed: make(chan struct{})}, nil
	}
	downs := make(chan error, 4)
	c := newClient(t, cfg, func(c *Client) {
		c.OnConnectionChange(func(up bool, err error) {
			if !up {
				downs <- err
			}
		})
	})
	start := time.Now()
	close(stall)
	select {
	case err := <-downs:
		el := time.Since(start)
		t.Logf("dead link noticed after %v: %v", el, err)
		if !strings.Contains(err.Error(), "keepalive") {
			t.Errorf("cause = %v, want a keepalive timeout", err)
		}
		if el > 2*cfg.KeepAlive {
			t.Errorf("took %v, more than twice the keepalive", el)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dead link not noticed")
	}
	if err := c.WaitConnected(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctxT(t), &message.Message{Body: []byte("after")}); err != nil {
		t.Fatal(err)
	}
}
