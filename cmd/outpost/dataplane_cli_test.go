package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/poll"
	"outpost/internal/sas"
	"outpost/internal/service"
)

func TestFormatEvent(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := func(body []byte, ct string, props map[string]string) service.Event {
		return service.Event{Message: message.Message{DeviceID: "d", ModuleID: "m", Body: body, Properties: props,
			System: message.System{MessageID: "mid", ContentType: ct, EnqueuedTime: at}}}
	}
	tests := []struct {
		name     string
		ev       service.Event
		wantBody any
		wantEnc  string
		wantProp map[string]any
	}{
		{"json content type", ev([]byte(`{"a":[1,2]}`), "application/json; charset=utf-8", nil), map[string]any{"a": []any{1.0, 2.0}}, "", map[string]any{}},
		{"json suffix", ev([]byte(`3`), "application/vnd.x+json", nil), 3.0, "", map[string]any{}},
		{"json type, body not json", ev([]byte(`{nope`), "application/json", nil), "{nope", "", map[string]any{}},
		{"text", ev([]byte(`{"a":1}`), "", map[string]string{"k": "v"}), `{"a":1}`, "", map[string]any{"k": "v"}},
		{"binary", ev([]byte{0xff, 0xfe}, "", nil), "//4=", "base64", map[string]any{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			line, err := formatEvent(tc.ev, "json")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(string(line), "\n") != 1 || !strings.HasSuffix(string(line), "\n") {
				t.Fatalf("not one line: %q", line)
			}
			var got map[string]any
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got["body"], tc.wantBody) {
				t.Errorf("body %#v; want %#v", got["body"], tc.wantBody)
			}
			if enc, _ := got["bodyEncoding"].(string); enc != tc.wantEnc {
				t.Errorf("bodyEncoding %q; want %q", enc, tc.wantEnc)
			}
			if !reflect.DeepEqual(got["properties"], tc.wantProp) {
				t.Errorf("properties %v; want %v", got["properties"], tc.wantProp)
			}
			sys, _ := got["systemProperties"].(map[string]any)
			if got["deviceId"] != "d" || got["moduleId"] != "m" || sys["messageId"] != "mid" || sys["enqueuedTime"] != "2026-01-02T03:04:05Z" {
				t.Errorf("line %s lacks ids or system properties", line)
			}
		})
	}
	line, err := formatEvent(ev([]byte("hi\tthere"), "", map[string]string{"b": "2", "a": "1"}), "table")
	if err != nil || string(line) != "2026-01-02T03:04:05Z  d/m  hi there  a=1;b=2\n" {
		t.Errorf("table line %q, %v", line, err)
	}
}

