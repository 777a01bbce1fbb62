package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPrintRaw(t *testing.T) {
	devices := `[{"deviceId":"b","status":"enabled","capabilities":{"iotEdge":false}},
	             {"deviceId":"a","status":"disabled","parentScopes":["x"],"n":3}]`
	tests := []struct {
		name, format, in, want string
	}{
		{"json indents", "json", `{"a":1,"b":[1,2]}`, "{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ]\n}\n"},
		{"tsv one field gives bare values", "tsv", `[{"deviceId":"d1"},{"deviceId":"d 2"},{"deviceId":"d3"}]`, "d1\nd 2\nd3\n"},
		{"tsv keeps projection order", "tsv", `[{"z":"1","a":2,"m":null}]`, "1\t2\t\n"},
		{"tsv of strings", "tsv", `["c1","c2"]`, "c1\nc2\n"},
		{"tsv nested as compact JSON", "tsv", `[{"id":"x","tags":{"a": [1, 2]}}]`, "x\t{\"a\":[1,2]}\n"},
		{"tsv escapes tabs and newlines", "tsv", `[{"v":"a\tb\nc"}]`, "a b c\n"},
		{"tsv empty", "tsv", `[]`, ""},
		{"table", "table", devices,
			"deviceId  status    capabilities       parentScopes  n\n" +
				"--------  ------    ------------       ------------  -\n" +
				"b         enabled   {\"iotEdge\":false}\n" +
				"a         disabled                     [\"x\"]         3\n"},
		{"table of one object", "table", `{"deviceId":"d","etag":"e"}`, "deviceId  etag\n--------  ----\nd         e\n"},
		{"table of scalars", "table", `["a","b"]`, "Result\n------\na\nb\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printRaw(&b, tt.format, []byte(tt.in)); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got\n%q\nwant\n%q", b.String(), tt.want)
			}
		})
	}
	t.Run("unknown format", func(t *testing.T) {
		if err := printRaw(io.Discard, "yaml", []byte(`{}`)); err == nil {
			t.Error("no error for -o yaml")
		}
	})
}

