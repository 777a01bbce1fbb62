package dataplane

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"outpost/internal/hub"
	"outpost/internal/sas"
	"outpost/internal/status"
	"outpost/internal/status/statustest"
)

// TestRESTErrorBodies: every refusal of the data plane's REST routes is
// in the full IoT Hub error shape (Message, ExceptionMessage,
// iothub-errorcode) the service SDKs parse, with its status and code.
func TestRESTErrorBodies(t *testing.T) {
	e := newEnv(t)
	e.device("offline-dev", false)
	tok, err := sas.Sign(testHost, e.svcKey, hub.ServicePolicy, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool}}}
	t.Cleanup(c.CloseIdleConnections)
	const q = "?api-version=2021-04-12"
	for _, tc := range []struct {
		name, path, auth, body string
		want                   *status.Error
	}{
		{"no token", "/twins/offline-dev/methods", "", `{"methodName":"m"}`,
			&status.Error{Status: 401, Code: status.CodeUnauthorized}},
		{"bad body", "/twins/offline-dev/methods", tok, `{nope`,
			&status.Error{Status: 400, Code: status.CodeArgumentInvalid}},
		{"unknown device", "/twins/ghost/methods", tok, `{"methodName":"m","responseTimeoutInSeconds":5}`,
			&status.Error{Status: 404, Code: status.CodeDeviceNotFound}},
		{"device not online", "/twins/offline-dev/methods", tok, `{"methodName":"m","responseTimeoutInSeconds":5}`,
			status.NotFound(status.CodeDeviceNotOnline, "device offline-dev is not connected, or not subscribed to methods")},
		{"c2d too large", "/devices/offline-dev/messages/devicebound", tok, strings.Repeat("x", MaxC2DSize+1),
			status.Errorf(413, status.CodeMessageTooLarge, "c2d message exceeds 64 KiB")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("POST", e.https.URL+tc.path+q, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			statustest.CheckHTTP(t, resp, tc.want)
		})
	}
}
