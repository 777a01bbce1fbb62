package gateway

import (
	"errors"
	"testing"
	"time"

	"outpost/internal/status"
)

func TestMethodCallCheck(t *testing.T) {
	tests := []struct {
		name          string
		method        string
		payload       string
		resp, connect int
		wantBody      string
		wantResp      time.Duration
		wantConnect   time.Duration
		ok            bool
	}{
		{"defaults", "reboot", "", 0, 0, "null", 30 * time.Second, 0, true},
		{"given", "set", `{"a":1}`, 5, 10, `{"a":1}`, 5 * time.Second, 10 * time.Second, true},
		{"at the bounds", "m", "1", 300, 300, "1", 300 * time.Second, 300 * time.Second, true},
		{"empty name", "", "", 0, 0, "", 0, 0, false},
		{"name with a slash", "a/b", "", 0, 0, "", 0, 0, false},
		{"name with a wildcard", "a+", "", 0, 0, "", 0, 0, false},
		{"response too long", "m", "", 301, 0, "", 0, 0, false},
		{"response negative", "m", "", -1, 0, "", 0, 0, false},
		{"connect negative", "m", "", 0, -1, "", 0, 0, false},
		{"connect too long", "m", "", 0, 301, "", 0, 0, false},
		{"payload not JSON", "m", "{nope", 0, 0, "", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := MethodCall{MethodName: tt.method, Payload: []byte(tt.payload), ResponseTimeoutInSeconds: tt.resp, ConnectTimeoutInSeconds: tt.connect}
			body, resp, connect, err := c.Check()
			if !tt.ok {
				var se *status.Error
				if !errors.As(err, &se) || se.Status != 400 || se.Code != "ArgumentInvalid" {
					t.Fatalf("err = %v, want a 400 ArgumentInvalid", err)
				}
				return
			}
			if err != nil || string(body) != tt.wantBody || resp != tt.wantResp || connect != tt.wantConnect {
				t.Fatalf("got %q %v %v %v; want %q %v %v", body, resp, connect, err, tt.wantBody, tt.wantResp, tt.wantConnect)
			}
		})
	}
}

func TestResultPayload(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", "null"},
		{"JSON object", `{"a":[1,2]}`, `{"a":[1,2]}`},
		{"JSON string", `"hi"`, `"hi"`},
		{"text", "not json", `"not json"`},
		{"text with quotes", `say "hi"`, `"say \"hi\""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ResultPayload([]byte(tt.in)); string(got) != tt.want {
				t.Errorf("ResultPayload(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}