func TestSplitList(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"a,b,c", []string{"a", "b", "c"}},
		{"a, b, c", []string{"a", "b", "c"}}, // az's join(`, `, …)
		{" a ,,b, ", []string{"a", "b"}},
		{"", nil},
		{"d(1)!,x=y", []string{"d(1)!", "x=y"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := splitList(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseJSONObject(t *testing.T) {
	tests := []struct {
		in      string
		wantErr bool
	}{
		{`{"a":1}`, false},
		{`{"a":{"b":null}}`, false},
		{`{}`, false},
		{`[1]`, true},
		{`null`, true},
		{`{"a":1} x`, true},
		{`{a:1}`, true},
		{`"s"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := parseJSONObject("desired", tt.in)
			if (err != nil) != tt.wantErr {
				t.Errorf("err %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "--desired") {
				t.Errorf("error %q does not name the flag", err)
			}
		})
	}
}

// runCLI runs the admin commands in-process, capturing their output.
func runCLI(t *testing.T, args ...string) (out, errOut string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	stdout, stderr = &o, &e
	t.Cleanup(func() { stdout, stderr = os.Stdout, os.Stderr })
	err = run(context.Background(), args)
	return o.String(), e.String(), err
}

// TestBadInput checks that bad input fails before any request is made and
// says what is wrong. No hub is running: a request would fail differently.
func TestBadInput(t *testing.T) {
	t.Setenv(envHubConnectionString, "HostName=127.0.0.1:1;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5")
	tests := []struct {
		name    string
		args    []string
		wantErr string // in the returned error; "usage" when the flag package explained it
		stderr  string
	}{
		{"missing device id", []string{"device-identity", "show"}, "--device-id is required", ""},
		{"unknown flag", []string{"device-identity", "create", "--device-id", "d", "--bogus"}, "usage", "flag provided but not defined: -bogus"},
		{"stray argument", []string{"device-identity", "show", "--device-id", "d", "extra"}, "usage", `unexpected argument "extra"`},
		{"unknown verb", []string{"device-identity", "frobnicate"}, `unknown command "frobnicate"`, ""},
		{"bad auth method", []string{"device-identity", "create", "--device-id", "d", "--auth-method", "password"}, "--auth-method", ""},
		{"thumbprint needs x509", []string{"device-identity", "create", "--device-id", "d", "--primary-thumbprint", "AB"}, "x509_thumbprint", ""},
		{"x509 needs thumbprint", []string{"device-identity", "create", "--device-id", "d", "--auth-method", "x509_thumbprint"}, "--primary-thumbprint", ""},
		{"bad status", []string{"device-identity", "create", "--device-id", "d", "--status", "on"}, "--status", ""},
		{"empty child list", []string{"device-identity", "add-children", "--device-id", "e", "--child-list", " , "}, "--child-list", ""},
		{"missing child list", []string{"device-identity", "remove-children", "--device-id", "e"}, "--child-list is required", ""},
		{"module needs module id", []string{"module-identity", "show", "--device-id", "d"}, "--module-id is required", ""},
		{"query needs q", []string{"query"}, "--q is required", ""},
		{"bad output", []string{"query", "-q", "SELECT * FROM devices", "-o", "yaml"}, "unknown output format", ""},
		{"negative top", []string{"query", "-q", "SELECT * FROM devices", "--top", "-1"}, "--top", ""},
		{"bad desired JSON", []string{"device-twin", "update", "--device-id", "d", "--desired", "{nope"}, "--desired: invalid JSON", ""},
		{"nothing to update", []string{"device-twin", "update", "--device-id", "d"}, "nothing to update", ""},
		{"no verb", []string{"device-twin"}, "usage", "usage: outpost device-twin"},
		{"connection string show needs id", []string{"device-identity", "connection-string", "show"}, "--device-id is required", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, err := runCLI(t, tt.args...)
			if err == nil {
				t.Fatal("no error")
			}
			if tt.wantErr == "usage" {
				if !errors.Is(err, errUsage) {
					t.Errorf("err %v, want a usage error", err)
				}
			} else if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %q, want it to contain %q", err, tt.wantErr)
			}
			if !strings.Contains(errOut, tt.stderr) {
				t.Errorf("stderr %q, want it to contain %q", errOut, tt.stderr)
			}
		})
	}
	t.Run("no connection string", func(t *testing.T) {
		t.Setenv(envHubConnectionString, "")
		_, _, err := runCLI(t, "device-identity", "list")
		if err == nil || !strings.Contains(err.Error(), "--hub-connection-string") {
			t.Errorf("err %v, want it to point at --hub-connection-string", err)
		}
	})
	t.Run("help is not an error", func(t *testing.T) {
		if _, _, err := runCLI(t, "device-identity", "show", "--help"); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("err %v, want flag.ErrHelp", err)
		}
	})
}

// TestCAAndServerErrors runs commands against a TLS server whose CA is
// given by --ca or OUTPOST_CA, and checks that the hub's Azure error
// reaches the user whole.
func TestCAAndServerErrors(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/devices/e1/children":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"Message":"ErrorCode:ArgumentInvalid;device 'e2' is an edge device: only non-edge devices can be children"}`)
		case r.URL.Path == "/devices/e1/children":
			io.WriteString(w, `["c2","c1"]`)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"Message":"ErrorCode:DeviceNotFound;device 'x' not found"}`)
		}
	}))
	// The untrusted-CA case makes the server log a handshake error.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	cs := "HostName=" + strings.TrimPrefix(srv.URL, "https://") + ";SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5"
	t.Setenv(envHubConnectionString, "")
	t.Setenv(envCA, "")

	t.Run("flags", func(t *testing.T) {
		_, _, err := runCLI(t, "device-identity", "show", "--device-id", "x", "--hub-connection-string", cs, "--ca", caFile)
		if err == nil || err.Error() != "DeviceNotFound: device 'x' not found" {
			t.Errorf("err %v", err)
		}
	})
	t.Run("environment", func(t *testing.T) {
		t.Setenv(envHubConnectionString, cs)
		t.Setenv(envCA, caFile)
		out, _, err := runCLI(t, "device-identity", "list-children", "--device-id", "e1")
		if err != nil {
			t.Fatal(err)
		}
		if out != "c1\nc2\n" {
			t.Errorf("list-children printed %q", out)
		}
		_, _, err = runCLI(t, "device-identity", "add-children", "--device-id", "e1", "--child-list", "e2")
		if err == nil || !strings.Contains(err.Error(), "only non-edge devices can be children") {
			t.Errorf("err %v", err)
		}
	})
	t.Run("untrusted without CA", func(t *testing.T) {
		_, _, err := runCLI(t, "device-identity", "show", "--device-id", "x", "--hub-connection-string", cs)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("err %v, want a certificate error", err)
		}
	})
}
