package sas

import (
	"strings"
	"testing"
	"time"
)

func TestParseConnectionString(t *testing.T) {
	tok, err := Sign("hub.local/devices/d1", key1, "", time.Unix(1800000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      string
		want    ConnectionString
		service bool
	}{
		{
			name: "device key",
			in:   "HostName=hub.local;DeviceId=d1;SharedAccessKey=" + key1,
			want: ConnectionString{HostName: "hub.local", DeviceID: "d1", SharedAccessKey: key1},
		},
		{
			name: "module via gateway, port, any case, spaces, trailing ;",
			in:   " hostname=localhost:18443; DEVICEID=edge1;ModuleId=$edgeHub;SharedAccessKey=" + key2 + ";GatewayHostName=gw.local ;",
			want: ConnectionString{HostName: "localhost:18443", DeviceID: "edge1", ModuleID: "$edgeHub", SharedAccessKey: key2, GatewayHostName: "gw.local"},
		},
		{
			name: "device sas",
			in:   "HostName=hub.local;DeviceId=d1;SharedAccessSignature=" + tok,
			want: ConnectionString{HostName: "hub.local", DeviceID: "d1", SharedAccessSignature: tok},
		},
		{
			name: "x509",
			in:   "HostName=hub.local;DeviceId=d1;x509=true",
			want: ConnectionString{HostName: "hub.local", DeviceID: "d1", X509: true},
		},
		{
			name: "device with policy",
			in:   "HostName=hub.local;DeviceId=d1;SharedAccessKeyName=device;SharedAccessKey=" + key1,
			want: ConnectionString{HostName: "hub.local", DeviceID: "d1", SharedAccessKeyName: "device", SharedAccessKey: key1},
		},
		{
			name:    "service",
			in:      "HostName=hub.local;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key1,
			want:    ConnectionString{HostName: "hub.local", SharedAccessKeyName: "iothubowner", SharedAccessKey: key1},
			service: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConnectionString(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			if got.IsService() != tt.service {
				t.Fatalf("IsService = %v", got.IsService())
			}
			again, err := ParseConnectionString(got.String())
			if err != nil || again != got {
				t.Fatalf("String() %q re-parses to %+v, %v", got.String(), again, err)
			}
		})
	}
}

func TestConnectionStringString(t *testing.T) {
	cs := ConnectionString{HostName: "h", DeviceID: "d", ModuleID: "m", SharedAccessKey: key1, GatewayHostName: "g"}
	want := "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=" + key1 + ";GatewayHostName=g"
	if cs.String() != want {
		t.Fatalf("String() = %q, want %q", cs.String(), want)
	}
	x := ConnectionString{HostName: "h", DeviceID: "d", X509: true}
	if x.String() != "HostName=h;DeviceId=d;x509=true" {
		t.Fatalf("String() = %q", x.String())
	}
}

func TestParseConnectionStringErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", "missing HostName"},
		{"no host", "DeviceId=d;SharedAccessKey=" + key1, "missing HostName"},
		{"no credential", "HostName=h;DeviceId=d", "exactly one"},
		{"two credentials", "HostName=h;DeviceId=d;x509=true;SharedAccessKey=" + key1, "exactly one"},
		{"bad x509", "HostName=h;DeviceId=d;x509=yes", "x509 must be"},
		{"x509 false", "HostName=h;DeviceId=d;x509=false", "exactly one"},
		{"bad key", "HostName=h;DeviceId=d;SharedAccessKey=abc!", "not base64"},
		{"bad sas", "HostName=h;DeviceId=d;SharedAccessSignature=nope", "SharedAccessSignature"},
		{"unknown", "HostName=h;DeviceName=d;SharedAccessKey=" + key1, `unknown field "DeviceName"`},
		{"empty value", "HostName=;DeviceId=d;x509=true", "empty HostName"},
		{"no equals", "HostName;DeviceId=d;x509=true", "empty HostName"},
		{"twice", "HostName=h;HostName=h2;DeviceId=d;x509=true", "HostName given twice"},
		{"module no device", "HostName=h;ModuleId=m;SharedAccessKeyName=o;SharedAccessKey=" + key1, "ModuleId without DeviceId"},
		{"service no name", "HostName=h;SharedAccessKey=" + key1, "missing DeviceId"},
		{"service x509", "HostName=h;SharedAccessKeyName=o;SharedAccessKey=" + key1 + ";x509=true", "service string"},
		{"keyname no key", "HostName=h;DeviceId=d;SharedAccessKeyName=o;x509=true", "SharedAccessKeyName without"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConnectionString(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseConnectionString(%q) error = %v, want containing %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestConnectionStringToken(t *testing.T) {
	exp := time.Unix(1800000000, 0)
	tests := []struct {
		name, cs string
		check    func(*Token) bool
	}{
		{"device", "HostName=hub.local:18443;DeviceId=d1;SharedAccessKey=" + key1,
			func(tok *Token) bool { return MatchesDevice(tok, "hub.local", "d1", "") }},
		{"module", "HostName=hub.local;DeviceId=d1;ModuleId=m1;SharedAccessKey=" + key1,
			func(tok *Token) bool { return MatchesDevice(tok, "hub.local", "d1", "m1") }},
		{"service", "HostName=hub.local;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key1,
			func(tok *Token) bool { return MatchesHost(tok, "hub.local") && tok.KeyName == "iothubowner" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, err := ParseConnectionString(tt.cs)
			if err != nil {
				t.Fatal(err)
			}
			s, err := cs.Token(exp)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := ParseToken(s)
			if err != nil {
				t.Fatal(err)
			}
			if !tok.Verify(key1) || !tt.check(tok) || !tok.Expiry.Equal(exp) {
				t.Fatalf("token %q does not verify or match", s)
			}
		})
	}
	x := ConnectionString{HostName: "h", DeviceID: "d", X509: true}
	if _, err := x.Token(exp); err == nil {
		t.Fatal("x509 string gave a token")
	}
}

func FuzzParseConnectionString(f *testing.F) {
	for _, s := range []string{
		"HostName=hub.local;DeviceId=d1;SharedAccessKey=" + key1,
		"HostName=localhost:18443;DeviceId=e;ModuleId=$edgeHub;SharedAccessKey=" + key2 + ";GatewayHostName=gw",
		"HostName=h;DeviceId=d;x509=true",
		"HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key1,
		"HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h&sig=YQ==&se=1",
		";;=;==;x509",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := ParseConnectionString(s)
		if err != nil {
			return
		}
		again, err := ParseConnectionString(cs.String())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", cs.String(), err)
		}
		if again != cs {
			t.Fatalf("re-parse differs:\n%+v\n%+v", again, cs)
		}
	})
}
