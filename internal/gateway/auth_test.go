package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/sas"
)

func TestMQTTAuth(t *testing.T) {
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	e.be.addDevice("dev1/mod1", device{})
	e.be.addDevice("off", device{disabled: true})
	other := sas.GenerateKey()

	sign := func(resource, key string, ttl time.Duration) string {
		tok, err := sas.Sign(resource, key, "", time.Now().Add(ttl))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name     string
		cid      string
		user     string
		password func() string
		want     byte
		reason   AuthReason
	}{
		{"device sas", "dev1", username("dev1"), func() string { return e.token("dev1", time.Hour) }, 0, ""},
		{"module sas", "dev1/mod1", username("dev1/mod1"), func() string { return e.token("dev1/mod1", time.Hour) }, 0, ""},
		{"host with port in username", "dev1", testHost + ":8883/dev1/?api-version=2021-04-12",
			func() string { return e.token("dev1", time.Hour) }, 0, ""},
		{"bad signature", "dev1", username("dev1"),
			func() string { return sign(sas.DeviceResource(testHost, "dev1", ""), other, time.Hour) }, 5, ReasonBadSignature},
		{"expired", "dev1", username("dev1"), func() string { return e.token("dev1", -time.Hour) }, 5, ReasonExpired},
		{"token for another device", "dev1", username("dev1"),
			func() string {
				return sign(sas.DeviceResource(testHost, "dev2", ""), e.be.device("dev1").key, time.Hour)
			}, 5, ReasonWrongAudience},
		{"device token used by module", "dev1/mod1", username("dev1/mod1"),
			func() string { return e.token("dev1", time.Hour) }, 5, ReasonWrongAudience},
		{"token for another hub", "dev1", username("dev1"),
			func() string {
				return sign(sas.DeviceResource("other.hub", "dev1", ""), e.be.device("dev1").key, time.Hour)
			}, 5, ReasonWrongAudience},
		{"wrong host in username", "dev1", "other.hub/dev1/?api-version=2021-04-12",
			func() string { return e.token("dev1", time.Hour) }, 4, ReasonBadUsername},
		{"username names another client", "dev1", username("dev2"),
			func() string { return e.token("dev1", time.Hour) }, 4, ReasonBadUsername},
		{"no username", "dev1", "", func() string { return e.token("dev1", time.Hour) }, 4, ReasonBadUsername},
		{"not a token", "dev1", username("dev1"), func() string { return "hunter2" }, 4, ReasonBadToken},
		{"no credentials", "dev1", username("dev1"), func() string { return "" }, 5, ReasonNoCredentials},
		{"disabled", "off", username("off"), func() string {
			return sign(sas.DeviceResource(testHost, "off", ""), e.be.device("off").key, time.Hour)
		}, 5, ReasonDisabled},
		{"unknown device", "ghost", username("ghost"),
			func() string { return sign(sas.DeviceResource(testHost, "ghost", ""), other, time.Hour) }, 5, ReasonNotFound},
		{"bad client id", "a/b/c", username("a/b/c"), func() string { return e.token("dev1", time.Hour) }, 2, ReasonBadClientID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.srv.AuthFailures()[tt.reason]
			rc := e.dialRaw(t)
			got := rc.connect(tt.cid, tt.user, tt.password(), false)
			if got != tt.want {
				t.Fatalf("CONNACK code %d, want %d", got, tt.want)
			}
			if tt.want != 0 {
				if n := e.srv.AuthFailures()[tt.reason]; n != before+1 {
					t.Errorf("AuthFailures[%s] = %d, want %d", tt.reason, n, before+1)
				}
				rc.expectClosed()
			}
		})
	}
}

func TestX509Thumbprint(t *testing.T) {
	e := newEnv(t)
	good := e.pki.client(t, "xdev", false)
	bad := e.pki.client(t, "xdev", false)
	e.be.addDevice("xdev", device{thumbs: []string{thumbprint(good)}})

	for _, tt := range []struct {
		name string
		cert *tls.Certificate
		ok   bool
	}{
		{"registered certificate", &good, true},
		{"other certificate", &bad, false},
		{"no certificate", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := e.pahoOptions("xdev", "")
			cfg := e.pki.clientTL.Clone()
			if tt.cert != nil {
				cfg.Certificates = []tls.Certificate{*tt.cert}
			}
			opts.SetTLSConfig(cfg)
			c, err := e.connect(opts)
			if tt.ok != (err == nil) {
				t.Fatalf("connect: %v, want ok=%v", err, tt.ok)
			}
			if c != nil {
				wait(t, c.Publish("devices/xdev/messages/events/", 1, false, "x"))
				c.Disconnect(0)
			}
		})
	}
}

