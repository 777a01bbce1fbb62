// Package statustest checks that an endpoint answered with the IoT Hub
// error shape status.WriteHTTP writes, for the tests of every package that
// serves HTTPS (gateway, hub API, data plane, edge).
package statustest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"outpost/internal/status"
)

// exception is the ExceptionMessage of status.WriteHTTP: a 32-hex tracking
// id and a UTC timestamp in Azure's month-first format.
var exception = regexp.MustCompile(`^Tracking ID:[0-9a-f]{32}-G:0-TimeStamp:\d\d/\d\d/\d{4} \d\d:\d\d:\d\d$`)

// CheckHTTP reads and closes resp's body and fails t unless resp is want
// in IoT Hub's HTTPS error shape: status, Content-Type, iothub-errorcode,
// and a body of exactly Message and ExceptionMessage. An empty
// want.Message accepts any non-empty text (a token or parser error quoted
// as is). It returns the error as sent.
func CheckHTTP(t testing.TB, resp *http.Response, want *status.Error) *status.Error {
	t.Helper()
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read error body: %v", err)
	}
	if resp.StatusCode != want.Status {
		t.Errorf("status %d, want %d (body %s)", resp.StatusCode, want.Status, raw)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type %q, want application/json; charset=utf-8", ct)
	}
	if c := resp.Header.Get("iothub-errorcode"); c != want.Code {
		t.Errorf("iothub-errorcode %q, want %q", c, want.Code)
	}
	var body struct {
		Message          string
		ExceptionMessage string
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("error body %s: %v", raw, err)
	}
	got := &status.Error{Status: resp.StatusCode}
	rest, ok := strings.CutPrefix(body.Message, "ErrorCode:")
	if ok {
		got.Code, got.Message, ok = strings.Cut(rest, ";")
	}
	switch {
	case !ok:
		t.Errorf("Message %q is not ErrorCode:Code;text", body.Message)
	case got.Code != want.Code:
		t.Errorf("Message %q: code %q, want %q", body.Message, got.Code, want.Code)
	case want.Message != "" && got.Message != want.Message:
		t.Errorf("Message %q: text %q, want %q", body.Message, got.Message, want.Message)
	case got.Message == "":
		t.Errorf("Message %q has no text", body.Message)
	}
	if !exception.MatchString(body.ExceptionMessage) {
		t.Errorf("ExceptionMessage %q is not Tracking ID:…-G:0-TimeStamp:MM/DD/YYYY HH:MM:SS", body.ExceptionMessage)
	}
	return got
}
