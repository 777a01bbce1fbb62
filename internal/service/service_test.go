package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/clocktest"
	"outpost/internal/identity"
	"outpost/internal/sas"
)

const (
	testKeyName = "iothubowner"
	testKey     = "c2VydmljZS1rZXktZm9yLXRlc3RzLW9ubHktMzJieXRlcw=="
)

// fakeHub is a TLS server answering the service REST paths through
// handler, after checking what every request must carry. It records the
// requests it saw.
type fakeHub struct {
	t       *testing.T
	srv     *httptest.Server
	handler func(w http.ResponseWriter, r *http.Request, body []byte)

	mu   sync.Mutex
	seen []seenRequest
}

type seenRequest struct {
	method, rawPath, query string
	header                 http.Header
	body                   []byte
}

func newFakeHub(t *testing.T) *fakeHub {
	t.Helper()
	f := &fakeHub{t: t}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.seen = append(f.seen, seenRequest{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Clone(), body})
		f.mu.Unlock()
		if err := f.checkAuth(r); err != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"Message":"ErrorCode:IotHubUnauthorizedAccess;%s"}`, err)
			return
		}
		if v := r.URL.Query().Get("api-version"); v != APIVersion {
			http.Error(w, "bad api-version "+v, http.StatusBadRequest)
			return
		}
		if f.handler == nil {
			http.Error(w, "no handler", http.StatusNotImplemented)
			return
		}
		f.handler(w, r, body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// checkAuth verifies the service token the way the hub does.
func (f *fakeHub) checkAuth(r *http.Request) error {
	tok, err := sas.ParseToken(r.Header.Get("Authorization"))
	if err != nil {
		return err
	}
	if !sas.MatchesHost(tok, f.host()) {
		return fmt.Errorf("audience %q is not %q", tok.Resource, f.host())
	}
	if tok.Resource != f.host() {
		return fmt.Errorf("sr %q: want the HostName as-is, %q", tok.Resource, f.host())
	}
	if tok.KeyName != testKeyName {
		return fmt.Errorf("skn %q", tok.KeyName)
	}
	if !tok.Verify(testKey) {
		return errors.New("bad signature")
	}
	return sas.Validate(tok, time.Now(), 0)
}

func (f *fakeHub) host() string { return strings.TrimPrefix(f.srv.URL, "https://") }

func (f *fakeHub) connectionString() string {
	return "HostName=" + f.host() + ";SharedAccessKeyName=" + testKeyName + ";SharedAccessKey=" + testKey
}

func (f *fakeHub) client(t *testing.T) *Client {
	t.Helper()
	c, err := New(Config{ConnectionString: f.connectionString(), HTTPClient: f.srv.Client()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func (f *fakeHub) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

func (f *fakeHub) reset() {
	f.mu.Lock()
	f.seen = nil
	f.mu.Unlock()
}

func writeJSON(w http.ResponseWriter, status int, v string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, v)
}

func TestRequests(t *testing.T) {
	f := newFakeHub(t)
	f.handler = func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/children") && r.Method == http.MethodGet:
			writeJSON(w, 200, `["c2","c1"]`)
		case r.URL.Path == "/devices" && r.Method == http.MethodGet,
			strings.HasSuffix(r.URL.Path, "/modules") && r.Method == http.MethodGet:
			writeJSON(w, 200, `[]`)
		case r.Method == http.MethodDelete || r.Method == http.MethodPost:
			w.WriteHeader(http.StatusNoContent)
		default:
			writeJSON(w, 200, `{"deviceId":"d","moduleId":"m","etag":"AAAB"}`)
		}
	}
	c := f.client(t)
	ctx := context.Background()
	// An id with characters that must stay inside one path segment.
	odd := "a?b%c$d"
	oddPath := "a%3Fb%25c$d"
	tests := []struct {
		name    string
		call    func() error
		method  string
		path    string
		ifMatch string
		body    string // expected JSON body, compared semantically; "" for none
	}{
		{"create device", func() error {
			_, err := c.CreateDevice(ctx, identity.Device{DeviceID: odd, Status: "enabled"})
			return err
		}, "PUT", "/devices/" + oddPath, "", ""},
		{"create edge device", func() error { _, err := c.CreateEdgeDevice(ctx, "e1"); return err },
			"PUT", "/devices/e1", "", ""},
		{"get device", func() error { _, err := c.GetDevice(ctx, odd); return err },
			"GET", "/devices/" + oddPath, "", ""},
		{"update device with etag", func() error {
			_, err := c.UpdateDevice(ctx, identity.Device{DeviceID: "d", ETag: "AAAB"})
			return err
		}, "PUT", "/devices/d", `"AAAB"`, ""},
		{"update device without etag", func() error {
			_, err := c.UpdateDevice(ctx, identity.Device{DeviceID: "d"})
			return err
		}, "PUT", "/devices/d", `"*"`, ""},
		{"update device with quoted etag", func() error {
			_, err := c.UpdateDevice(ctx, identity.Device{DeviceID: "d", ETag: `"AAAB"`})
			return err
		}, "PUT", "/devices/d", `"AAAB"`, ""},
		{"delete device", func() error { return c.DeleteDevice(ctx, "d", "") },
			"DELETE", "/devices/d", `"*"`, ""},
		{"list devices", func() error { _, err := c.ListDevices(ctx); return err },
			"GET", "/devices", "", ""},
		{"create module", func() error {
			_, err := c.CreateModule(ctx, identity.Module{DeviceID: "d", ModuleID: "$edgeHub"})
			return err
		}, "PUT", "/devices/d/modules/$edgeHub", "", ""},
		{"get module", func() error { _, err := c.GetModule(ctx, "d", "m"); return err },
			"GET", "/devices/d/modules/m", "", ""},
		{"delete module", func() error { return c.DeleteModule(ctx, "d", "m", "e") },
			"DELETE", "/devices/d/modules/m", `"e"`, ""},
		{"list modules", func() error { _, err := c.ListModules(ctx, "d"); return err },
			"GET", "/devices/d/modules", "", ""},
		{"add children", func() error { return c.AddChildren(ctx, "e1", []string{"a", "b"}, true) },
			"POST", "/devices/e1/children", "", `{"children":["a","b"],"force":true}`},
		{"remove child", func() error { return c.RemoveChildren(ctx, "e1", []string{odd}) },
			"DELETE", "/devices/e1/children/" + oddPath, "", ""},
		{"get twin", func() error { _, err := c.GetTwin(ctx, "d", ""); return err },
			"GET", "/twins/d", "", ""},
		{"get module twin", func() error { _, err := c.GetTwin(ctx, "d", "m"); return err },
			"GET", "/twins/d/modules/m", "", ""},
		{"patch twin", func() error {
			_, err := c.UpdateTwin(ctx, "d", "", NewTwinPatch(map[string]any{"site": "x"}, map[string]any{"rate": 5.0}), "AAAC")
			return err
		}, "PATCH", "/twins/d", `"AAAC"`, `{"tags":{"site":"x"},"properties":{"desired":{"rate":5}}}`},
		{"patch twin unconditionally", func() error {
			_, err := c.UpdateTwin(ctx, "d", "m", NewTwinPatch(nil, map[string]any{"a": nil}), "")
			return err
		}, "PATCH", "/twins/d/modules/m", "", `{"properties":{"desired":{"a":null}}}`},
		{"replace twin", func() error {
			_, err := c.ReplaceTwin(ctx, "d", "", map[string]any{"tags": map[string]any{}}, "*")
			return err
		},
			"PUT", "/twins/d", `"*"`, `{"tags":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.reset()
			if err := tt.call(); err != nil {
				t.Fatalf("call: %v", err)
			}
			reqs := f.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.method != tt.method || r.rawPath != tt.path {
				t.Errorf("got %s %s, want %s %s", r.method, r.rawPath, tt.method, tt.path)
			}
			if got := r.header.Get("If-Match"); got != tt.ifMatch {
				t.Errorf("If-Match %q, want %q", got, tt.ifMatch)
			}
			if len(r.body) > 0 && !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
				t.Errorf("Content-Type %q for a JSON body", r.header.Get("Content-Type"))
			}
			if tt.body != "" && !sameJSON(t, r.body, []byte(tt.body)) {
				t.Errorf("body %s, want %s", r.body, tt.body)
			}
		})
	}
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("decode %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

func TestDecodesResponses(t *testing.T) {
	f := newFakeHub(t)
	f.handler = func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch r.URL.Path {
		case "/devices/d1":
			writeJSON(w, 200, `{"deviceId":"d1","etag":"AAAB","status":"enabled",
				"authentication":{"type":"sas","symmetricKey":{"primaryKey":"cGs=","secondaryKey":"c2s="}},
				"capabilities":{"iotEdge":true},"deviceScope":"ms-azure-iot-edge://d1-1","parentScopes":[]}`)
		case "/devices/e1/children":
			writeJSON(w, 200, `[{"deviceId":"z"},"a"]`)
		case "/twins/d1":
			writeJSON(w, 200, `{"deviceId":"d1","etag":"AAAC","version":3,"tags":{"t":1},
				"properties":{"desired":{"x":1,"$version":2},"reported":{"$version":1}},"unknownField":true}`)
		}
	}
	c := f.client(t)
	ctx := context.Background()
	d, err := c.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.ETag != "AAAB" || !d.Capabilities.IoTEdge || d.Authentication.SymmetricKey.PrimaryKey != "cGs=" {
		t.Errorf("device decoded as %+v", d)
	}
	kids, err := c.ListChildren(ctx, "e1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(kids, []string{"a", "z"}) {
		t.Errorf("children %v, want [a z]", kids)
	}
	tw, err := c.GetTwin(ctx, "d1", "")
	if err != nil {
		t.Fatal(err)
	}
	if tw.ETag != "AAAC" || tw.Version != 3 || tw.Properties.Desired["x"] != 1.0 {
		t.Errorf("twin decoded as %+v", tw)
	}
	if !strings.Contains(string(tw.Raw), "unknownField") {
		t.Errorf("twin Raw lost fields: %s", tw.Raw)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		header   map[string]string
		body     string
		wantCode string
		wantText string
	}{
		{"azure message", 404, nil,
			`{"Message":"ErrorCode:DeviceNotFound;device 'x' not found","ExceptionMessage":"Tracking ID:1-G:0"}`,
			"DeviceNotFound", "DeviceNotFound: device 'x' not found"},
		{"rule violation", 400, map[string]string{"iothub-errorcode": "ArgumentInvalid"},
			`{"Message":"ErrorCode:ArgumentInvalid;edge device 'e2' cannot be a child: only non-edge devices can be children"}`,
			"ArgumentInvalid", "ArgumentInvalid: edge device 'e2' cannot be a child: only non-edge devices can be children"},
		{"new shape", 409, nil, `{"errorCode":"DeviceAlreadyExists","message":"device 'd' exists"}`,
			"DeviceAlreadyExists", "DeviceAlreadyExists: device 'd' exists"},
		{"numeric code with header", 412, map[string]string{"iothub-errorcode": "PreconditionFailed"},
			`{"errorCode":412002,"message":"etag mismatch"}`,
			"PreconditionFailed", "PreconditionFailed: etag mismatch"},
		{"code only in header", 429, map[string]string{"iothub-errorcode": "ThrottlingException"}, ``,
			"ThrottlingException", "ThrottlingException"},
		{"plain text", 500, nil, "boom\n", "", "boom"},
		{"html", 502, nil, "<html>bad gateway</html>", "", "hub answered 502 Bad Gateway"},
		{"message without code", 401, nil, `{"Message":"token expired"}`, "", "token expired"},
	}
	f := newFakeHub(t)
	c := f.client(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.handler = func(w http.ResponseWriter, r *http.Request, body []byte) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}
			_, err := c.GetDevice(context.Background(), "x")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T), want *Error", err, err)
			}
			if e.Status != tt.status || e.Code != tt.wantCode || e.Error() != tt.wantText {
				t.Errorf("got status %d code %q text %q; want %d %q %q", e.Status, e.Code, e.Error(), tt.status, tt.wantCode, tt.wantText)
			}
		})
	}
	t.Run("status helpers", func(t *testing.T) {
		for status, is := range map[int]func(error) bool{404: IsNotFound, 409: IsConflict, 412: IsPreconditionFailed} {
			err := fmt.Errorf("wrapped: %w", &Error{Status: status})
			if !is(err) {
				t.Errorf("helper for %d is false", status)
			}
			if is(&Error{Status: 500}) {
				t.Errorf("helper for %d true for a 500", status)
			}
		}
	})
}