func TestVerifyX509CA(t *testing.T) {
	p := newTestPKI(t)
	leaf := p.client(t, "cadev", true)
	self := p.client(t, "cadev", false)
	now := time.Now()
	// An edge CA the root signed, as the hub does, and what its key mints.
	csr, key, err := certs.NewCSR("edge1", "edge1.example")
	if err != nil {
		t.Fatal(err)
	}
	edgePEM, err := p.ca.SignEdgeCA(csr, []string{"edge1.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	edgeCA, err := certs.CAFromPEM(edgePEM, key)
	if err != nil {
		t.Fatal(err)
	}
	byEdge, _, _, err := edgeCA.IssueClient("cadev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := edgeCA.NewIntermediate("rogue sub-CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bySub, _, _, err := sub.IssueClient("cadev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// An operator's own intermediate for devices is fine.
	inter, err := p.ca.NewIntermediate("device intermediate", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	byInter, _, _, err := inter.IssueClient("cadev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		chain  []*x509.Certificate
		thumbs []string
		pool   *x509.CertPool
		cid    string
		reason AuthReason
	}{
		{"signed by CA, CN matches", []*x509.Certificate{leaf.Leaf}, nil, p.pool, "cadev", ""},
		{"signed by CA, CN differs", []*x509.Certificate{leaf.Leaf}, nil, p.pool, "other", ReasonBadCert},
		{"self-signed against CA", []*x509.Certificate{self.Leaf}, nil, p.pool, "cadev", ReasonBadCert},
		{"minted by an edge CA", chainOf(t, byEdge), nil, p.pool, "cadev", ReasonBadCert},
		{"minted by a sub-CA of an edge CA", chainOf(t, bySub), nil, p.pool, "cadev", ReasonBadCert},
		{"through an operator's intermediate", chainOf(t, byInter), nil, p.pool, "cadev", ""},
		{"thumbprint lower case", []*x509.Certificate{self.Leaf}, []string{strings.ToLower(thumbprint(self))}, nil, "cadev", ""},
		{"no chain", nil, nil, p.pool, "cadev", ReasonNoCredentials},
		{"nothing to check against", []*x509.Certificate{self.Leaf}, nil, nil, "cadev", ReasonBadCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyX509(tt.chain, tt.thumbs, tt.pool, tt.cid, now)
			checkReason(t, err, tt.reason)
		})
	}
}

func TestVerifySAS(t *testing.T) {
	key, key2 := sas.GenerateKey(), sas.GenerateKey()
	now := time.Now()
	mk := func(res, k string, exp time.Time) *sas.Token {
		s, err := sas.Sign(res, k, "", exp)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := sas.ParseToken(s)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	res := sas.DeviceResource(testHost, "d", "")
	tests := []struct {
		name   string
		tok    *sas.Token
		keys   []string
		host   string
		reason AuthReason
	}{
		{"primary", mk(res, key, now.Add(time.Hour)), []string{key, key2}, testHost, ""},
		{"secondary", mk(res, key2, now.Add(time.Hour)), []string{key, key2}, testHost, ""},
		{"audience with port", mk(testHost+":443/devices/d", key, now.Add(time.Hour)), []string{key}, testHost, ""},
		{"expired within skew", mk(res, key, now.Add(-time.Minute)), []string{key}, testHost, ""},
		{"expired beyond skew", mk(res, key, now.Add(-time.Hour)), []string{key}, testHost, ReasonExpired},
		{"wrong key", mk(res, key2, now.Add(time.Hour)), []string{key}, testHost, ReasonBadSignature},
		{"wrong hub", mk(res, key, now.Add(time.Hour)), []string{key}, "other.hub", ReasonWrongAudience},
		{"nil token", nil, []string{key}, testHost, ReasonNoCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkReason(t, VerifySAS(tt.tok, tt.keys, tt.host, "d", "", now, 5*time.Minute), tt.reason)
		})
	}
}

func checkReason(t *testing.T, err error, want AuthReason) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("got %v, want success", err)
		}
		return
	}
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want *AuthError %s", err, want)
	}
	if ae.Reason != want {
		t.Fatalf("reason %s, want %s (%v)", ae.Reason, want, err)
	}
}

func TestCheckUsername(t *testing.T) {
	tests := []struct {
		user, host, cid string
		ok              bool
	}{
		{"h.test/d/?api-version=2021-04-12", "h.test", "d", true},
		{"H.TEST/d/?api-version=x", "h.test", "d", true},
		{"h.test:8883/d/?x", "h.test", "d", true},
		{"h.test/d/?x", "h.test:18443", "d", true},
		{"h.test/d/m/?api-version=x", "h.test", "d/m", true},
		{"h.test/d", "h.test", "d", true},
		{"h.test/d/api-version=2016-11-14", "h.test", "d", true},
		{"h.test/dd/?x", "h.test", "d", false},
		{"h.test/d/?x", "h.test", "d/m", false},
		{"other/d/?x", "h.test", "d", false},
		{"", "h.test", "d", false},
		{"h.test", "h.test", "d", false},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			if err := checkUsername(tt.user, tt.host, tt.cid); (err == nil) != tt.ok {
				t.Fatalf("checkUsername(%q, %q, %q) = %v, want ok=%v", tt.user, tt.host, tt.cid, err, tt.ok)
			}
		})
	}
}

func FuzzCheckUsername(f *testing.F) {
	f.Add("h.test/d/?api-version=2021-04-12", "d")
	f.Add("h.test:8883/d/m/?x", "d/m")
	f.Add("[::1]:8883/d", "d")
	f.Fuzz(func(t *testing.T, user, cid string) {
		if checkUsername(user, "h.test", cid) != nil {
			return
		}
		host, rest, _ := strings.Cut(user, "/")
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if !strings.EqualFold(host, "h.test") || !strings.HasPrefix(rest+"/", cid+"/") {
			t.Fatalf("accepted %q for %q", user, cid)
		}
	})
}