func TestParseProps(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
		ok   bool
	}{
		{"", nil, true},
		{"a=1", map[string]string{"a": "1"}, true},
		{"a=1;b=x=y;", map[string]string{"a": "1", "b": "x=y"}, true},
		{" a =1", map[string]string{"a": "1"}, true},
		{"a", nil, false},
		{"=v", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseProps(tc.in)
			if (err == nil) != tc.ok || (tc.ok && !reflect.DeepEqual(got, tc.want)) {
				t.Errorf("parseProps(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

func FuzzParseProps(f *testing.F) {
	f.Add("a=1;b=2")
	f.Add(";;=;a==")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseProps(s)
		if err != nil {
			return
		}
		for k := range m {
			if k == "" || strings.ContainsAny(k, ";=") {
				t.Errorf("key %q from %q", k, s)
			}
		}
	})
}

// TestDataPlaneCommands runs `outpost hub` in-process and drives the data
// plane commands against it, with a device on MQTT over WebSocket through
// the hub's HTTPS port.
func TestDataPlaneCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a hub; skipped with -short")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	hubDone := make(chan error, 1)
	go func() {
		hubDone <- runHub(ctx, []string{"--data-dir", dir, "--hostname", "localhost", "--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-hubDone; err != nil {
			t.Errorf("hub: %v", err)
		}
	})
	var svcCS string
	poll.Check(t, 30*time.Second, 20*time.Millisecond, func() error {
		b, err := os.ReadFile(filepath.Join(dir, "service-connection-string"))
		if err == nil && strings.Contains(string(b), "SharedAccessKey=") {
			svcCS = strings.TrimSpace(string(b))
			return nil
		}
		select {
		case err := <-hubDone:
			t.Fatalf("hub ended: %v", err)
		default:
		}
		return errors.New("hub did not write its connection string")
	})
	caFile := filepath.Join(dir, "ca.pem")
	t.Setenv(envHubConnectionString, svcCS)
	t.Setenv(envCA, caFile)
	roots, err := service.LoadCA(caFile)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(service.Config{ConnectionString: svcCS, RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer tcancel()
	d, err := svc.CreateDevice(tctx, identity.Device{DeviceID: "cli-dev"})
	if err != nil {
		t.Fatal(err)
	}
	c2d := make(chan *message.Message, 4)
	dc, err := client.New(client.Config{ConnectionString: service.DeviceConnectionString(d, svc.HostName(), ""), RootCAs: roots, Transport: client.MQTTWebSocket})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	dc.OnMethod("reboot", func(_ context.Context, _ string, p []byte) (int, []byte) { return 200, p })
	dc.OnC2D(func(m *message.Message) { c2d <- m })
	if err := dc.Connect(tctx); err != nil {
		t.Fatalf("device over websocket: %v", err)
	}
	if err := dc.Send(tctx, &message.Message{Body: []byte(`{"a":1}`), System: message.System{ContentType: "application/json"}}); err != nil {
		t.Fatal(err)
	}
	if err := dc.Send(tctx, &message.Message{Body: []byte("hello"), Properties: map[string]string{"p": "1"}}); err != nil {
		t.Fatal(err)
	}

	t.Run("monitor-events", func(t *testing.T) {
		out, errOut, err := runCLI(t, "monitor-events", "--device-id", "cli-dev", "--from-start", "--timeout", "2", "-o", "json")
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("%d lines; want 2:\n%s", len(lines), out)
		}
		var first, second struct {
			DeviceID   string            `json:"deviceId"`
			Body       json.RawMessage   `json:"body"`
			Properties map[string]string `json:"properties"`
			System     map[string]any    `json:"systemProperties"`
		}
		if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
			t.Fatal(err)
		}
		if first.DeviceID != "cli-dev" || string(first.Body) != `{"a":1}` || first.System["enqueuedTime"] == nil || first.System["connectionDeviceId"] != "cli-dev" {
			t.Errorf("first line %s", lines[0])
		}
		if string(second.Body) != `"hello"` || second.Properties["p"] != "1" {
			t.Errorf("second line %s", lines[1])
		}
		if !strings.Contains(errOut, "Starting event monitor") {
			t.Errorf("no start notice on stderr: %q", errOut)
		}
	})
	t.Run("invoke-device-method", func(t *testing.T) {
		out, errOut, err := runCLI(t, "invoke-device-method", "--device-id", "cli-dev", "--method-name", "reboot", "--method-payload", `{"delay":1}`)
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		var res struct {
			Status  int             `json:"status"`
			Payload json.RawMessage `json:"payload"`
		}
		var compact bytes.Buffer
		err = json.Unmarshal([]byte(out), &res)
		if err == nil {
			err = json.Compact(&compact, res.Payload)
		}
		if err != nil || res.Status != 200 || compact.String() != `{"delay":1}` {
			t.Errorf("output %q (%v)", out, err)
		}
		_, _, err = runCLI(t, "invoke-device-method", "--device-id", "nobody", "--method-name", "reboot")
		var se *service.Error
		if !errors.As(err, &se) || se.Status != 404 {
			t.Errorf("method on an unknown device: %v; want a 404", err)
		}
	})
	t.Run("c2d-message send", func(t *testing.T) {
		if _, errOut, err := runCLI(t, "c2d-message", "send", "--device-id", "cli-dev", "--data", "hi", "--props", "a=1;b=2"); err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		select {
		case m := <-c2d:
			if string(m.Body) != "hi" || m.Properties["a"] != "1" || m.Properties["b"] != "2" {
				t.Errorf("device got %q %v", m.Body, m.Properties)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the device got no c2d message")
		}
	})
	t.Run("simulate", func(t *testing.T) {
		_, errOut, err := runCLI(t, "simulate", "--connection-string", svcCS, "--count", "2", "--rate", "50", "--messages", "3")
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		if !strings.Contains(errOut, "done: 6 messages") || !strings.Contains(errOut, "2 created") {
			t.Errorf("progress output %q", errOut)
		}
		out, _, err := runCLI(t, "monitor-events", "--device-id", "sim-1", "--from-start", "--timeout", "2")
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var ev struct {
				Body       map[string]any    `json:"body"`
				Properties map[string]string `json:"properties"`
			}
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Body["seq"] != float64(i+1) || ev.Properties["seq"] != strings.TrimSpace(string(rune('1'+i))) || ev.Body["deviceId"] != "sim-1" {
				t.Errorf("simulated message %d: %s", i, line)
			}
		}
		// A device connection string runs that one device.
		sd, err := svc.GetDevice(tctx, "sim-0")
		if err != nil {
			t.Fatal(err)
		}
		cs := service.DeviceConnectionString(sd, svc.HostName(), "")
		if _, errOut, err := runCLI(t, "simulate", "--connection-string", cs, "--messages", "1", "--rate", "50"); err != nil || !strings.Contains(errOut, "done: 1 messages") {
			t.Errorf("simulate one device: %v %q", err, errOut)
		}
		if _, err := sas.ParseConnectionString(cs); err != nil {
			t.Fatal(err)
		}
	})
}
