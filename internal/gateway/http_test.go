package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/message"
	"outpost/internal/status"
	"outpost/internal/status/statustest"
)

func (e *testEnv) do(t *testing.T, c *http.Client, method, path, auth string, hdr map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.https.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestHTTPSTelemetry(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	e.be.addDevice("dev1/mod1", device{})
	c := e.httpClient()
	const q = "?api-version=2021-04-12"

	t.Run("single", func(t *testing.T) {
		resp, body := e.do(t, c, "POST", "/devices/dev1/messages/events"+q, e.token("dev1", time.Hour), map[string]string{
			"iothub-app-Color":   "blue",
			"IoTHub-MessageId":   "m1",
			"iothub-contenttype": "application/json",
			"iothub-to":          "/devices/dev1/messages/events",
			"dt-subject":         "sub",
		}, `{"t":1}`)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		msgs := e.be.storedMessages()
		m := msgs[len(msgs)-1]
		if string(m.Body) != `{"t":1}` || m.DeviceID != "dev1" || m.System.ConnDeviceID != "dev1" {
			t.Fatalf("stored %+v", m)
		}
		if m.Properties["color"] != "blue" || m.Properties["dt-subject"] != "sub" || m.System.MessageID != "m1" ||
			m.System.ContentType != "application/json" || m.System.To != "" {
			t.Fatalf("properties %v system %+v", m.Properties, m.System)
		}
	})
	t.Run("batch", func(t *testing.T) {
		before := len(e.be.storedMessages())
		batch := fmt.Sprintf(`[{"body":"%s","properties":{"iothub-app-Color":"red"}},{"body":"%s"}]`,
			base64.StdEncoding.EncodeToString([]byte("one")), base64.StdEncoding.EncodeToString([]byte("two")))
		resp, body := e.do(t, c, "POST", "/devices/dev1/messages/events"+q, e.token("dev1", time.Hour),
			map[string]string{"Content-Type": batchContentType}, batch)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		msgs := e.be.storedMessages()[before:]
		if len(msgs) != 2 || string(msgs[0].Body) != "one" || string(msgs[1].Body) != "two" || msgs[0].Properties["Color"] != "red" {
			t.Fatalf("stored %+v", msgs)
		}
	})
	t.Run("module", func(t *testing.T) {
		resp, body := e.do(t, c, "POST", "/devices/dev1/modules/mod1/messages/events"+q, e.token("dev1/mod1", time.Hour), nil, "m")
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		msgs := e.be.storedMessages()
		if m := msgs[len(msgs)-1]; m.ModuleID != "mod1" || m.System.ConnModuleID != "mod1" {
			t.Fatalf("stored %+v", m)
		}
	})
	t.Run("x509", func(t *testing.T) {
		cert := e.pki.client(t, "xdev", false)
		e.be.addDevice("xdev", device{thumbs: []string{thumbprint(cert)}})
		resp, body := e.do(t, e.httpClient(cert), "POST", "/devices/xdev/messages/events"+q, "", nil, "x")
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	})

	errCases := []struct {
		name   string
		path   string
		auth   func() string
		hdr    map[string]string
		body   string
		setup  func()
		status int
		code   string
	}{
		{"no auth", "/devices/dev1/messages/events", func() string { return "" }, nil, "x", nil, 401, "IotHubUnauthorizedAccess"},
		{"token of another device", "/devices/dev1/messages/events", func() string { return e.token("dev1/mod1", time.Hour) }, nil, "x", nil, 401, "IotHubUnauthorizedAccess"},
		{"garbage auth", "/devices/dev1/messages/events", func() string { return "Bearer x" }, nil, "x", nil, 401, "IotHubUnauthorizedAccess"},
		{"expired", "/devices/dev1/messages/events", func() string { return e.token("dev1", -time.Hour) }, nil, "x", nil, 401, "IotHubUnauthorizedAccess"},
		{"too large", "/devices/dev1/messages/events", func() string { return e.token("dev1", time.Hour) }, nil,
			strings.Repeat("a", message.MaxSize+1), nil, 413, "MessageTooLarge"},
		{"bad batch", "/devices/dev1/messages/events", func() string { return e.token("dev1", time.Hour) },
			map[string]string{"Content-Type": batchContentType}, `[{"body":"!!"}]`, nil, 400, "ArgumentInvalid"},
		{"quota", "/devices/dev1/messages/events", func() string { return e.token("dev1", time.Hour) }, nil, "x", func() {
			e.be.telemetry = func(context.Context, Identity, []*message.Message) error { return ErrQuotaExceeded }
		}, 503, "IotHubQuotaExceeded"},
		{"backend deadline", "/devices/dev1/messages/events", func() string { return e.token("dev1", time.Hour) }, nil, "x", func() {
			e.be.telemetry = func(context.Context, Identity, []*message.Message) error {
				return fmt.Errorf("store: %w", context.DeadlineExceeded)
			}
		}, 504, "GatewayTimeout"},
	}
	for _, tt := range errCases {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			before := len(e.be.storedMessages())
			resp, body := e.do(t, c, "POST", tt.path+q, tt.auth(), tt.hdr, tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			resp.Body = io.NopCloser(strings.NewReader(body))
			statustest.CheckHTTP(t, resp, &status.Error{Status: tt.status, Code: tt.code})
			if n := len(e.be.storedMessages()); n != before {
				t.Fatalf("stored %d, want %d", n, before)
			}
		})
	}
}

