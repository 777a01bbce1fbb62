package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Direct method bounds, in seconds, as IoT Hub sets them (IoT Hub's
// minimum response timeout is 5 s; ours is 1 s).
const (
	DefaultMethodTimeout = 30
	MaxMethodTimeout     = 300
)

// CheckMethodCall validates a direct method request the way the hub and
// the edge both serve it (REST, and the edge's MQTT extension): a method
// name that fits in a topic, timeouts within bounds, a JSON payload. It
// returns the payload to send (JSON null when empty) and the response
// and connect timeouts; errors are 400 *StatusError.
func CheckMethodCall(name string, payload []byte, responseSecs, connectSecs int) (body []byte, response, connect time.Duration, err error) {
	bad := func(format string, args ...any) error {
		return &StatusError{Status: http.StatusBadRequest, Code: "ArgumentInvalid", Message: fmt.Sprintf(format, args...)}
	}
	if name == "" || strings.ContainsAny(name, "/?#+\x00") {
		return nil, 0, 0, bad("methodName %q: empty, or holds / ? # +", name)
	}
	if responseSecs == 0 {
		responseSecs = DefaultMethodTimeout
	}
	if responseSecs < 1 || responseSecs > MaxMethodTimeout {
		return nil, 0, 0, bad("responseTimeoutInSeconds %d: want 1 to %d", responseSecs, MaxMethodTimeout)
	}
	if connectSecs < 0 || connectSecs > MaxMethodTimeout {
		return nil, 0, 0, bad("connectTimeoutInSeconds %d: want 0 to %d", connectSecs, MaxMethodTimeout)
	}
	body = payload
	if len(body) == 0 {
		body = []byte("null")
	}
	if !json.Valid(body) {
		return nil, 0, 0, bad("payload is not JSON")
	}
	return body, time.Duration(responseSecs) * time.Second, time.Duration(connectSecs) * time.Second, nil
}
