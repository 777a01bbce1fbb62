package gateway

import (
	"encoding/json"
	"time"

	"outpost/internal/status"
	"outpost/internal/topic"
)

// Direct method bounds, in seconds, as IoT Hub sets them (IoT Hub's
// minimum response timeout is 5 s; ours is 1 s).
const (
	DefaultMethodTimeout = 30
	MaxMethodTimeout     = 300
)

// MethodCall is a direct method request as IoT Hub's REST API takes it
// (POST /twins/{d}[/modules/{m}]/methods), at the hub and at the edge.
type MethodCall struct {
	MethodName string          `json:"methodName"`
	Payload    json.RawMessage `json:"payload,omitempty"`
	// ResponseTimeoutInSeconds: 0 means DefaultMethodTimeout; at most
	// MaxMethodTimeout.
	ResponseTimeoutInSeconds int `json:"responseTimeoutInSeconds,omitempty"`
	// ConnectTimeoutInSeconds: how long to wait for the target to
	// connect; 0 fails at once when it is not connected.
	ConnectTimeoutInSeconds int `json:"connectTimeoutInSeconds,omitempty"`
}

// MethodResult is the target's answer to a MethodCall.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// Check validates a direct method request the way the hub and the edge
// both serve it (REST, and the edge's MQTT extension): a method name that
// fits in a topic, timeouts within bounds, a JSON payload. It returns the
// payload to send (JSON null when empty) and the response and connect
// timeouts; errors are 400 *status.Error.
func (c MethodCall) Check() (body []byte, response, connect time.Duration, err error) {
	bad := func(format string, args ...any) error {
		return status.BadRequest(status.CodeArgumentInvalid, format, args...)
	}
	if !topic.ValidName(c.MethodName) {
		return nil, 0, 0, bad("methodName %q: empty, or holds / ? # +", c.MethodName)
	}
	responseSecs := c.ResponseTimeoutInSeconds
	if responseSecs == 0 {
		responseSecs = DefaultMethodTimeout
	}
	if responseSecs < 1 || responseSecs > MaxMethodTimeout {
		return nil, 0, 0, bad("responseTimeoutInSeconds %d: want 1 to %d", responseSecs, MaxMethodTimeout)
	}
	if c.ConnectTimeoutInSeconds < 0 || c.ConnectTimeoutInSeconds > MaxMethodTimeout {
		return nil, 0, 0, bad("connectTimeoutInSeconds %d: want 0 to %d", c.ConnectTimeoutInSeconds, MaxMethodTimeout)
	}
	body = c.Payload
	if len(body) == 0 {
		body = []byte("null")
	}
	if !json.Valid(body) {
		return nil, 0, 0, bad("payload is not JSON")
	}
	return body, time.Duration(responseSecs) * time.Second, time.Duration(c.ConnectTimeoutInSeconds) * time.Second, nil
}

// ResultPayload is a target's response as JSON for MethodResult: as sent
// when it is JSON, else as a JSON string; null when empty.
func ResultPayload(b []byte) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	s, _ := json.Marshal(string(b))
	return s
}