func TestHTTPSC2D(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	var (
		mu      sync.Mutex
		queue   = []*message.Message{{Body: []byte("hello"), Properties: map[string]string{"k": "v"}, System: message.System{MessageID: "c1", CorrelationID: "r1"}}}
		settled []string
	)
	e.be.c2dReceive = func(_ context.Context, id Identity) (*message.Message, string, error) {
		mu.Lock()
		defer mu.Unlock()
		if id.ClientID() != "dev1" || len(queue) == 0 {
			return nil, "", nil
		}
		return queue[0], "lock-1", nil
	}
	e.be.c2dSettle = func(_ context.Context, _ Identity, lock string, a Settle) error {
		mu.Lock()
		defer mu.Unlock()
		if lock != "lock-1" {
			return status.Errorf(http.StatusPreconditionFailed, status.CodeDeviceMessageLockLost, "no such lock")
		}
		settled = append(settled, a.String())
		if a != Abandon {
			queue = queue[1:]
		}
		return nil
	}
	c := e.httpClient()
	auth := e.token("dev1", time.Hour)
	const q = "?api-version=2021-04-12"

	resp, body := e.do(t, c, "GET", "/devices/dev1/messages/devicebound"+q, auth, nil, "")
	if resp.StatusCode != http.StatusOK || body != "hello" {
		t.Fatalf("receive: %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("ETag") != `"lock-1"` || resp.Header.Get("iothub-messageid") != "c1" ||
		resp.Header.Get("iothub-correlationid") != "r1" || resp.Header.Get("iothub-app-k") != "v" {
		t.Fatalf("headers %v", resp.Header)
	}
	for _, step := range []struct {
		method, path string
		status       int
	}{
		{"POST", "/devices/dev1/messages/devicebound/lock-1/abandon" + q, 204},
		{"DELETE", "/devices/dev1/messages/devicebound/%22lock-1%22" + q + "&reject", 204},
		{"DELETE", "/devices/dev1/messages/devicebound/other" + q, 412},
	} {
		resp, body := e.do(t, c, step.method, step.path, auth, nil, "")
		if resp.StatusCode != step.status {
			t.Fatalf("%s %s: %d %s", step.method, step.path, resp.StatusCode, body)
		}
		if step.status >= 400 {
			resp.Body = io.NopCloser(strings.NewReader(body))
			statustest.CheckHTTP(t, resp, status.Errorf(http.StatusPreconditionFailed, status.CodeDeviceMessageLockLost, "no such lock"))
		}
	}
	mu.Lock()
	if strings.Join(settled, ",") != "abandon,reject" {
		t.Fatalf("settled %v", settled)
	}
	queue = append(queue, &message.Message{Body: []byte("second")})
	mu.Unlock()
	if resp, body := e.do(t, c, "GET", "/devices/dev1/messages/devicebound"+q, auth, nil, ""); resp.StatusCode != 200 || body != "second" {
		t.Fatalf("receive: %d %q", resp.StatusCode, body)
	}
	if resp, _ := e.do(t, c, "DELETE", "/devices/dev1/messages/devicebound/lock-1"+q, auth, nil, ""); resp.StatusCode != 204 {
		t.Fatalf("complete: %d", resp.StatusCode)
	}
	if resp, body := e.do(t, c, "GET", "/devices/dev1/messages/devicebound"+q, auth, nil, ""); resp.StatusCode != 204 {
		t.Fatalf("empty queue: %d %q", resp.StatusCode, body)
	}
	if resp, _ := e.do(t, c, "GET", "/devices/dev1/messages/devicebound"+q, e.token("dev1", -time.Hour), nil, ""); resp.StatusCode != 401 {
		t.Fatalf("expired token: %d", resp.StatusCode)
	}
}

// TestHTTPMuxSharing checks the device API can share a mux with the
// service API's patterns without a registration conflict.
func TestHTTPMuxSharing(t *testing.T) {
	e := newEnv(t)
	mux := http.NewServeMux()
	e.srv.RegisterDeviceHTTP(mux)
	ok := func(http.ResponseWriter, *http.Request) {}
	for _, p := range []string{
		"PUT /devices/{id}", "GET /devices/{id}", "DELETE /devices/{id}", "GET /devices",
		"POST /devices", "POST /devices/query", "PUT /devices/{d}/modules/{m}", "GET /devices/{d}/modules/{m}",
		"DELETE /devices/{d}/modules/{m}", "GET /devices/{d}/modules", "GET /twins/{d}", "PATCH /twins/{d}",
		"POST /twins/{d}/methods", "POST /twins/{d}/modules/{m}/methods",
	} {
		mux.HandleFunc(p, ok) // panics on conflict
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(`[{"body":"aGk=","properties":{"iothub-app-a":"b","iothub-messageid":"m"}}]`)
	f.Add(`[{"body":"hi","base64Encoded":false}]`)
	f.Add(`[]`)
	f.Add(`{}`)
	f.Add(`[{"body":"eA==","properties":{"IOTHUB-APP-k":"v","iothub-connection-device-id":"victim","dt-subject":"s"}}]`)
	f.Fuzz(func(t *testing.T, s string) {
		msgs, err := decodeBatch([]byte(s))
		if err != nil {
			return
		}
		var items []struct {
			Body          string            `json:"body"`
			Base64Encoded *bool             `json:"base64Encoded"`
			Properties    map[string]string `json:"properties"`
		}
		if err := json.Unmarshal([]byte(s), &items); err != nil || len(items) == 0 || len(msgs) != len(items) {
			t.Fatalf("%d messages from %d items (%v)", len(msgs), len(items), err)
		}
		for i, m := range msgs {
			// The identity comes from authentication, never the body.
			if m.DeviceID != "" || m.ModuleID != "" || m.System.ConnDeviceID != "" || m.System.ConnModuleID != "" {
				t.Fatalf("message %d carries identity %+v", i, m)
			}
			body := []byte(items[i].Body)
			if items[i].Base64Encoded == nil || *items[i].Base64Encoded {
				body, _ = base64.StdEncoding.DecodeString(items[i].Body)
			}
			if !bytes.Equal(m.Body, body) {
				t.Fatalf("message %d: body %q, sent %q", i, m.Body, items[i].Body)
			}
			for k, v := range m.Properties {
				if !anyCase(items[i].Properties, "iothub-app-"+k, v) && !(k == "dt-subject" && anyCase(items[i].Properties, k, v)) {
					t.Fatalf("message %d: property %q=%q was not sent as iothub-app-%s", i, k, v, k)
				}
			}
		}
	})
}

// anyCase reports whether props holds k=v with k's case ignored.
func anyCase(props map[string]string, k, v string) bool {
	for pk, pv := range props {
		if strings.EqualFold(pk, k) && pv == v {
			return true
		}
	}
	return false
}
