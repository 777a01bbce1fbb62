package identity

import (
	"fmt"
	"net/http"
)

// Error codes, as Azure IoT Hub names them in its error bodies.
const (
	CodeArgumentInvalid     = "ArgumentInvalid"
	CodeDeviceNotFound      = "DeviceNotFound"
	CodeModuleNotFound      = "ModuleNotFound"
	CodeDeviceAlreadyExists = "DeviceAlreadyExists"
	CodeModuleAlreadyExists = "ModuleAlreadyExists"
	CodePreconditionFailed  = "PreconditionFailed"
	CodeUnauthorized        = "IotHubUnauthorizedAccess"
	CodeInvalidChildDevice  = "InvalidChildDevice"
	CodeInvalidParentDevice = "InvalidParentDevice"
)

// Error is a registry rule violation with the HTTP status and Azure error
// code the service API answers with. Message names the rule broken, so a
// user can fix the request without reading our source.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func newError(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// BadRequest is a 400: the request itself is wrong and retrying it
// unchanged cannot help.
func BadRequest(code, format string, args ...any) *Error {
	return newError(http.StatusBadRequest, code, format, args...)
}

// NotFound is a 404 (code DeviceNotFound or ModuleNotFound).
func NotFound(code, format string, args ...any) *Error {
	return newError(http.StatusNotFound, code, format, args...)
}

// Conflict is a 409 (code DeviceAlreadyExists or ModuleAlreadyExists).
func Conflict(code, format string, args ...any) *Error {
	return newError(http.StatusConflict, code, format, args...)
}

// PreconditionFailed is a 412: the If-Match etag is stale; re-read and
// retry.
func PreconditionFailed(format string, args ...any) *Error {
	return newError(http.StatusPreconditionFailed, CodePreconditionFailed, format, args...)
}

// Unauthorized is a 401.
func Unauthorized(format string, args ...any) *Error {
	return newError(http.StatusUnauthorized, CodeUnauthorized, format, args...)
}
