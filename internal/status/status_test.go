package status

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The bodies below are what the Azure SDKs parse today: the service SDK
// and the device SDK's HTTPS transport read the code from Message (and
// iothub-errorcode), the device SDK's MQTT twin fails a call on errorCode.
// A change to any of them breaks interop, so they are spelled out byte for
// byte.
var golden = []struct {
	err  *Error
	http string // body of WriteHTTP, tracking id "t0" at goldenTime
	mqtt string
}{
	{
		err:  NotFound(CodeDeviceNotFound, "device %q not found", "d1"),
		http: `{"Message":"ErrorCode:DeviceNotFound;device \"d1\" not found","ExceptionMessage":"Tracking ID:t0-G:0-TimeStamp:12/08/2026 01:02:03"}`,
		mqtt: `{"errorCode":404000,"message":"DeviceNotFound: device \"d1\" not found"}`,
	},
	{
		err:  PreconditionFailed("etag mismatch"),
		http: `{"Message":"ErrorCode:PreconditionFailed;etag mismatch","ExceptionMessage":"Tracking ID:t0-G:0-TimeStamp:12/08/2026 01:02:03"}`,
		mqtt: `{"errorCode":412000,"message":"PreconditionFailed: etag mismatch"}`,
	},
	{
		err:  Unauthorized("Unauthorized"),
		http: `{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":"Tracking ID:t0-G:0-TimeStamp:12/08/2026 01:02:03"}`,
		mqtt: `{"errorCode":401000,"message":"IotHubUnauthorizedAccess: Unauthorized"}`,
	},
	{
		// JSON escaping of a message that quotes user input.
		err:  BadRequest(CodeArgumentInvalid, "key <a&b> is not allowed"),
		http: `{"Message":"ErrorCode:ArgumentInvalid;key \u003ca\u0026b\u003e is not allowed","ExceptionMessage":"Tracking ID:t0-G:0-TimeStamp:12/08/2026 01:02:03"}`,
		mqtt: `{"errorCode":400000,"message":"ArgumentInvalid: key \u003ca\u0026b\u003e is not allowed"}`,
	},
	{
		err:  Errorf(http.StatusTooManyRequests, CodeThrottling, "request rate too high; retry later"),
		http: `{"Message":"ErrorCode:ThrottlingException;request rate too high; retry later","ExceptionMessage":"Tracking ID:t0-G:0-TimeStamp:12/08/2026 01:02:03"}`,
		mqtt: `{"errorCode":429000,"message":"ThrottlingException: request rate too high; retry later"}`,
	},
}

var goldenTime = time.Date(2026, 12, 8, 2, 2, 3, 0, time.FixedZone("CET", 3600))

func TestGoldenHTTP(t *testing.T) {
	for _, g := range golden {
		t.Run(g.err.Code, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeHTTP(rec, g.err, "t0", goldenTime)
			if rec.Code != g.err.Status {
				t.Errorf("status %d, want %d", rec.Code, g.err.Status)
			}
			if got := rec.Body.String(); got != g.http {
				t.Errorf("body\n got %s\nwant %s", got, g.http)
			}
			want := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Iothub-Errorcode": {g.err.Code}}
			if fmt.Sprint(rec.Header()) != fmt.Sprint(want) {
				t.Errorf("headers %v, want %v", rec.Header(), want)
			}
		})
	}
}

func TestGoldenMQTT(t *testing.T) {
	for _, g := range golden {
		t.Run(g.err.Code, func(t *testing.T) {
			if got := string(g.err.MQTTBody()); got != g.mqtt {
				t.Errorf("body\n got %s\nwant %s", got, g.mqtt)
			}
			// What one side writes the other reads back whole: the edge
			// passes a hub's refusal on to its device unchanged.
			if back := FromMQTT(g.err.Status, g.err.MQTTBody()); *back != *g.err {
				t.Errorf("FromMQTT(MQTTBody) = %+v, want %+v", *back, *g.err)
			}
		})
	}
}

