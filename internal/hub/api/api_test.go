package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"outpost/internal/hub"
	"outpost/internal/identity"
	"outpost/internal/sas"
	"outpost/internal/status"
	"outpost/internal/status/statustest"
)

const testHost = "hub.test"

type env struct {
	t   *testing.T
	hub *hub.Hub
	srv *httptest.Server
	key string
	tok string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	h, err := hub.New(hub.Config{DataDir: t.TempDir(), HostName: testHost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	key := sas.GenerateKey()
	handler := NewHandler(h, Config{Policies: []Policy{{Name: "iothubowner", PrimaryKey: key, SecondaryKey: sas.GenerateKey()}}})
	srv := httptest.NewTLSServer(handler)
	t.Cleanup(srv.Close)
	tok, err := sas.Sign(testHost, key, "iothubowner", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, hub: h, srv: srv, key: key, tok: tok}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errorBody is IoT Hub's HTTPS error body, for tests that read its text.
type errorBody struct{ Message, ExceptionMessage string }

// do sends a request with the env's token unless header sets another.
func (e *env) do(method, path string, body any, header ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(buf)
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	req, err := http.NewRequest(method, e.srv.URL+path+sep+"api-version=2021-04-12", rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", e.tok)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		if header[i+1] == "" {
			req.Header.Del(header[i])
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

func (e *env) want(r resp, wantStatus int, code string) {
	e.t.Helper()
	if r.status != wantStatus {
		e.t.Fatalf("status %d; want %d (body %s)", r.status, wantStatus, r.body)
	}
	if code != "" {
		// Every refusal is in the full IoT Hub shape the SDKs parse.
		hr := &http.Response{StatusCode: r.status, Header: r.header, Body: io.NopCloser(bytes.NewReader(r.body))}
		statustest.CheckHTTP(e.t, hr, &status.Error{Status: wantStatus, Code: code})
	}
	if len(r.body) > 0 && !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		e.t.Fatalf("body without JSON content type: %q", r.header.Get("Content-Type"))
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t)
	sign := func(host, key, name string, exp time.Time) string {
		tok, err := sas.Sign(host, key, name, exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	future := time.Now().Add(time.Hour)
	tests := []struct {
		name string
		auth string
		want int
	}{
		{"valid", e.tok, 200},
		{"host with port", sign(testHost+":8443", e.key, "iothubowner", future), 200},
		{"missing", "", 401},
		{"garbage", "Bearer xyz", 401},
		{"wrong key", sign(testHost, sas.GenerateKey(), "iothubowner", future), 401},
		{"wrong policy name", sign(testHost, e.key, "registryRead", future), 401},
		{"wrong host", sign("other.test", e.key, "iothubowner", future), 401},
		{"device resource", sign(testHost+"/devices/d", e.key, "iothubowner", future), 401},
		{"expired", sign(testHost, e.key, "iothubowner", time.Now().Add(-time.Hour)), 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("GET", "/devices", nil, "Authorization", tc.auth)
			if tc.want == 401 {
				e.want(r, 401, "IotHubUnauthorizedAccess")
				var b errorBody
				r.json(t, &b)
				if !strings.HasPrefix(b.Message, "ErrorCode:IotHubUnauthorizedAccess;") || b.ExceptionMessage == "" {
					t.Fatalf("401 body %s", r.body)
				}
				return
			}
			e.want(r, tc.want, "")
		})
	}
	// Every route is protected.
	for _, p := range []struct{ method, path string }{
		{"PUT", "/devices/x"}, {"GET", "/devices/x"}, {"DELETE", "/devices/x"}, {"POST", "/devices"},
		{"POST", "/devices/query"}, {"GET", "/devices/x/modules"}, {"PUT", "/devices/x/modules/m"},
		{"GET", "/devices/x/children"}, {"POST", "/devices/x/children"}, {"DELETE", "/devices/x/children/c"},
		{"GET", "/twins/x"}, {"PATCH", "/twins/x"}, {"PUT", "/twins/x/modules/m"},
	} {
		t.Run(p.method+p.path, func(t *testing.T) {
			e.want(e.do(p.method, p.path, "{}", "Authorization", ""), 401, "IotHubUnauthorizedAccess")
		})
	}
}

func TestDevices(t *testing.T) {
	e := newEnv(t)
	r := e.do("PUT", "/devices/d%2A1", map[string]any{"deviceId": "d*1"})
	e.want(r, 200, "")
	var d identity.Device
	r.json(t, &d)
	if d.DeviceID != "d*1" || d.ETag == "" || r.header.Get("ETag") != `"`+d.ETag+`"` {
		t.Fatalf("created %+v, ETag header %q", d, r.header.Get("ETag"))
	}
	if d.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatal("no key generated")
	}

	tests := []struct {
		name   string
		method string
		path   string
		body   any
		hdr    []string
		status int
		code   string
	}{
		{"get", "GET", "/devices/d*1", nil, nil, 200, ""},
		{"get missing", "GET", "/devices/nope", nil, nil, 404, "DeviceNotFound"},
		{"create existing", "PUT", "/devices/d*1", map[string]any{"deviceId": "d*1"}, nil, 409, "DeviceAlreadyExists"},
		{"id mismatch", "PUT", "/devices/a", map[string]any{"deviceId": "b"}, nil, 400, "ArgumentInvalid"},
		{"bad json", "PUT", "/devices/a", "{", nil, 400, "ArgumentInvalid"},
		{"bad status", "PUT", "/devices/a", map[string]any{"status": "paused"}, nil, 400, "ArgumentInvalid"},
		{"update stale etag", "PUT", "/devices/d*1", map[string]any{"deviceId": "d*1"}, []string{"If-Match", `"AAAAAAAAAAk="`}, 412, "PreconditionFailed"},
		{"update missing", "PUT", "/devices/nope", map[string]any{}, []string{"If-Match", `"*"`}, 404, "DeviceNotFound"},
		{"delete stale etag", "DELETE", "/devices/d*1", nil, []string{"If-Match", `"AAAAAAAAAAk="`}, 412, "PreconditionFailed"},
		{"delete missing", "DELETE", "/devices/nope", nil, []string{"If-Match", "*"}, 404, "DeviceNotFound"},
		{"update with etag", "PUT", "/devices/d*1", map[string]any{"deviceId": "d*1", "status": "disabled"}, []string{"If-Match", `"` + d.ETag + `"`}, 200, ""},
		{"old etag now stale", "PUT", "/devices/d*1", map[string]any{"deviceId": "d*1"}, []string{"If-Match", d.ETag}, 412, "PreconditionFailed"},
		{"list", "GET", "/devices", nil, nil, 200, ""},
		{"list with trailing slash", "GET", "/devices/", nil, nil, 200, ""},
		{"delete", "DELETE", "/devices/d*1", nil, []string{"If-Match", "*"}, 204, ""},
		{"gone", "GET", "/devices/d*1", nil, nil, 404, "DeviceNotFound"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.want(e.do(tc.method, tc.path, tc.body, tc.hdr...), tc.status, tc.code)
		})
	}
}

// TestDotSegmentIDs: "." and ".." could be created with an escaped path
// (%2e%2e) but not addressed afterwards, since clients remove
// dot-segments from URL paths; they are refused, in every form.
func TestDotSegmentIDs(t *testing.T) {
	e := newEnv(t)
	e.want(e.do("PUT", "/devices/edge", map[string]any{"capabilities": map[string]any{"iotEdge": true}}), 200, "")
	tests := []struct {
		name   string
		method string
		path   string
		body   any
	}{
		{"device ..", "PUT", "/devices/%2e%2e", map[string]any{}},
		{"device .. in body", "PUT", "/devices/%2e%2e", map[string]any{"deviceId": ".."}},
		{"device .", "PUT", "/devices/%2e", map[string]any{}},
		{"device %2E%2E", "PUT", "/devices/%2E%2E", map[string]any{}},
		{"module ..", "PUT", "/devices/edge/modules/%2e%2e", map[string]any{}},
		{"module .", "PUT", "/devices/edge/modules/%2e", map[string]any{}},
		{"bulk ..", "POST", "/devices", []map[string]any{{"id": "..", "importMode": "create"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.method, tc.path, tc.body)
			e.want(r, 400, "")
			if !bytes.Contains(r.body, []byte("dot-segment")) {
				t.Fatalf("body %s does not say why the id is refused", r.body)
			}
		})
	}
	if n := len(e.hub.ListDevices(0)); n != 1 {
		t.Fatalf("%d devices after the refusals; want only the edge", n)
	}
	// Ids that merely contain dots are addressable and stay allowed.
	e.want(e.do("PUT", "/devices/...", map[string]any{}), 200, "")
	e.want(e.do("GET", "/devices/...", nil), 200, "")
}

func TestModules(t *testing.T) {
	e := newEnv(t)
	e.want(e.do("PUT", "/devices/edge", map[string]any{"capabilities": map[string]any{"iotEdge": true}}), 200, "")
	r := e.do("GET", "/devices/edge/modules", nil)
	e.want(r, 200, "")
	var ms []identity.Module
	r.json(t, &ms)
	if len(ms) != 2 {
		t.Fatalf("edge modules %+v", ms)
	}
	r = e.do("PUT", "/devices/edge/modules/filter", map[string]any{})
	e.want(r, 200, "")
	var m identity.Module
	r.json(t, &m)
	tests := []struct {
		name   string
		method string
		path   string
		body   any
		hdr    []string
		status int
		code   string
	}{
		{"get", "GET", "/devices/edge/modules/filter", nil, nil, 200, ""},
		{"get system", "GET", "/devices/edge/modules/$edgeHub", nil, nil, 200, ""},
		{"exists", "PUT", "/devices/edge/modules/filter", map[string]any{}, nil, 409, "ModuleAlreadyExists"},
		{"no device", "PUT", "/devices/ghost/modules/m", map[string]any{}, nil, 404, "DeviceNotFound"},
		{"missing", "GET", "/devices/edge/modules/zz", nil, nil, 404, "ModuleNotFound"},
		{"update stale", "PUT", "/devices/edge/modules/filter", map[string]any{}, []string{"If-Match", `"AAAAAAAAAAk="`}, 412, "PreconditionFailed"},
		{"update", "PUT", "/devices/edge/modules/filter", map[string]any{}, []string{"If-Match", `"` + m.ETag + `"`}, 200, ""},
		{"module twin", "GET", "/twins/edge/modules/filter", nil, nil, 200, ""},
		{"patch module twin", "PATCH", "/twins/edge/modules/filter", map[string]any{"properties": map[string]any{"desired": map[string]any{"k": 1}}}, nil, 200, ""},
		{"delete", "DELETE", "/devices/edge/modules/filter", nil, []string{"If-Match", "*"}, 204, ""},
		{"module twin gone", "GET", "/twins/edge/modules/filter", nil, nil, 404, "ModuleNotFound"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.want(e.do(tc.method, tc.path, tc.body, tc.hdr...), tc.status, tc.code)
		})
	}
}

func TestChildren(t *testing.T) {
	e := newEnv(t)
	var e1, e2 identity.Device
	e.do("PUT", "/devices/e1", map[string]any{"capabilities": map[string]any{"iotEdge": true}}).json(t, &e1)
	e.do("PUT", "/devices/e2", map[string]any{"capabilities": map[string]any{"iotEdge": true}}).json(t, &e2)
	for _, id := range []string{"c1", "c2", "c3"} {
		e.want(e.do("PUT", "/devices/"+id, map[string]any{}), 200, "")
	}
	tests := []struct {
		name   string
		method string
		path   string
		body   any
		status int
		code   string
		msg    string // part of the message
	}{
		{"add", "POST", "/devices/e1/children", map[string]any{"children": []string{"c1", "c2"}}, 204, "", ""},
		{"edge child", "POST", "/devices/e1/children", map[string]any{"children": []string{"e2"}}, 400, "InvalidChildDevice", "only non-edge devices can be children"},
		{"non-edge parent", "POST", "/devices/c3/children", map[string]any{"children": []string{"c1"}}, 400, "InvalidParentDevice", "only edge devices can be parents"},
		{"re-parent", "POST", "/devices/e2/children", map[string]any{"children": []string{"c1"}}, 400, "InvalidChildDevice", "already has parent 'e1'"},
		{"re-parent by PUT", "PUT", "/devices/c1", map[string]any{"parentScopes": []string{e2.DeviceScope}}, 400, "InvalidChildDevice", "force"},
		{"missing child", "POST", "/devices/e1/children", map[string]any{"children": []string{"ghost"}}, 404, "DeviceNotFound", ""},
		{"empty list", "POST", "/devices/e1/children", map[string]any{"children": []string{}}, 400, "ArgumentInvalid", ""},
		{"remove non-child", "DELETE", "/devices/e2/children/c1", nil, 400, "InvalidChildDevice", "not a child"},
		{"forced re-parent", "POST", "/devices/e2/children", map[string]any{"children": []string{"c1"}, "force": true}, 204, "", ""},
		{"PUT re-parent with force", "PUT", "/devices/c2?force=true", map[string]any{"parentScopes": []string{e2.DeviceScope}}, 200, "", ""},
		{"PUT attach", "PUT", "/devices/c3", map[string]any{"deviceScope": e1.DeviceScope}, 200, "", ""},
		{"remove", "DELETE", "/devices/e2/children/c2", nil, 204, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.method == "PUT" {
				hdr = []string{"If-Match", "*"}
			}
			r := e.do(tc.method, tc.path, tc.body, hdr...)
			e.want(r, tc.status, tc.code)
			if tc.msg != "" && !strings.Contains(string(r.body), tc.msg) {
				t.Fatalf("message %s lacks %q", r.body, tc.msg)
			}
		})
	}
	kids := func(edge string) []string {
		var ds []identity.Device
		r := e.do("GET", "/devices/"+edge+"/children", nil)
		e.want(r, 200, "")
		r.json(t, &ds)
		ids := []string{}
		for _, d := range ds {
			ids = append(ids, d.DeviceID)
		}
		return ids
	}
	if got := fmt.Sprint(kids("e1")); got != "[c3]" {
		t.Fatalf("children of e1 = %s", got)
	}
	if got := fmt.Sprint(kids("e2")); got != "[c1]" {
		t.Fatalf("children of e2 = %s", got)
	}
}

func TestTwins(t *testing.T) {
	e := newEnv(t)
	e.want(e.do("PUT", "/devices/d", map[string]any{}), 200, "")
	r := e.do("GET", "/twins/d", nil)
	e.want(r, 200, "")
	var tw struct {
		DeviceID   string         `json:"deviceId"`
		ETag       string         `json:"etag"`
		Version    int64          `json:"version"`
		Status     string         `json:"status"`
		Tags       map[string]any `json:"tags"`
		Properties struct {
			Desired  map[string]any `json:"desired"`
			Reported map[string]any `json:"reported"`
		} `json:"properties"`
	}
	r.json(t, &tw)
	if tw.DeviceID != "d" || tw.ETag == "" || r.header.Get("ETag") != `"`+tw.ETag+`"` || tw.Status != "enabled" {
		t.Fatalf("twin %s, ETag %q", r.body, r.header.Get("ETag"))
	}
	etag0 := tw.ETag
	patch := map[string]any{"tags": map[string]any{"x": "v"}, "properties": map[string]any{"desired": map[string]any{"t": 21}}}
	r = e.do("PATCH", "/twins/d", patch, "If-Match", `"`+etag0+`"`)
	e.want(r, 200, "")
	r.json(t, &tw)
	if tw.Tags["x"] != "v" || tw.Properties.Desired["t"] != 21.0 || tw.ETag == etag0 {
		t.Fatalf("patched twin %s", r.body)
	}
	etag1 := tw.ETag

	big := strings.Repeat("a", 33*1024)
	tests := []struct {
		name   string
		method string
		body   any
		hdr    []string
		status int
		code   string
	}{
		{"stale etag", "PATCH", patch, []string{"If-Match", `"` + etag0 + `"`}, 412, "PreconditionFailed"},
		{"too large", "PATCH", map[string]any{"properties": map[string]any{"desired": map[string]any{"b": big}}}, nil, 400, "TwinSizeExceeded"},
		{"reported", "PATCH", map[string]any{"properties": map[string]any{"reported": map[string]any{"r": 1}}}, nil, 400, "ArgumentInvalid"},
		{"dollar key", "PATCH", map[string]any{"tags": map[string]any{"$bad": 1}}, nil, 400, "ArgumentInvalid"},
		{"not json", "PATCH", "[1,2", nil, 400, "ArgumentInvalid"},
		{"replace stale", "PUT", map[string]any{"tags": map[string]any{}}, []string{"If-Match", `"` + etag0 + `"`}, 412, "PreconditionFailed"},
		// Either would have replaced tags and desired properties with nothing.
		{"replace with null", "PUT", "null", nil, 400, "ArgumentInvalid"},
		{"replace, data after the twin", "PUT", `{"tags":{}} {"tags":{"x":"v"}}`, nil, 400, "ArgumentInvalid"},
		{"missing device", "GET", nil, nil, 404, "DeviceNotFound"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := "/twins/d"
			if tc.code == "DeviceNotFound" {
				path = "/twins/ghost"
			}
			e.want(e.do(tc.method, path, tc.body, tc.hdr...), tc.status, tc.code)
			r := e.do("GET", "/twins/d", nil)
			var now struct {
				ETag string `json:"etag"`
			}
			r.json(t, &now)
			if now.ETag != etag1 {
				t.Fatalf("refused request changed the twin: etag %s -> %s", etag1, now.ETag)
			}
		})
	}
	r = e.do("PUT", "/twins/d", map[string]any{"tags": map[string]any{"y": 1}, "properties": map[string]any{"desired": map[string]any{"m": "eco"}}}, "If-Match", `"`+etag1+`"`)
	e.want(r, 200, "")
	tw.Tags, tw.Properties.Desired = nil, nil
	r.json(t, &tw)
	if _, ok := tw.Tags["x"]; ok || tw.Properties.Desired["m"] != "eco" || tw.Properties.Desired["t"] != nil {
		t.Fatalf("replaced twin %s", r.body)
	}
}

