// Package status is the one error a device or service caller sees: an
// HTTP-style status, an IoT Hub error code name and a message. It writes
// that error in the two shapes the Azure IoT SDKs parse: the HTTPS body
// {"Message":"ErrorCode:Code;text","ExceptionMessage":"Tracking ID:…"}
// (WriteHTTP) and the MQTT twin and extension response body
// {"errorCode":404000,"message":"Code: text"} (MQTTBody, read back by
// FromMQTT). The registry, twins, the device endpoint, the hub's data plane
// and the edge all return it, so an error crosses hub, link and edge
// without a mapper.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"outpost/internal/message"
)

// Error codes, as Azure IoT Hub names them in its error bodies.
const (
	CodeArgumentInvalid       = "ArgumentInvalid"
	CodeDeviceNotFound        = "DeviceNotFound"
	CodeModuleNotFound        = "ModuleNotFound"
	CodeDeviceAlreadyExists   = "DeviceAlreadyExists"
	CodeModuleAlreadyExists   = "ModuleAlreadyExists"
	CodePreconditionFailed    = "PreconditionFailed"
	CodeUnauthorized          = "IotHubUnauthorizedAccess"
	CodeInvalidChildDevice    = "InvalidChildDevice"
	CodeInvalidParentDevice   = "InvalidParentDevice"
	CodeTwinSizeExceeded      = "TwinSizeExceeded"
	CodeMessageTooLarge       = "MessageTooLarge"
	CodeThrottling            = "ThrottlingException"
	CodeQuotaExceeded         = "IotHubQuotaExceeded"
	CodeDeviceNotOnline       = "DeviceNotOnline"
	CodeDeviceMessageLockLost = "DeviceMessageLockLost"
	CodeNotFound              = "NotFound"
	CodeGatewayTimeout        = "GatewayTimeout"
	CodeServiceUnavailable    = "ServiceUnavailable"
	CodeServerError           = "ServerError"
)

// Error is a refused request. Message names what was wrong, so a user can
// fix the request without reading our source. Retrying the same request
// can help only for a 429 or a 5xx.
type Error struct {
	Status  int    // 400, 404, 412, 429, 503, …
	Code    string // IoT Hub error code name, e.g. "DeviceNotFound"
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// BadRequest is a 400: the request itself is wrong and retrying it
// unchanged cannot help.
func BadRequest(code, format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, code, format, args...)
}

// NotFound is a 404 (code DeviceNotFound or ModuleNotFound, mostly).
func NotFound(code, format string, args ...any) *Error {
	return Errorf(http.StatusNotFound, code, format, args...)
}

// Conflict is a 409 (code DeviceAlreadyExists or ModuleAlreadyExists).
func Conflict(code, format string, args ...any) *Error {
	return Errorf(http.StatusConflict, code, format, args...)
}

// PreconditionFailed is a 412: the If-Match etag is stale; re-read and
// retry.
func PreconditionFailed(format string, args ...any) *Error {
	return Errorf(http.StatusPreconditionFailed, CodePreconditionFailed, format, args...)
}

// Unauthorized is a 401.
func Unauthorized(format string, args ...any) *Error {
	return Errorf(http.StatusUnauthorized, CodeUnauthorized, format, args...)
}

// As returns the *Error in err's chain, if there is one.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// From returns what a caller sees for err: the *Error in its chain; a 504
// for a deadline that passed; else a 500 whose details stay in the
// server's log (see As to tell the cases apart).
func From(err error) *Error {
	if e, ok := As(err); ok {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Status: http.StatusGatewayTimeout, Code: CodeGatewayTimeout, Message: "the request timed out"}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeServerError, Message: "internal error"}
}

// httpBody is IoT Hub's HTTPS error body. The service SDKs read the code
// from Message (or the iothub-errorcode header); ExceptionMessage carries
// the tracking id a user quotes in a report.
type httpBody struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// WriteHTTP answers err (mapped by From) in IoT Hub's HTTPS error shape,
// stamped with now, and returns what it wrote so the caller can log it.
func WriteHTTP(w http.ResponseWriter, err error, now time.Time) *Error {
	e := From(err)
	writeHTTP(w, e, message.NewID(), now)
	return e
}

func writeHTTP(w http.ResponseWriter, e *Error, tracking string, now time.Time) {
	b, _ := json.Marshal(httpBody{ // two strings: cannot fail
		Message:          "ErrorCode:" + e.Code + ";" + e.Message,
		ExceptionMessage: "Tracking ID:" + tracking + "-G:0-TimeStamp:" + now.UTC().Format("01/02/2006 15:04:05"),
	})
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("iothub-errorcode", e.Code)
	w.WriteHeader(e.Status)
	_, _ = w.Write(b)
}

// mqttBody is the body the Azure device SDKs recognise as a failed twin
// request: they look only for errorCode, and fail on a body that is not
// JSON.
type mqttBody struct {
	ErrorCode int    `json:"errorCode"`
	Message   string `json:"message"`
}

// MQTTBody is e as the body of a twin or extension response, published
// with e.Status in the topic. IoT Hub's codes are the status times 1000
// plus a detail; ours use detail 0, and carry the code name in message.
func (e *Error) MQTTBody() []byte {
	b, _ := json.Marshal(mqttBody{e.Status * 1000, e.Code + ": " + e.Message}) // cannot fail
	return b
}

// FromMQTT reads a refused twin or extension response: status from its
// topic, body as MQTTBody writes it. A body of another shape (Azure's
// numeric codes with plain text, or no JSON at all) still gives an Error:
// the numeric errorCode as Code, the body as Message.
func FromMQTT(status int, body []byte) *Error {
	var b struct {
		ErrorCode any    `json:"errorCode"`
		Message   string `json:"message"`
	}
	e := &Error{Status: status, Code: codeOf(status)}
	if json.Unmarshal(body, &b) != nil {
		e.Message = clip(string(body))
		return e
	}
	if code, msg, ok := strings.Cut(b.Message, ": "); ok && code != "" && !strings.ContainsAny(code, " \t") {
		e.Code, e.Message = code, msg
		return e
	}
	switch c := b.ErrorCode.(type) {
	case float64:
		e.Code = strconv.FormatFloat(c, 'f', -1, 64)
	case string:
		if c != "" {
			e.Code = c
		}
	}
	e.Message = b.Message
	if e.Message == "" {
		e.Message = clip(string(body))
	}
	return e
}

// codeOf names a status that came without a code.
func codeOf(status int) string {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return CodeUnauthorized
	case status == http.StatusNotFound:
		return CodeNotFound
	case status == http.StatusPreconditionFailed:
		return CodePreconditionFailed
	case status == http.StatusTooManyRequests:
		return CodeThrottling
	case status == http.StatusGatewayTimeout:
		return CodeGatewayTimeout
	case status >= 500:
		return CodeServerError
	}
	return CodeArgumentInvalid
}

// clip bounds a foreign body quoted in a message.
func clip(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
