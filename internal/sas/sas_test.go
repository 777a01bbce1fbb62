package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

const (
	key1 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=" // base64 of 32 ASCII bytes
	key2 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

func TestGenerateKey(t *testing.T) {
	k := GenerateKey()
	raw, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(raw) != 32 {
		t.Fatalf("GenerateKey() = %q: %d bytes, err %v", k, len(raw), err)
	}
	if GenerateKey() == k {
		t.Fatal("two keys are equal")
	}
}

func TestDeviceResource(t *testing.T) {
	tests := []struct{ host, d, m, want string }{
		{"hub.example", "dev1", "", "hub.example/devices/dev1"},
		{"localhost:18443", "d", "m", "localhost:18443/devices/d/modules/m"},
		{"h", "a b", "$edgeHub", "h/devices/a b/modules/$edgeHub"},
	}
	for _, tt := range tests {
		if got := DeviceResource(tt.host, tt.d, tt.m); got != tt.want {
			t.Errorf("DeviceResource(%q,%q,%q) = %q, want %q", tt.host, tt.d, tt.m, got, tt.want)
		}
	}
}

func TestEscape(t *testing.T) {
	tests := []struct{ in, want string }{
		{"abcXYZ019-_.~", "abcXYZ019-_.~"},
		{"h/devices/d", "h%2Fdevices%2Fd"},
		{"!'()*", "%21%27%28%29%2A"},
		{"a b+c=d&e", "a%20b%2Bc%3Dd%26e"},
		{"host:443/é", "host%3A443%2F%C3%A9"},
		{"$edgeHub%", "%24edgeHub%25"},
	}
	for _, tt := range tests {
		if got := Escape(tt.in); got != tt.want {
			t.Errorf("Escape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestSignKnownVector recomputes a token by hand from the wire reference,
// independently of Sign's helpers.
func TestSignKnownVector(t *testing.T) {
	exp := time.Unix(1700000000, 0)
	got, err := Sign("myhub.example/devices/dev(1)", key1, "", exp)
	if err != nil {
		t.Fatal(err)
	}
	sr := "myhub.example%2Fdevices%2Fdev%281%29"
	keyRaw := []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef")
	h := hmac.New(sha256.New, keyRaw)
	h.Write([]byte(sr + "\n1700000000"))
	sig := url.QueryEscape(base64.StdEncoding.EncodeToString(h.Sum(nil)))
	want := "SharedAccessSignature sr=" + sr + "&sig=" + sig + "&se=1700000000"
	if got != want {
		t.Fatalf("Sign =\n %s\nwant\n %s", got, want)
	}

	svc, err := Sign("myhub.example", key1, "iothubowner", exp)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(svc, "&se=1700000000&skn=iothubowner") {
		t.Fatalf("service token %q: want se then skn last", svc)
	}
}

func TestSignErrors(t *testing.T) {
	if _, err := Sign("", key1, "", time.Now()); err == nil {
		t.Error("empty resource: no error")
	}
	if _, err := Sign("h/devices/d", "not base64!", "", time.Now()); err == nil {
		t.Error("bad key: no error")
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	exp := time.Unix(1800000000, 0)
	tests := []struct {
		name, resource, key, keyName string
	}{
		{"device", DeviceResource("hub.local", "dev1", ""), key1, ""},
		{"module", DeviceResource("localhost:18443", "d-1", "$edgeHub"), key2, ""},
		{"odd id", DeviceResource("h", "a!b'c(d)e*f,g:h=i@j$k%l?m", ""), key1, ""},
		{"service", "hub.local", key1, "iothubowner"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Sign(tt.resource, tt.key, tt.keyName, exp)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := ParseToken(s)
			if err != nil {
				t.Fatalf("ParseToken(%q): %v", s, err)
			}
			if tok.Resource != tt.resource || tok.KeyName != tt.keyName || !tok.Expiry.Equal(exp) {
				t.Fatalf("parsed %+v", tok)
			}
			if !tok.Verify(tt.key) {
				t.Fatal("Verify with the signing key = false")
			}
			if tok.String() != s {
				t.Fatalf("String() = %q, want %q", tok.String(), s)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	exp := time.Unix(1800000000, 0)
	s, err := Sign(DeviceResource("hub.local", "dev1", ""), key2, "", exp)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseToken(s)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		keys []string
		want bool
	}{
		{"primary of two", []string{key2, key1}, true},
		{"secondary of two", []string{key1, key2}, true},
		{"wrong key", []string{key1}, false},
		{"no keys", nil, false},
		{"garbage then right", []string{"%%%", "", key2}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tok.Verify(tt.keys...); got != tt.want {
				t.Fatalf("Verify = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVerifyTampered(t *testing.T) {
	exp := time.Unix(1800000000, 0)
	s, err := Sign(DeviceResource("hub.local", "dev1", ""), key1, "", exp)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, old, new string }{
		{"other device", "dev1", "dev2"},
		{"sr re-encoded", "hub.local%2Fdevices%2Fdev1", "hub.local/devices/dev1"},
		{"later expiry", "se=1800000000", "se=1900000000"},
		{"same expiry other text", "se=1800000000", "se=01800000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := strings.Replace(s, tt.old, tt.new, 1)
			if bad == s {
				t.Fatalf("replacement %q not in %q", tt.old, s)
			}
			tok, err := ParseToken(bad)
			if err != nil {
				t.Fatal(err)
			}
			if tok.Verify(key1) {
				t.Fatalf("tampered token %q verified", bad)
			}
		})
	}
}

// TestVerifyRawResource checks that the HMAC covers sr as sent: a client
// that signs an unencoded sr must verify, and its resource still decode.
func TestVerifyRawResource(t *testing.T) {
	sr := "hub.local/devices/dev1"
	h := hmac.New(sha256.New, []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"))
	h.Write([]byte(sr + "\n1800000000"))
	sig := base64.StdEncoding.EncodeToString(h.Sum(nil)) // unencoded, may hold '+'
	tok, err := ParseToken("SharedAccessSignature se=1800000000&sig=" + sig + "&sr=" + sr)
	if err != nil {
		t.Fatal(err)
	}
	if !tok.Verify(key1) {
		t.Fatal("token signed over unencoded sr does not verify")
	}
	if !MatchesDevice(tok, "hub.local", "dev1", "") {
		t.Fatal("MatchesDevice = false")
	}
}

func TestParseTokenErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", "does not start"},
		{"no prefix", "sr=a&sig=b&se=1", "does not start"},
		{"no space", "SharedAccessSignaturesr=a&sig=YQ==&se=1", "no space"},
		{"missing sr", "SharedAccessSignature sig=YQ==&se=1", "missing sr"},
		{"missing sig", "SharedAccessSignature sr=a&se=1", "missing sig"},
		{"missing se", "SharedAccessSignature sr=a&sig=YQ==", "missing se"},
		{"empty sr", "SharedAccessSignature sr=&sig=YQ==&se=1", "empty sr"},
		{"bad se", "SharedAccessSignature sr=a&sig=YQ==&se=soon", "bad se"},
		{"negative se", "SharedAccessSignature sr=a&sig=YQ==&se=-5", "bad se"},
		{"bad sig", "SharedAccessSignature sr=a&sig=!!&se=1", "bad sig"},
		{"bad escape", "SharedAccessSignature sr=a%zz&sig=YQ==&se=1", "bad sr"},
		{"twice", "SharedAccessSignature sr=a&sr=b&sig=YQ==&se=1", "sr given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseToken(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseToken(%q) error = %v, want containing %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestParseTokenAnyOrderAndUnknown(t *testing.T) {
	tok, err := ParseToken("  SharedAccessSignature skn=owner&se=42&x=y&sig=YQ%3D%3D&sr=h  ")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Resource != "h" || tok.KeyName != "owner" || tok.Signature != "YQ==" || tok.Expiry.Unix() != 42 {
		t.Fatalf("parsed %+v", tok)
	}
}

func TestValidate(t *testing.T) {
	exp := time.Unix(1800000000, 0)
	tok := &Token{Expiry: exp}
	tests := []struct {
		name    string
		now     time.Time
		skew    time.Duration
		expired bool
	}{
		{"before expiry", exp.Add(-time.Hour), 0, false},
		{"at expiry", exp, 0, false},
		{"just after, no skew", exp.Add(time.Second), 0, true},
		{"after, within skew", exp.Add(4 * time.Minute), 5 * time.Minute, false},
		{"after skew", exp.Add(6 * time.Minute), 5 * time.Minute, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tok, tt.now, tt.skew)
			if got := errors.Is(err, ErrExpired); got != tt.expired || (err != nil) != tt.expired {
				t.Fatalf("Validate = %v, want expired %v", err, tt.expired)
			}
		})
	}
}

func mustToken(t *testing.T, resource, keyName string) *Token {
	t.Helper()
	s, err := Sign(resource, key1, keyName, time.Unix(1800000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseToken(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestMatchesDevice(t *testing.T) {
	tests := []struct {
		name, resource, host, d, m string
		want                       bool
	}{
		{"device", "hub.local/devices/d1", "hub.local", "d1", "", true},
		{"host case", "HUB.Local/devices/d1", "hub.local", "d1", "", true},
		{"id case", "hub.local/devices/D1", "hub.local", "d1", "", false},
		{"token has port", "localhost:18443/devices/d1", "localhost", "d1", "", true},
		{"hub has port", "localhost/devices/d1", "localhost:18443", "d1", "", true},
		{"both ports", "localhost:1/devices/d1", "localhost:18443", "d1", "", true},
		{"ipv6 port", "[::1]:18443/devices/d1", "::1", "d1", "", true},
		{"other host", "evil.local/devices/d1", "hub.local", "d1", "", false},
		{"other device", "hub.local/devices/d2", "hub.local", "d1", "", false},
		{"prefix device", "hub.local/devices/d1x", "hub.local", "d1", "", false},
		{"module", "hub.local/devices/d1/modules/m1", "hub.local", "d1", "m1", true},
		{"device token for module", "hub.local/devices/d1", "hub.local", "d1", "m1", false},
		{"module token for device", "hub.local/devices/d1/modules/m1", "hub.local", "d1", "", false},
		{"other module", "hub.local/devices/d1/modules/m2", "hub.local", "d1", "m1", false},
		{"id with colon", "hub.local/devices/a:b", "hub.local", "a:b", "", true},
		{"service token", "hub.local", "hub.local", "d1", "", false},
		{"trailing slash", "hub.local/devices/d1/", "hub.local", "d1", "", false},
		{"empty id", "hub.local/devices/", "hub.local", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := mustToken(t, tt.resource, "")
			if got := MatchesDevice(tok, tt.host, tt.d, tt.m); got != tt.want {
				t.Fatalf("MatchesDevice(%q; %q,%q,%q) = %v, want %v", tt.resource, tt.host, tt.d, tt.m, got, tt.want)
			}
		})
	}
}

func TestMatchesHost(t *testing.T) {
	tests := []struct {
		resource, host string
		want           bool
	}{
		{"hub.local", "hub.local", true},
		{"hub.local/", "hub.local", true},
		{"Hub.Local", "hub.local:18443", true},
		{"localhost:18443", "localhost", true},
		{"hub.local/devices/d1", "hub.local", false},
		{"other", "hub.local", false},
	}
	for _, tt := range tests {
		t.Run(tt.resource+"@"+tt.host, func(t *testing.T) {
			tok := mustToken(t, tt.resource, "iothubowner")
			if got := MatchesHost(tok, tt.host); got != tt.want {
				t.Fatalf("MatchesHost = %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzParseToken(f *testing.F) {
	good, _ := Sign("hub.local/devices/d", key1, "", time.Unix(1800000000, 0))
	for _, s := range []string{
		good,
		"SharedAccessSignature sr=h&sig=YQ%3D%3D&se=1&skn=owner",
		"SharedAccessSignature se=1&sig=YQ==&sr=h%2Fdevices%2Fd",
		"SharedAccessSignature sr=%zz&sig=&se=",
		"SharedAccessSignature",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", tok.String(), err)
		}
		if again.String() != tok.String() || again.Resource != tok.Resource || again.KeyName != tok.KeyName ||
			again.Signature != tok.Signature || !again.Expiry.Equal(tok.Expiry) {
			t.Fatalf("re-parse differs: %+v vs %+v", again, tok)
		}
		// Only the seed signed with key1 verifies: the signature covers sr
		// and se exactly as sent, so a mutation of either is a forgery.
		if tok.Verify(key1, key2) {
			g, _ := ParseToken(good)
			if tok.RawResource != g.RawResource || tok.rawExpiry != g.rawExpiry {
				t.Fatalf("forged token verifies: sr %q se %q", tok.RawResource, tok.rawExpiry)
			}
		}
		// A device token is for the device alone, a module token for its module.
		if MatchesDevice(tok, "hub.local", "d", "m") && MatchesDevice(tok, "hub.local", "d", "") {
			t.Fatalf("resource %q matches a device and its module", tok.Resource)
		}
		// Nor is it a service token, or another device's.
		if MatchesDevice(tok, "hub.local", "d", "") && (MatchesHost(tok, "hub.local") || MatchesDevice(tok, "hub.local", "d2", "")) {
			t.Fatalf("resource %q matches device d and the hub or device d2", tok.Resource)
		}
		if err := Validate(tok, tok.Expiry, 0); err != nil {
			t.Fatalf("token refused at its own expiry: %v", err)
		}
		if err := Validate(tok, tok.Expiry.Add(time.Second), 0); !errors.Is(err, ErrExpired) {
			t.Fatalf("token accepted after its expiry: %v", err)
		}
	})
}

// FuzzSign: whatever Sign makes parses back to what was signed and
// verifies with its key alone; a byte changed in sr or se, which the
// signature covers, makes it fail.
func FuzzSign(f *testing.F) {
	f.Add("hub.local/devices/d", "", int64(1800000000), uint(3), byte(1))
	f.Add("hub.local/devices/d/modules/$edgeHub", "", int64(0), uint(40), byte(0x20))
	f.Add("localhost:18443", "iothubowner", int64(1<<40), uint(7), byte(0x80))
	f.Add("h/devices/a b&c=d%", "k&n", int64(5), uint(0), byte(0xff))
	f.Fuzz(func(t *testing.T, resource, keyName string, se int64, pos uint, flip byte) {
		if se < 0 {
			se = -se
		}
		s, err := Sign(resource, key1, keyName, time.Unix(se, 0))
		if err != nil {
			if resource != "" {
				t.Fatalf("Sign(%q): %v", resource, err)
			}
			return
		}
		tok, err := ParseToken(s)
		if err != nil {
			t.Fatalf("ParseToken(Sign(%q, %q)) = %v", resource, keyName, err)
		}
		if tok.Resource != resource || tok.KeyName != keyName || tok.Expiry.Unix() != se {
			t.Fatalf("signed %q %q %d, parsed %q %q %d", resource, keyName, se, tok.Resource, tok.KeyName, tok.Expiry.Unix())
		}
		if !tok.Verify(key1) || tok.Verify(key2) || !tok.Verify(key2, key1) {
			t.Fatal("token does not verify with exactly its key")
		}
		if flip == 0 {
			flip = 1
		}
		// Change one byte of sr or se as sent.
		sr, rse := []byte(tok.RawResource), []byte(tok.rawExpiry)
		if i := pos % uint(len(sr)+len(rse)); i < uint(len(sr)) {
			sr[i] ^= flip
		} else {
			rse[i-uint(len(sr))] ^= flip
		}
		forged := tokenPrefix + " sr=" + string(sr) + "&sig=" + tok.rawSig + "&se=" + string(rse)
		if ft, err := ParseToken(forged); err == nil && ft.Verify(key1, key2) {
			t.Fatalf("%q verifies after a change to sr or se", forged)
		}
	})
}

func BenchmarkParseVerify(b *testing.B) {
	s, err := Sign(DeviceResource("hub.local", "dev1", ""), key1, "", time.Unix(1800000000, 0))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		tok, err := ParseToken(s)
		if err != nil || !tok.Verify(key2, key1) {
			b.Fatal("does not verify")
		}
	}
}