// TestTwinKeysAndText: a '$' anywhere in a key, and text the JSON
// decoder would silently replace (invalid UTF-8, lone surrogates), are
// refused in tags and desired properties, by PATCH, PUT and bulk import,
// and leave the twin as it was.
func TestTwinKeysAndText(t *testing.T) {
	e := newEnv(t)
	e.want(e.do("PUT", "/devices/d", map[string]any{}), 200, "")
	etagOf := func() string {
		var tw struct {
			ETag string `json:"etag"`
		}
		e.do("GET", "/twins/d", nil).json(t, &tw)
		return tw.ETag
	}
	etag := etagOf()
	tests := []struct {
		name, method, body, msg string
	}{
		{"dollar inside a desired key", "PATCH", `{"properties":{"desired":{"a$b":1}}}`, `key "a$b" contains '$'`},
		{"dollar ending a nested tag key", "PATCH", `{"tags":{"x":{"y$":1}}}`, `key "x.y$" contains '$'`},
		{"dollar inside a key of a PUT", "PUT", `{"properties":{"desired":{"a$b":1}}}`, `key "a$b" contains '$'`},
		{"invalid UTF-8 in a desired value", "PATCH", "{\"properties\":{\"desired\":{\"a\":\"x\xff\"}}}", "twin patch is not valid UTF-8 at byte 32"},
		{"invalid UTF-8 in a desired key", "PATCH", "{\"properties\":{\"desired\":{\"a\xc3\":1}}}", "not valid UTF-8"},
		{"invalid UTF-8 in a tag", "PATCH", "{\"tags\":{\"a\":\"\xfe\"}}", "not valid UTF-8"},
		{"lone surrogate in a tag", "PATCH", `{"tags":{"a":"\ud800"}}`, "lone UTF-16 surrogate"},
		{"invalid UTF-8 in a PUT", "PUT", "{\"tags\":{\"a\":\"\xff\"}}", "twin is not valid UTF-8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.method, "/twins/d", tc.body)
			e.want(r, 400, "ArgumentInvalid")
			var b errorBody
			r.json(t, &b)
			if !strings.Contains(b.Message, tc.msg) {
				t.Fatalf("message %q; want it to say %q", b.Message, tc.msg)
			}
			if now := etagOf(); now != etag {
				t.Fatalf("refused request changed the twin: etag %s -> %s", etag, now)
			}
		})
	}
	t.Run("bulk import", func(t *testing.T) {
		r := e.do("POST", "/devices", "[{\"id\":\"u1\",\"importMode\":\"create\",\"tags\":{\"a\":\"\xff\"}}]")
		e.want(r, 400, "ArgumentInvalid")
		if !bytes.Contains(r.body, []byte("request body is not valid UTF-8")) {
			t.Fatalf("body %s", r.body)
		}
		e.want(e.do("GET", "/devices/u1", nil), 404, "DeviceNotFound")
	})
}