func TestQueryPaging(t *testing.T) {
	const total = 7
	f := newFakeHub(t)
	f.handler = func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method != http.MethodPost || r.URL.Path != "/devices/query" {
			http.NotFound(w, r)
			return
		}
		var q struct{ Query string }
		if err := json.Unmarshal(body, &q); err != nil || q.Query != "SELECT * FROM devices" {
			writeJSON(w, 400, `{"Message":"ErrorCode:ArgumentInvalid;bad query body"}`)
			return
		}
		size, _ := strconv.Atoi(r.Header.Get("x-ms-max-item-count"))
		if size <= 0 {
			size = 100
		}
		start := 0
		if c := r.Header.Get("x-ms-continuation"); c != "" {
			start, _ = strconv.Atoi(strings.TrimPrefix(c, "page-"))
		}
		end := min(start+size, total)
		var items []string
		for i := start; i < end; i++ {
			items = append(items, fmt.Sprintf(`{"deviceId":"d%d"}`, i))
		}
		if end < total {
			w.Header().Set("x-ms-continuation", "page-"+strconv.Itoa(end))
		}
		writeJSON(w, 200, "["+strings.Join(items, ",")+"]")
	}
	c := f.client(t)
	ctx := context.Background()
	tests := []struct {
		name      string
		pageSize  int
		stopAfter int // 0: iterate to the end
		wantItems int
		wantReqs  int
	}{
		{"pages of 2", 2, 0, total, 4},
		{"pages of 3", 3, 0, total, 3},
		{"one page", 0, 0, total, 1},
		{"early stop fetches no more", 2, 3, 3, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.reset()
			var got []string
			for it, err := range c.Query(ctx, "SELECT * FROM devices", tt.pageSize) {
				if err != nil {
					t.Fatal(err)
				}
				var d struct{ DeviceID string }
				if err := json.Unmarshal(it, &d); err != nil {
					t.Fatal(err)
				}
				got = append(got, d.DeviceID)
				if tt.stopAfter > 0 && len(got) == tt.stopAfter {
					break
				}
			}
			if len(got) != tt.wantItems {
				t.Errorf("got %d items %v, want %d", len(got), got, tt.wantItems)
			}
			for i, id := range got {
				if id != fmt.Sprintf("d%d", i) {
					t.Errorf("item %d is %s", i, id)
				}
			}
			reqs := f.requests()
			if len(reqs) != tt.wantReqs {
				t.Errorf("%d requests, want %d", len(reqs), tt.wantReqs)
			}
			for i, r := range reqs {
				if tt.pageSize > 0 && r.header.Get("x-ms-max-item-count") != strconv.Itoa(tt.pageSize) {
					t.Errorf("request %d: x-ms-max-item-count %q", i, r.header.Get("x-ms-max-item-count"))
				}
				if (i == 0) != (r.header.Get("x-ms-continuation") == "") {
					t.Errorf("request %d: continuation %q", i, r.header.Get("x-ms-continuation"))
				}
			}
		})
	}
	t.Run("error ends iteration", func(t *testing.T) {
		n := 0
		for _, err := range c.Query(ctx, "SELECT nonsense", 0) {
			n++
			if !strings.Contains(fmt.Sprint(err), "ArgumentInvalid") {
				t.Errorf("err %v, want ArgumentInvalid", err)
			}
		}
		if n != 1 {
			t.Errorf("yielded %d times, want 1", n)
		}
	})
}

