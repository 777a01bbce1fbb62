package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/twin"
)

// apiError is an answer in Azure's error shape:
// {"Message":"ErrorCode:Code;text","ExceptionMessage":"Tracking ID:…"}.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// asAPIError maps the registry's and twins' errors onto HTTP; anything
// unknown is a 500 whose details stay in the log.
func asAPIError(err error) (*apiError, bool) {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae, true
	}
	var ie *identity.Error
	if errors.As(err, &ie) {
		return &apiError{Status: ie.Status, Code: ie.Code, Message: ie.Message}, true
	}
	var te *twin.Error
	if errors.As(err, &te) {
		return &apiError{Status: te.Status, Code: te.Code, Message: te.Message}, true
	}
	return &apiError{Status: http.StatusInternalServerError, Code: "ServerError", Message: "internal error"}, false
}

type errorBody struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

func writeAPIError(w http.ResponseWriter, e *apiError, now time.Time) {
	tracking := message.NewID()
	w.Header().Set("iothub-errorcode", e.Code)
	writeJSON(w, e.Status, errorBody{
		Message:          "ErrorCode:" + e.Code + ";" + e.Message,
		ExceptionMessage: "Tracking ID:" + tracking + "-G:0-TimeStamp:" + now.UTC().Format("01/02/2006 15:04:05"),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