func TestBulk(t *testing.T) {
	e := newEnv(t)
	e.want(e.do("PUT", "/devices/exists", map[string]any{}), 200, "")
	var many []map[string]any
	for i := range 101 {
		many = append(many, map[string]any{"id": fmt.Sprintf("m%d", i), "importMode": "create"})
	}
	e.want(e.do("POST", "/devices", many), 400, "TooManyDevices")
	e.want(e.do("POST", "/devices", []any{}), 400, "ArgumentInvalid")
	e.want(e.do("POST", "/devices", many[:100]), 200, "")

	r := e.do("POST", "/devices", []map[string]any{
		{"id": "new1", "importMode": "create", "tags": map[string]any{"x": "v"}},
		{"id": "exists", "importMode": "create"},
		{"id": "new2", "importMode": "Update", "capabilities": map[string]any{"iotEdge": true}},
		{"id": "m0", "importMode": "delete"},
		{"id": "m1", "importMode": "deleteIfMatchETag", "eTag": "AAAAAAAAAAk="},
		{"id": "m2", "importMode": "bogus"},
	})
	e.want(r, 400, "")
	var res hub.BulkResult
	r.json(t, &res)
	if res.IsSuccessful || len(res.Errors) != 3 {
		t.Fatalf("bulk result %s", r.body)
	}
	wantErr := map[string]string{"exists": "DeviceAlreadyExists", "m1": "PreconditionFailed", "m2": "ArgumentInvalid"}
	for _, be := range res.Errors {
		if wantErr[be.DeviceID] != be.ErrorCode || be.ErrorStatus == "" {
			t.Fatalf("unexpected error %+v", be)
		}
	}
	for path, want := range map[string]int{"/devices/new1": 200, "/devices/new2/modules/$edgeAgent": 200, "/devices/m0": 404, "/devices/m1": 200} {
		e.want(e.do("GET", path, nil), want, "")
	}
	var tw struct {
		Tags map[string]any `json:"tags"`
	}
	e.do("GET", "/twins/new1", nil).json(t, &tw)
	if tw.Tags["x"] != "v" {
		t.Fatalf("bulk tags not applied: %v", tw.Tags)
	}
}