func TestTokenRenewal(t *testing.T) {
	f := newFakeHub(t)
	clk := clocktest.At(time.Now())
	c, err := New(Config{ConnectionString: f.connectionString(), HTTPClient: f.srv.Client(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := c.authorization()
	clk.Advance(time.Minute)
	if again, _ := c.authorization(); again != first {
		t.Errorf("token renewed after a minute")
	}
	clk.Advance(tokenLifetime - tokenRenewBefore)
	renewed, _ := c.authorization()
	if renewed == first {
		t.Fatalf("token not renewed %v before expiry", tokenRenewBefore-time.Minute)
	}
	tok, err := sas.ParseToken(renewed)
	if err != nil {
		t.Fatal(err)
	}
	if want := clk.Now().Add(tokenLifetime).Unix(); tok.Expiry.Unix() != want {
		t.Errorf("renewed token expires %v, want %v", tok.Expiry.Unix(), want)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name, cs, ca, wantErr string
	}{
		{"empty", "", "", "connection string"},
		{"device string", "HostName=h;DeviceId=d;SharedAccessKey=" + testKey, "", "service connection string"},
		{"missing CA file", "HostName=h;SharedAccessKeyName=n;SharedAccessKey=" + testKey, "/nonexistent/ca.pem", "read CA"},
		{"host with path", "HostName=h/x;SharedAccessKeyName=n;SharedAccessKey=" + testKey, "", "bad HostName"},
		{"host with port", "HostName=localhost:18443;SharedAccessKeyName=n;SharedAccessKey=" + testKey, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Config{ConnectionString: tt.cs, CAFile: tt.ca})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if c.base.Host != "localhost:18443" {
					t.Errorf("base %v", c.base)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestWrongCARefused(t *testing.T) {
	f := newFakeHub(t)
	// The system roots do not trust httptest's certificate.
	c, err := New(Config{ConnectionString: f.connectionString()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetDevice(context.Background(), "d"); err == nil {
		t.Fatal("request succeeded against an untrusted certificate")
	}
}

func TestBulk(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		wantOK  bool
		wantErr string
		failed  []string
	}{
		{"all good", 200, `{"isSuccessful":true,"errors":[],"warnings":[]}`, true, "", nil},
		{"partial failure as 400", 400, `{"isSuccessful":false,"errors":[{"deviceId":"b","errorCode":"DeviceAlreadyExists","errorStatus":"exists"}]}`, false, "", []string{"b"}},
		{"plain error", 400, `{"Message":"ErrorCode:ArgumentInvalid;too many"}`, false, "ArgumentInvalid: too many", nil},
	}
	f := newFakeHub(t)
	c := f.client(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.reset()
			f.handler = func(w http.ResponseWriter, r *http.Request, body []byte) {
				writeJSON(w, tt.status, tt.body)
			}
			res, err := c.Bulk(context.Background(), []BulkOp{{ID: "a", ImportMode: ImportCreate}, {ID: "b", ImportMode: ImportCreate}})
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.IsSuccessful != tt.wantOK {
				t.Errorf("IsSuccessful %v", res.IsSuccessful)
			}
			var failed []string
			for _, e := range res.Errors {
				failed = append(failed, e.DeviceID)
			}
			if !slices.Equal(failed, tt.failed) {
				t.Errorf("failed %v, want %v", failed, tt.failed)
			}
			r := f.requests()[0]
			if r.method != "POST" || r.rawPath != "/devices" || !sameJSON(t, r.body, []byte(`[{"id":"a","importMode":"create"},{"id":"b","importMode":"create"}]`)) {
				t.Errorf("sent %s %s %s", r.method, r.rawPath, r.body)
			}
		})
	}
	t.Run("too many", func(t *testing.T) {
		if _, err := c.Bulk(context.Background(), make([]BulkOp, MaxBulkOps+1)); err == nil {
			t.Error("no error for 101 operations")
		}
	})
}

func TestConnectionStrings(t *testing.T) {
	sasAuth := identity.Authentication{Type: identity.AuthSAS, SymmetricKey: identity.SymmetricKey{PrimaryKey: "cHJpbWFyeQ==", SecondaryKey: "c2Vj"}}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"device", DeviceConnectionString(identity.Device{DeviceID: "d1", Authentication: sasAuth}, "localhost:18443", ""),
			"HostName=localhost:18443;DeviceId=d1;SharedAccessKey=cHJpbWFyeQ=="},
		{"device via gateway", DeviceConnectionString(identity.Device{DeviceID: "d1", Authentication: sasAuth}, "hub", "edge1"),
			"HostName=hub;DeviceId=d1;SharedAccessKey=cHJpbWFyeQ==;GatewayHostName=edge1"},
		{"x509 device", DeviceConnectionString(identity.Device{DeviceID: "d2", Authentication: identity.Authentication{Type: identity.AuthSelfSigned}}, "hub", ""),
			"HostName=hub;DeviceId=d2;x509=true"},
		{"module", ModuleConnectionString(identity.Module{DeviceID: "e", ModuleID: "m", Authentication: sasAuth}, "hub", "e"),
			"HostName=hub;DeviceId=e;ModuleId=m;SharedAccessKey=cHJpbWFyeQ==;GatewayHostName=e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got  %s\nwant %s", tt.got, tt.want)
			}
			if _, err := sas.ParseConnectionString(tt.got); err != nil {
				t.Errorf("does not parse back: %v", err)
			}
		})
	}
}

func FuzzDecodeError(f *testing.F) {
	f.Add(404, `{"Message":"ErrorCode:DeviceNotFound;x"}`, "")
	f.Add(400, `{"errorCode":1,"message":"m"}`, "H")
	f.Add(500, `ErrorCode:;`, "")
	f.Add(409, `{"Message":"ErrorCode:"}`, "")
	f.Fuzz(func(t *testing.T, status int, body, code string) {
		resp := &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(body))}
		resp.Header.Set("iothub-errorcode", code)
		e := decodeError(resp)
		if e.Error() == "" {
			t.Fatal("empty error text")
		}
		if e.Status != status {
			t.Fatalf("status %d, want %d", e.Status, status)
		}
	})
}