func TestFromMQTTForeign(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   Error
	}{
		{"azure numeric code", 400, `{"errorCode":400027,"message":"twin too large"}`, Error{400, "400027", "twin too large"}},
		{"string code", 404, `{"errorCode":"DeviceNotFound","message":"gone"}`, Error{404, "DeviceNotFound", "gone"}},
		{"no code", 404, `{"message":"no such twin"}`, Error{404, CodeNotFound, "no such twin"}},
		{"no message", 429, `{"errorCode":429001}`, Error{429, "429001", `{"errorCode":429001}`}},
		{"not json", 503, `upstream down`, Error{503, CodeServerError, "upstream down"}},
		{"empty", 400, ``, Error{400, CodeArgumentInvalid, ""}},
		{"message with spaces before the colon", 400, `{"errorCode":400000,"message":"bad input: x"}`, Error{400, "400000", "bad input: x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FromMQTT(tc.status, []byte(tc.body)); *got != tc.want {
				t.Errorf("FromMQTT(%d, %s) = %+v, want %+v", tc.status, tc.body, *got, tc.want)
			}
		})
	}
}

func TestFrom(t *testing.T) {
	nf := NotFound(CodeDeviceNotFound, "gone")
	ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	for _, tc := range []struct {
		name  string
		err   error
		want  Error
		known bool
	}{
		{"status error", nf, *nf, true},
		{"wrapped", fmt.Errorf("twin get d1: %w", nf), *nf, true},
		{"deadline", fmt.Errorf("backend: %w", ctx.Err()), Error{504, CodeGatewayTimeout, "the request timed out"}, false},
		{"other", errors.New("pebble: disk on fire"), Error{500, CodeServerError, "internal error"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := From(tc.err); *got != tc.want {
				t.Errorf("From = %+v, want %+v", *got, tc.want)
			}
			if _, ok := As(tc.err); ok != tc.known {
				t.Errorf("As ok = %v, want %v", ok, tc.known)
			}
		})
	}
}

func TestConstructors(t *testing.T) {
	for _, tt := range []struct {
		err    *Error
		status int
		code   string
	}{
		{BadRequest(CodeArgumentInvalid, "x"), 400, CodeArgumentInvalid},
		{Unauthorized("x"), 401, CodeUnauthorized},
		{NotFound(CodeDeviceNotFound, "device %q", "d"), 404, CodeDeviceNotFound},
		{Conflict(CodeModuleAlreadyExists, "x"), 409, CodeModuleAlreadyExists},
		{PreconditionFailed("x"), 412, CodePreconditionFailed},
	} {
		if tt.err.Status != tt.status || tt.err.Code != tt.code || tt.err.Error() != tt.code+": x" && tt.err.Error() != tt.code+`: device "d"` {
			t.Errorf("%+v", tt.err)
		}
	}
}

// FuzzFromMQTT: any body reads into an Error with the topic's status and
// a code, and every Error whose code is a token reads back whole from its
// own MQTTBody.
func FuzzFromMQTT(f *testing.F) {
	for _, g := range golden {
		f.Add(g.err.Status, g.err.Code, g.err.Message, []byte(g.mqtt))
	}
	f.Add(400, "400027", "", []byte(`{"errorCode":400027,"message":"x"}`))
	f.Add(503, "", "", []byte(`not json`))
	f.Fuzz(func(t *testing.T, st int, code, msg string, raw []byte) {
		got := FromMQTT(st, raw)
		if got.Status != st || got.Code == "" {
			t.Fatalf("FromMQTT(%d, %q) = %+v: status lost or no code", st, raw, *got)
		}
		if code == "" || strings.ContainsAny(code, " \t") || !utf8.ValidString(code) || !utf8.ValidString(msg) {
			return
		}
		e := &Error{Status: st, Code: code, Message: msg}
		if back := FromMQTT(st, e.MQTTBody()); *back != *e {
			t.Fatalf("FromMQTT(MQTTBody(%+v)) = %+v", *e, *back)
		}
	})
}