func TestQuery(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		id := fmt.Sprintf("d%d", i)
		e.want(e.do("PUT", "/devices/"+id, map[string]any{}), 200, "")
		e.want(e.do("PATCH", "/twins/"+id, map[string]any{"tags": map[string]any{"x": fmt.Sprintf("v%d", i%2)}}), 200, "")
	}
	e.want(e.do("PUT", "/devices/edge", map[string]any{"capabilities": map[string]any{"iotEdge": true}}), 200, "")

	var got []string
	cont, pages := "", 0
	for {
		r := e.do("POST", "/devices/query", map[string]string{"query": "SELECT * FROM devices WHERE capabilities.iotEdge = false"},
			"x-ms-max-item-count", "2", "x-ms-continuation", cont)
		e.want(r, 200, "")
		var items []map[string]any
		r.json(t, &items)
		for _, it := range items {
			got = append(got, fmt.Sprint(it["deviceId"]))
		}
		pages++
		cont = r.header.Get("x-ms-continuation")
		if cont == "" {
			break
		}
		if pages > 10 {
			t.Fatal("paging does not end")
		}
	}
	if pages != 3 || fmt.Sprint(got) != "[d0 d1 d2 d3 d4]" {
		t.Fatalf("%d pages: %v", pages, got)
	}

	tests := []struct {
		name   string
		body   any
		hdr    []string
		status int
		want   string
	}{
		{"projection", map[string]string{"query": "SELECT deviceId FROM devices WHERE tags.x = 'v1'"}, nil, 200, `[{"deviceId":"d1"},{"deviceId":"d3"}]`},
		{"count", map[string]string{"query": "SELECT COUNT() AS n FROM devices"}, nil, 200, `[{"n":6}]`},
		{"modules", map[string]string{"query": "SELECT deviceId, moduleId FROM devices.modules"}, nil, 200, `[{"deviceId":"edge","moduleId":"$edgeAgent"},{"deviceId":"edge","moduleId":"$edgeHub"}]`},
		{"no match", map[string]string{"query": "SELECT * FROM devices WHERE tags.x = 'none'"}, nil, 200, `[]`},
		{"syntax", map[string]string{"query": "SELECT FROM"}, nil, 400, ""},
		{"empty", map[string]string{"query": ""}, nil, 400, ""},
		{"bad page size", map[string]string{"query": "SELECT * FROM devices"}, []string{"x-ms-max-item-count", "zero"}, 400, ""},
		{"foreign continuation", map[string]string{"query": "SELECT * FROM devices"}, []string{"x-ms-continuation", "AQIDBAUGBwgJCg"}, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/devices/query", tc.body, tc.hdr...)
			e.want(r, tc.status, "")
			if tc.want != "" && strings.TrimSpace(string(r.body)) != tc.want {
				t.Fatalf("body %s; want %s", r.body, tc.want)
			}
			if tc.status == 200 && r.header.Get("x-ms-continuation") != "" {
				t.Fatalf("continuation on a complete answer")
			}
		})
	}
}
