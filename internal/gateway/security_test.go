package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/certs"
	"outpost/internal/clocktest"
	"outpost/internal/gateway/transporttest"
	"outpost/internal/message"
	"outpost/internal/poll"
	"outpost/internal/sas"
	"outpost/internal/soak"
	"outpost/internal/topic"
)

// The security suite of the device endpoint (docs/RELIABILITY.md,
// "Security"): each attack must end in a refusal that is counted, with
// nothing stored and the server still serving. The hub's and the edge's
// own suites run the same attacks against their real backends.

// endpoint is how gatewaytest reaches this env over every transport.
func (e *testEnv) endpoint() transporttest.Endpoint {
	return transporttest.Endpoint{
		MQTTAddr:    e.mqttAddr,
		HTTPSAddr:   e.https.Listener.Addr().String(),
		TLS:         e.pki.clientTL,
		HubHostName: testHost,
	}
}

// signFor signs a token for resource with the key registered for cid.
func (e *testEnv) signFor(resource, cid string, expiry time.Time) string {
	e.t.Helper()
	return signWith(e.t, resource, e.be.device(cid).key, expiry)
}

func signWith(t testing.TB, resource, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.Sign(resource, key, "", expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// attack is one attempt to get a message in as someone else.
type attack struct {
	name  string
	creds func(e *testEnv) transporttest.Creds
	// only lists the transports the attack applies to; nil means all.
	only   []string
	reason AuthReason
}

func (a attack) applies(tr string) bool {
	return a.only == nil || strings.Contains(strings.Join(a.only, ","), tr)
}

var mqttOnly = []string{transporttest.MQTT, transporttest.WebSocket}

func impersonations() []attack {
	hour := func() time.Time { return time.Now().Add(time.Hour) }
	dev := func(d string) string { return sas.DeviceResource(testHost, d, "") }
	return []attack{
		{"signature: another key", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: signWith(e.t, dev("dev1"), sas.GenerateKey(), hour())}
		}, nil, ReasonBadSignature},
		{"signature: edited expiry", func(e *testEnv) transporttest.Creds {
			tok := e.token("dev1", time.Hour)
			i := strings.Index(tok, "&se=")
			return transporttest.Creds{ClientID: "dev1", Password: tok[:i] + "&se=99" + tok[i+len("&se="):]}
		}, nil, ReasonBadSignature},
		{"audience: another device", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: e.signFor(dev("dev2"), "dev1", hour())}
		}, nil, ReasonWrongAudience},
		{"audience: another hub", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: e.signFor(sas.DeviceResource("other.hub", "dev1", ""), "dev1", hour())}
		}, nil, ReasonWrongAudience},
		{"audience: the whole hub (a service token)", func(e *testEnv) transporttest.Creds {
			tok, err := sas.Sign(testHost, e.be.device("dev1").key, "iothubowner", hour())
			if err != nil {
				e.t.Fatal(err)
			}
			return transporttest.Creds{ClientID: "dev1", Password: tok}
		}, nil, ReasonWrongAudience},
		{"audience: a prefix of the resource", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: e.signFor(testHost+"/devices", "dev1", hour())}
		}, nil, ReasonWrongAudience},
		{"host: username names another hub", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Username: "other.hub/dev1/?api-version=2021-04-12", Password: e.token("dev1", time.Hour)}
		}, mqttOnly, ReasonBadUsername},
		{"client id versus identity: username names another client", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Username: username("dev2"), Password: e.token("dev1", time.Hour)}
		}, mqttOnly, ReasonBadUsername},
		{"client id versus identity: dev2 with dev1's token", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev2", Password: e.token("dev1", time.Hour)}
		}, nil, ReasonWrongAudience},
		{"client id versus identity: case differs", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "DEV1", Password: e.token("dev1", time.Hour)}
		}, nil, ReasonWrongAudience},
		{"client id versus identity: case differs, token too", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "DEV1", Password: e.signFor(dev("DEV1"), "dev1", hour())}
		}, nil, ReasonNotFound},
		{"device versus module: device token for its module", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1/mod1", Password: e.token("dev1", time.Hour)}
		}, nil, ReasonWrongAudience},
		{"device versus module: module token for its device", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: e.token("dev1/mod1", time.Hour)}
		}, nil, ReasonWrongAudience},
		{"device versus module: module token for a sibling", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1/mod2", Password: e.token("dev1/mod1", time.Hour)}
		}, nil, ReasonWrongAudience},
		{"unknown identity", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "ghost", Password: signWith(e.t, dev("ghost"), sas.GenerateKey(), hour())}
		}, nil, ReasonNotFound},
		{"disabled identity", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "off", Password: e.token("off", time.Hour)}
		}, nil, ReasonDisabled},
		{"no credentials", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1"}
		}, nil, ReasonNoCredentials},
		{"not a token", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: "SharedAccessSignature hunter2"}
		}, nil, ReasonBadToken},
		{"client id of three parts", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1/mod1/x", Password: e.token("dev1/mod1", time.Hour)}
		}, mqttOnly, ReasonBadClientID},
		// A device id holds no '/': an escaped one in the path must not
		// pass for a client id "device/module".
		{"path: escaped slash joins device and module", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{Path: "/devices/dev1%2Fmod1/messages/events",
				Password: e.signFor(testHost+"/devices/dev1/mod1", "dev1/mod1", hour())}
		}, []string{transporttest.HTTPS}, ReasonBadClientID},
		{"path: traversal", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{Path: "/devices/..%2Fdev1/messages/events", Password: e.token("dev1", time.Hour)}
		}, []string{transporttest.HTTPS}, ReasonBadClientID},
		{"expired beyond the skew", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: e.token("dev1", -DefaultClockSkew-time.Minute)}
		}, nil, ReasonExpired},
		// se past what time.Time holds wraps around into the past: a
		// refusal, and no panic.
		{"expiry beyond int64 seconds", func(e *testEnv) transporttest.Creds {
			return transporttest.Creds{ClientID: "dev1", Password: e.signFor(dev("dev1"), "dev1", time.Unix(math.MaxInt64, 0))}
		}, nil, ReasonExpired},
	}
}

func newSecurityEnv(t *testing.T, mods ...func(*Config)) *testEnv {
	e := newEnv(t, mods...)
	for _, cid := range []string{"dev1", "dev2", "dev1/mod1", "dev1/mod2"} {
		e.be.addDevice(cid, device{})
	}
	e.be.addDevice("off", device{disabled: true})
	return e
}

// TestSecurityImpersonation: nobody gets in as someone else, over any
// transport; each refusal is counted with its reason and stores nothing.
func TestSecurityImpersonation(t *testing.T) {
	e := newSecurityEnv(t)
	ep := e.endpoint()
	for _, tr := range transporttest.Transports {
		t.Run(tr, func(t *testing.T) {
			t.Run("the real device gets in", func(t *testing.T) {
				out, err := ep.Send(tr, transporttest.Creds{ClientID: "dev1", Password: e.token("dev1", time.Hour)}, []byte("ok"))
				if err != nil || !out.Acked {
					t.Fatalf("%v, %v: want acknowledged", out, err)
				}
			})
			for _, a := range impersonations() {
				if !a.applies(tr) {
					continue
				}
				t.Run(a.name, func(t *testing.T) {
					refused(t, e, tr, a.creds(e), a.reason)
				})
			}
		})
	}
}

// refused sends one message with c over tr and checks the refusal: the
// reason counted once, nothing stored.
func refused(t *testing.T, e *testEnv, tr string, c transporttest.Creds, reason AuthReason) {
	t.Helper()
	e.endpoint().Check(t, transporttest.Server{
		Stored:   func() int64 { return int64(len(e.be.storedMessages())) },
		Failures: func(r string) uint64 { return e.srv.AuthFailures()[AuthReason(r)] },
	}, tr, c, string(reason))
}

// clockBackend verifies tokens as the hub and the edge do, against the
// gateway's own clock.
func clockBackend(e *testEnv, now func() time.Time) {
	e.be.authenticate = func(_ context.Context, c Credentials) (Identity, error) {
		d := e.be.device(c.ClientID)
		if d.key == "" {
			return Identity{}, AuthFailed(ReasonNotFound, nil)
		}
		if err := VerifySAS(c.Token, []string{d.key}, testHost, c.DeviceID, c.ModuleID, now(), DefaultClockSkew); err != nil {
			return Identity{}, err
		}
		return Identity{DeviceID: c.DeviceID, ModuleID: c.ModuleID, AuthMethod: AuthSAS, TokenExpiry: c.Token.Expiry}, nil
	}
}

// TestSecurityTokenTimes: a token is good from whenever it was made
// until its expiry plus the skew window, by the gateway's clock, however
// far ahead its expiry is (IoT Hub sets no limit either). A device or
// gateway clock that jumped after a long offline period (IoT Edge #6421)
// is fine within the window, and a fresh token fixes it beyond.
func TestSecurityTokenTimes(t *testing.T) {
	clock := clocktest.Real()
	e := newSecurityEnv(t, func(c *Config) { c.Now = clock.Now })
	clockBackend(e, clock.Now)
	res := sas.DeviceResource(testHost, "dev1", "")
	tests := []struct {
		name   string
		expiry func(now time.Time) time.Time
		ok     bool
	}{
		{"valid for an hour", func(now time.Time) time.Time { return now.Add(time.Hour) }, true},
		{"device clock 10 years ahead", func(now time.Time) time.Time { return now.AddDate(10, 0, 1) }, true},
		{"expired, within the skew", func(now time.Time) time.Time { return now.Add(-DefaultClockSkew + 30*time.Second) }, true},
		{"expired, beyond the skew", func(now time.Time) time.Time { return now.Add(-DefaultClockSkew - 30*time.Second) }, false},
		{"device clock days behind (IoT Edge #6421)", func(now time.Time) time.Time { return now.Add(-72 * time.Hour).Add(time.Hour) }, false},
		{"epoch", func(time.Time) time.Time { return time.Unix(0, 0) }, false},
	}
	for _, jump := range []struct {
		name string
		by   time.Duration
	}{{"gateway clock as is", 0}, {"gateway clock jumped 30 days ahead", 30 * 24 * time.Hour}, {"gateway clock jumped back a day", -24 * time.Hour}} {
		t.Run(jump.name, func(t *testing.T) {
			clock.Advance(jump.by)
			defer clock.Advance(-jump.by)
			for _, tr := range transporttest.Transports {
				for _, tt := range tests {
					t.Run(tr+"/"+tt.name, func(t *testing.T) {
						c := transporttest.Creds{ClientID: "dev1", Password: e.signFor(res, "dev1", tt.expiry(clock.Now()))}
						if !tt.ok {
							refused(t, e, tr, c, ReasonExpired)
							return
						}
						if out, err := e.endpoint().Send(tr, c, []byte("in time")); err != nil || !out.Acked {
							t.Fatalf("%v, %v: want acknowledged", out, err)
						}
					})
				}
			}
		})
	}
}

// TestSecurityTokenExpiresOnLiveConnection: as IoT Hub does, a
// connection ends when its token expires (plus the skew window, in which
// the token would still be accepted), over TLS and WebSocket alike, and
// also when the gateway's clock jumps past the expiry.
func TestSecurityTokenExpiresOnLiveConnection(t *testing.T) {
	clock := clocktest.Real()
	e := newSecurityEnv(t, func(c *Config) {
		c.Now = clock.Now
		c.ClockSkew = time.Millisecond
		c.tokenRecheck = 50 * time.Millisecond
	})
	clockBackend(e, clock.Now)
	res := sas.DeviceResource(testHost, "dev1", "")
	for _, tr := range []string{transporttest.MQTT, transporttest.WebSocket} {
		for _, tt := range []struct {
			name string
			ttl  time.Duration
			jump time.Duration // how far the clock jumps once connected
		}{
			{"token runs out", 1500 * time.Millisecond, 0},
			{"clock jumps past the expiry", time.Hour, 2 * time.Hour},
		} {
			t.Run(tr+"/"+tt.name, func(t *testing.T) {
				nc, err := e.endpoint().Dial(tr, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				rc := transporttest.NewRaw(nc)
				code, err := rc.Connect("dev1", username("dev1"), e.signFor(res, "dev1", clock.Now().Add(tt.ttl)))
				if err != nil || code != 0 {
					t.Fatalf("CONNACK %d, %v", code, err)
				}
				connected := time.Now()
				clock.Advance(tt.jump)
				defer clock.Advance(-tt.jump)
				if err := rc.AwaitClosed(); err != nil {
					t.Fatal(err)
				}
				t.Logf("dropped %v after connecting", time.Since(connected).Round(time.Millisecond))
			})
		}
	}
	t.Run("a clock jumped back keeps the connection", func(t *testing.T) {
		rc := transporttest.NewRaw(mustDial(t, e, transporttest.MQTT))
		code, err := rc.Connect("dev1", username("dev1"), e.signFor(res, "dev1", clock.Now().Add(time.Second)))
		if err != nil || code != 0 {
			t.Fatalf("CONNACK %d, %v", code, err)
		}
		clock.Advance(-time.Hour)
		defer clock.Advance(time.Hour)
		// Past the monotonic expiry, the token is still good by the
		// gateway's clock: the connection stays.
		if _, err := rc.ReadTimeout(1500 * time.Millisecond); !isTimeout(err) {
			t.Fatalf("connection ended (%v) while its token is valid by the gateway's clock", err)
		}
	})
}

func mustDial(t *testing.T, e *testEnv, tr string) net.Conn {
	t.Helper()
	nc, err := e.endpoint().Dial(tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSecurityTopicAccess: a client uses its own topics only, over TLS
// and WebSocket alike.
func TestSecurityTopicAccess(t *testing.T) {
	e := newSecurityEnv(t)
	for _, tr := range []string{transporttest.MQTT, transporttest.WebSocket} {
		for _, a := range transporttest.TopicAbuses("dev1", "dev2") {
			t.Run(tr+"/"+a.Name, func(t *testing.T) {
				stored := len(e.be.storedMessages())
				c := transporttest.Creds{ClientID: "dev1", Password: e.token("dev1", time.Hour)}
				if err := e.endpoint().Drops(tr, c, a.Act); err != nil {
					t.Fatal(err)
				}
				if n := len(e.be.storedMessages()); n != stored {
					t.Errorf("%d messages stored", n-stored)
				}
			})
		}
	}
}

// TestSecurityX509: a certificate proves the identity only as a leaf
// issued for it, within its validity, by a trusted CA (or registered by
// thumbprint).
func TestSecurityX509(t *testing.T) {
	p := newTestPKI(t)
	inter, err := p.ca.NewIntermediate("outpost test intermediate", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := certs.NewRootCA("rogue root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *certs.CA, cn string) tls.Certificate {
		c, _, _, err := ca.IssueClient(cn, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// A CA certificate whose CN is the device id, with its key: the
	// client proves possession, but a CA is no device.
	caLeaf, err := p.ca.NewIntermediate("cadev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good := issue(p.ca, "cadev")
	self := p.client(t, "cadev", false)
	now := time.Now()
	tests := []struct {
		name   string
		cid    string
		chain  []*x509.Certificate
		thumbs []string
		at     time.Time
		reason AuthReason
	}{
		{"leaf of the trusted root", "cadev", chainOf(t, good), nil, now, ""},
		{"leaf of an intermediate, chain sent", "cadev", chainOf(t, issue(inter, "cadev")), nil, now, ""},
		{"CN is another id", "cadev", chainOf(t, issue(p.ca, "cadev2")), nil, now, ReasonBadCert},
		{"CN differs in case", "cadev", chainOf(t, issue(p.ca, "CADEV")), nil, now, ReasonBadCert},
		{"CN is the device of the module", "cadev/m", chainOf(t, issue(p.ca, "cadev")), nil, now, ReasonBadCert},
		{"a CA certificate as the leaf", "cadev", []*x509.Certificate{caLeaf.Cert}, nil, now, ReasonBadCert},
		{"expired", "cadev", chainOf(t, good), nil, now.Add(2 * time.Hour), ReasonBadCert},
		{"not yet valid", "cadev", chainOf(t, good), nil, now.Add(-time.Hour), ReasonBadCert},
		{"intermediate missing from the chain", "cadev", chainOf(t, issue(inter, "cadev"))[:1], nil, now, ReasonBadCert},
		{"unknown root", "cadev", chainOf(t, issue(rogue, "cadev")), nil, now, ReasonBadCert},
		{"unknown root, its root sent along", "cadev", append(chainOf(t, issue(rogue, "cadev")), rogue.Cert), nil, now, ReasonBadCert},
		{"self-signed", "cadev", chainOf(t, self), nil, now, ReasonBadCert},
		{"self-signed, thumbprint registered", "cadev", chainOf(t, self), []string{thumbprint(self)}, now, ""},
		{"self-signed, thumbprint registered, expired", "cadev", chainOf(t, self), []string{thumbprint(self)}, now.AddDate(2, 0, 0), ReasonBadCert},
		{"another certificate's thumbprint", "cadev", chainOf(t, good), []string{thumbprint(self)}, now, ""}, // falls back to the CA
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkReason(t, VerifyX509(tt.chain, tt.thumbs, p.pool, tt.cid, tt.at), tt.reason)
		})
	}
	t.Run("thumbprint only, no CA", func(t *testing.T) {
		checkReason(t, VerifyX509(chainOf(t, good), []string{thumbprint(self)}, nil, "cadev", now), ReasonBadCert)
	})
}

// TestSecurityTLSVersions: the device endpoint serves TLS 1.2 and 1.3
// only, even when the caller's TLS config would allow less.
func TestSecurityTLSVersions(t *testing.T) {
	e := newSecurityEnv(t, func(c *Config) { c.TLS.MinVersion = tls.VersionTLS10 })
	for _, tt := range []struct {
		name    string
		version uint16
		ok      bool
	}{
		{"TLS 1.0", tls.VersionTLS10, false},
		{"TLS 1.1", tls.VersionTLS11, false},
		{"TLS 1.2", tls.VersionTLS12, true},
		{"TLS 1.3", tls.VersionTLS13, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc := e.pki.clientTL.Clone()
			tc.MinVersion, tc.MaxVersion = tt.version, tt.version
			nc, err := tls.Dial("tcp", e.mqttAddr, tc)
			if err == nil {
				nc.Close()
			}
			if (err == nil) != tt.ok {
				t.Fatalf("handshake: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestSecurityWrongHost: the host a client names in TLS (SNI) does not
// choose the identity; the username and the token must name this hub.
func TestSecurityWrongHost(t *testing.T) {
	e := newSecurityEnv(t)
	ep := e.endpoint()
	ep.TLS = e.pki.clientTL.Clone()
	ep.TLS.ServerName = "other.hub"
	ep.TLS.InsecureSkipVerify = true // the client would refuse: the certificate does not name other.hub
	t.Run("SNI of another host, credentials of this hub", func(t *testing.T) {
		out, err := ep.Send(transporttest.MQTT, transporttest.Creds{ClientID: "dev1", Password: e.token("dev1", time.Hour)}, []byte("x"))
		if err != nil || !out.Acked {
			t.Fatalf("%v, %v: want acknowledged", out, err)
		}
	})
	t.Run("SNI and credentials of another host", func(t *testing.T) {
		res := sas.DeviceResource("other.hub", "dev1", "")
		out, err := ep.Send(transporttest.MQTT, transporttest.Creds{ClientID: "dev1", Username: "other.hub/dev1/?api-version=2021-04-12",
			Password: e.signFor(res, "dev1", time.Now().Add(time.Hour))}, []byte("x"))
		if err != nil || !out.Refused() {
			t.Fatalf("%v, %v: want refused", out, err)
		}
	})
	t.Run("a verifying client refuses the certificate", func(t *testing.T) {
		tc := e.pki.clientTL.Clone()
		tc.ServerName = "other.hub"
		if nc, err := tls.Dial("tcp", e.mqttAddr, tc); err == nil {
			nc.Close()
			t.Fatal("handshake verified a certificate that does not name other.hub")
		}
	})
}

// TestSecuritySilentConnections: connections that never complete
// CONNECT end after ConnectTimeout, wherever they stalled (before the
// TLS handshake, after it, in the middle of CONNECT, or trickling it a
// byte at a time), and devices are served meanwhile.
func TestSecuritySilentConnections(t *testing.T) {
	const timeout = time.Second
	e := newSecurityEnv(t, func(c *Config) { c.ConnectTimeout = timeout })
	ep := e.endpoint()
	connect, err := transporttest.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "dev1", Keepalive: 60}})
	if err != nil {
		t.Fatal(err)
	}
	stalls := []struct {
		name string
		open func() (net.Conn, error)
	}{
		{"tcp, no TLS handshake", func() (net.Conn, error) { return net.Dial("tcp", e.mqttAddr) }},
		{"TLS, no CONNECT", func() (net.Conn, error) { return ep.Dial(transporttest.MQTT, nil) }},
		{"WebSocket, no CONNECT", func() (net.Conn, error) { return ep.Dial(transporttest.WebSocket, nil) }},
		{"half a CONNECT", func() (net.Conn, error) {
			nc, err := ep.Dial(transporttest.MQTT, nil)
			if err == nil {
				_, err = nc.Write(connect[:len(connect)/2])
			}
			return nc, err
		}},
		{"a CONNECT byte every 100 ms", func() (net.Conn, error) {
			nc, err := ep.Dial(transporttest.MQTT, nil)
			if err != nil {
				return nil, err
			}
			go func() {
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for i := 0; ; i = (i + 1) % len(connect) {
					<-tick.C
					if _, err := nc.Write(connect[i : i+1]); err != nil {
						return
					}
				}
			}()
			return nc, nil
		}},
	}
	per := soak.N(10, 200)
	goroutines := runtime.NumGoroutine()
	type result struct {
		stall string
		took  time.Duration
		err   error
	}
	results := make(chan result, per*len(stalls))
	start := time.Now()
	for _, s := range stalls {
		for range per {
			nc, err := s.open()
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			go func() {
				defer nc.Close()
				_ = nc.SetReadDeadline(time.Now().Add(timeout + 10*time.Second))
				_, err := io.Copy(io.Discard, nc)
				if isTimeout(err) {
					err = errors.New("still open")
				} else {
					err = nil
				}
				results <- result{s.name, time.Since(start), err}
			}()
		}
	}
	for _, tr := range transporttest.Transports {
		if out, err := ep.Send(tr, transporttest.Creds{ClientID: "dev1", Password: e.token("dev1", time.Hour)}, []byte("meanwhile")); err != nil || !out.Acked {
			t.Errorf("%s during the stall: %v, %v", tr, out, err)
		}
	}
	slowest := map[string]time.Duration{}
	for range per * len(stalls) {
		r := <-results
		if r.err != nil {
			t.Errorf("%s: %v after %v", r.stall, r.err, r.took)
		}
		slowest[r.stall] = max(slowest[r.stall], r.took)
	}
	for s, d := range slowest {
		t.Logf("%d connections %s: all closed within %v (ConnectTimeout %v)", per, s, d.Round(time.Millisecond), timeout)
		if d > timeout+5*time.Second {
			t.Errorf("%s: open for %v, ConnectTimeout is %v", s, d, timeout)
		}
	}
	poll.Check(t, 10*time.Second, 0, func() error {
		if n := runtime.NumGoroutine(); n > goroutines+10 {
			return fmt.Errorf("%d goroutines, %d before the stalls", n, goroutines)
		}
		return nil
	})
}

// TestSecurityKeepAlive: an authenticated connection that goes silent
// is dropped after one and a half keepalives [MQTT-3.1.2-24]. The
// keepalive is 2 s, since mochi computes the half in whole seconds: with
// 1 s it drops after one keepalive, as a client pinging on time sees it.
func TestSecurityKeepAlive(t *testing.T) {
	e := newSecurityEnv(t)
	const keepAlive = 2 * time.Second
	for _, tr := range []string{transporttest.MQTT, transporttest.WebSocket} {
		t.Run(tr, func(t *testing.T) {
			rc := transporttest.NewRaw(mustDial(t, e, tr))
			if code, err := rc.ConnectKeepAlive("dev1", username("dev1"), e.token("dev1", time.Hour), uint16(keepAlive/time.Second)); err != nil || code != 0 {
				t.Fatalf("CONNACK %d, %v", code, err)
			}
			start := time.Now()
			if err := rc.AwaitClosed(); err != nil {
				t.Fatal(err)
			}
			d := time.Since(start)
			if d < keepAlive {
				t.Errorf("dropped after %v, before one keepalive (%v)", d, keepAlive)
			}
			if d > keepAlive*3/2+time.Second {
				t.Errorf("dropped after %v, well past one and a half keepalives (%v)", d, keepAlive)
			}
		})
	}
}

// TestSecurityKeepAliveZero: a client asking for no keepalive (0, which
// MQTT allows) or one longer than MaxKeepAlive gets MaxKeepAlive: it is
// dropped after 1.5 times it of silence instead of holding the
// connection forever. IoT Hub caps it the same way, at 1767 s of silence;
// the test shortens the cap to 2 s.
func TestSecurityKeepAliveZero(t *testing.T) {
	const maxKeepAlive = 2 * time.Second
	e := newSecurityEnv(t, func(c *Config) { c.MaxKeepAlive = maxKeepAlive })
	ids := []string{"dev1", "dev2", "dev1/mod1", "dev1/mod2"} // one each: the cases run together
	for i, tr := range []string{transporttest.MQTT, transporttest.WebSocket} {
		for j, asked := range []uint16{0, 600} {
			id := ids[2*i+j]
			t.Run(fmt.Sprintf("%s keepalive %d", tr, asked), func(t *testing.T) {
				t.Parallel()
				rc := transporttest.NewRaw(mustDial(t, e, tr))
				if code, err := rc.ConnectKeepAlive(id, username(id), e.token(id, time.Hour), asked); err != nil || code != 0 {
					t.Fatalf("CONNACK %d, %v", code, err)
				}
				start := time.Now()
				if err := rc.AwaitClosed(); err != nil {
					t.Fatalf("keepalive %d, cap %v: %v", asked, maxKeepAlive, err)
				}
				d := time.Since(start)
				if d < maxKeepAlive {
					t.Errorf("dropped after %v, before the capped keepalive (%v)", d, maxKeepAlive)
				}
				if d > maxKeepAlive*3/2+time.Second {
					t.Errorf("dropped after %v, well past one and a half capped keepalives (%v)", d, maxKeepAlive)
				}
				t.Logf("FIGURE keepalive %d over %s, cap %v: dropped after %v of silence", asked, tr, maxKeepAlive, d.Round(time.Millisecond))
			})
		}
	}
}

// announce is the fixed header of a packet of type typ that announces
// remaining bytes, and nothing after it.
func announce(typ byte, remaining int) []byte {
	b := []byte{typ << 4}
	if typ == packets.Publish {
		b[0] |= 1 << 1 // QoS 1
	}
	for {
		d := byte(remaining % 128)
		remaining /= 128
		if remaining > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if remaining == 0 {
			return b
		}
	}
}

// TestSecurityHugeRemainingLength: a packet announcing more than the
// server takes is refused from its fixed header, before CONNECT and
// after it, over TLS and WebSocket, without the server allocating what
// it announced. A CONNECT, which no device needs larger than a few KiB,
// is held to maxConnectSize, so that unauthenticated connections cannot
// make the server allocate a message's worth each.
func TestSecurityHugeRemainingLength(t *testing.T) {
	e := newSecurityEnv(t, func(c *Config) { c.ConnectTimeout, c.ConnectRate = 5*time.Second, -1 })
	maxPacket := message.MaxSize + 64*1024 // the gateway's MaximumPacketSize
	tests := []struct {
		name   string
		auth   bool
		header []byte
	}{
		{"CONNECT of 256 MiB", false, announce(packets.Connect, 268435455)},
		{"CONNECT of a message's size", false, announce(packets.Connect, maxPacket-1)},
		{"PUBLISH of 256 MiB after CONNECT", true, announce(packets.Publish, 268435455)},
		{"PUBLISH over the packet limit after CONNECT", true, announce(packets.Publish, maxPacket+1)},
	}
	n := soak.N(24, 400)
	for _, tr := range []string{transporttest.MQTT, transporttest.WebSocket} {
		for _, tt := range tests {
			t.Run(tr+"/"+tt.name, func(t *testing.T) {
				// A control round sends a packet of 2 bytes the server
				// reads and refuses; the attack may cost no more than
				// that plus a little per connection.
				control := append(announce(packets.Connect, 2), 0, 0)
				if tt.auth {
					control = append(announce(packets.Publish, 2), 0, 0)
				}
				base := allocated(t, func() { hammer(t, e, tr, tt.auth, control, n) })
				attack := allocated(t, func() { hammer(t, e, tr, tt.auth, tt.header, n) })
				per := (int64(attack) - int64(base)) / int64(n)
				t.Logf("%d connections: %d bytes allocated per connection beyond the control's", n, per)
				if per > 64<<10 {
					t.Errorf("%d bytes allocated per connection beyond the control's: the announced length was allocated", per)
				}
			})
		}
	}
	if out, err := e.endpoint().Send(transporttest.MQTT, transporttest.Creds{ClientID: "dev1", Password: e.token("dev1", time.Hour)}, []byte("after")); err != nil || !out.Acked {
		t.Fatalf("after the attacks: %v, %v", out, err)
	}
}

// hammer opens n connections over tr, 8 at a time, that each write b
// (after CONNECT, when auth, as one of 8 devices, so that no connection
// takes over another's session), and waits until the server has closed
// them all.
func hammer(t *testing.T, e *testEnv, tr string, auth bool, b []byte, n int) {
	t.Helper()
	const workers = 8
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for w := range workers {
		cid := fmt.Sprintf("hammer%d", w)
		e.be.addDevice(cid, device{})
		wg.Go(func() {
			for i := w; i < n; i += workers {
				errs <- hammerOnce(e, tr, auth, cid, b)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func hammerOnce(e *testEnv, tr string, auth bool, cid string, b []byte) error {
	nc, err := e.endpoint().Dial(tr, nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	rc := transporttest.NewRaw(nc)
	if auth {
		if code, err := rc.Connect(cid, username(cid), e.token(cid, time.Hour)); err != nil || code != 0 {
			return fmt.Errorf("CONNACK %d, %v", code, err)
		}
	}
	if _, err := nc.Write(b); err != nil {
		return err
	}
	return rc.AwaitClosed()
}

// allocated is how many bytes the process allocated while f ran.
func allocated(t *testing.T, f func()) uint64 {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestSecurityInflightFlood: a client that publishes faster than its
// messages can be stored holds a bounded share of the server's memory,
// whatever the size of its messages: the gateway stops reading from it
// and TCP pushes back. Nothing is acknowledged before it is stored.
func TestSecurityInflightFlood(t *testing.T) {
	e := newSecurityEnv(t)
	release := make(chan struct{})
	e.be.telemetry = func(ctx context.Context, id Identity, _ []*message.Message) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	rc := transporttest.NewRaw(mustDial(t, e, transporttest.MQTT))
	if code, err := rc.Connect("dev1", username("dev1"), e.token("dev1", time.Hour)); err != nil || code != 0 {
		t.Fatalf("CONNACK %d, %v", code, err)
	}
	body := make([]byte, 200<<10)
	pk, err := transporttest.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "devices/dev1/messages/events/", Payload: body, PacketID: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Write until the server stops taking them: a write that cannot
	// finish within a second has met TCP's push-back.
	sent := 0
	for ; sent < 2000; sent++ {
		pk[len(pk)-len(body)-2], pk[len(pk)-len(body)-1] = byte((sent+1)>>8), byte(sent+1)
		_ = rc.Conn().SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := rc.Conn().Write(pk); err != nil {
			break
		}
	}
	held := int64(heap()) - int64(before)
	t.Logf("pushed back after %d messages of %d KiB; server heap grew by %d KiB", sent, len(body)>>10, held>>10)
	if sent == 2000 {
		t.Fatal("no push-back after 2000 messages")
	}
	if held > 24<<20 {
		t.Errorf("one client holds %d MiB of the heap with its unstored messages", held>>20)
	}
	if n := len(e.be.storedMessages()); n != 0 {
		t.Errorf("%d stored while the backend held them", n)
	}
	close(release)
}

// flood is an attack that runs until stop is closed; it calls ready
// once it is under way.
type flood struct {
	name string
	run  func(t *testing.T, e *testEnv, ready func(), stop <-chan struct{})
	// cfg, when set, adjusts the endpoint the flood runs against.
	cfg func(*Config)
}

func floods() []flood {
	authed := func(t *testing.T, e *testEnv, cid string) *transporttest.Raw {
		rc := transporttest.NewRaw(mustDial(t, e, transporttest.MQTT))
		if code, err := rc.Connect(cid, username(cid), e.token(cid, time.Hour)); err != nil || code != 0 {
			t.Errorf("flood CONNACK %d, %v", code, err)
			return nil
		}
		return rc
	}
	// discard reads what the server sends until the connection ends.
	discard := func(rc *transporttest.Raw) {
		go func() {
			_ = rc.Conn().SetReadDeadline(time.Time{})
			_, _ = io.Copy(io.Discard, rc.Conn())
		}()
	}
	// writeUntil writes b over and over, as fast as the server takes it,
	// until stop (which closes the connection, ending a blocked write).
	writeUntil := func(nc net.Conn, b []byte, ready func(), stop <-chan struct{}) {
		ready()
		ended := make(chan struct{})
		defer close(ended)
		go func() {
			select {
			case <-stop:
				nc.Close()
			case <-ended:
			}
		}()
		_ = nc.SetWriteDeadline(time.Time{})
		for {
			if _, err := nc.Write(b); err != nil {
				return
			}
		}
	}
	return []flood{
		// What they hold, not how fast they come: the endpoint takes them
		// at any rate (the handshake floods below are held to one).
		{"connections that never send CONNECT", func(t *testing.T, e *testEnv, ready func(), stop <-chan struct{}) {
			conns := make([]net.Conn, soak.N(100, 1000))
			defer func() {
				for _, nc := range conns {
					if nc != nil {
						nc.Close()
					}
				}
			}()
			var wg sync.WaitGroup
			for i := range conns {
				wg.Go(func() {
					nc, err := e.endpoint().Dial(transporttest.MQTT, nil)
					if err != nil {
						t.Error(err)
						return
					}
					conns[i] = nc
				})
			}
			wg.Wait()
			ready()
			<-stop
		}, func(c *Config) { c.ConnectRate = -1 }},
		// A remote attacker's handshakes cost it next to nothing: the same
		// ClientHello replayed, the connection dropped once the server
		// has answered (and signed).
		{"TLS handshakes never finished", func(t *testing.T, e *testEnv, ready func(), stop <-chan struct{}) {
			hello := clientHello(t, e.pki.clientTL)
			ready()
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 4096)
					for {
						select {
						case <-stop:
							return
						default:
						}
						nc, err := net.Dial("tcp", e.mqttAddr)
						if err != nil {
							continue
						}
						go func() { <-stop; nc.Close() }()
						_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
						if _, err := nc.Write(hello); err == nil {
							_, _ = nc.Read(buf)
						}
						nc.Close()
					}
				}()
			}
			wg.Wait()
		}, nil},
		// Each attempt is refused from CONNECT's fixed header; the
		// attacker resumes its TLS sessions, as one saving its own CPU
		// would.
		{"CONNECTs announcing 256 MiB", func(t *testing.T, e *testEnv, ready func(), stop <-chan struct{}) {
			ep := e.endpoint()
			ep.TLS = ep.TLS.Clone()
			ep.TLS.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			ready()
			for {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := ep.Dial(transporttest.MQTT, nil)
				if err != nil {
					continue
				}
				_, _ = nc.Write(announce(packets.Connect, 268435455))
				_ = transporttest.NewRaw(nc).AwaitClosed()
				nc.Close()
			}
		}, nil},
		{"subscription flood", func(t *testing.T, e *testEnv, ready func(), stop <-chan struct{}) {
			rc := authed(t, e, "flood")
			if rc == nil {
				return
			}
			discard(rc)
			var b []byte
			for i := range 64 {
				pk, err := transporttest.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
					PacketID: uint16(i + 1), Filters: subscriptions(topic.Filters("flood", ""))})
				if err != nil {
					t.Error(err)
					return
				}
				b = append(b, pk...)
			}
			writeUntil(rc.Conn(), b, ready, stop)
		}, nil},
		{"in-flight flood, PUBACKs read", func(t *testing.T, e *testEnv, ready func(), stop <-chan struct{}) {
			rc := authed(t, e, "flood")
			if rc == nil {
				return
			}
			discard(rc)
			writeUntil(rc.Conn(), publishes(t, "flood", 64, 256), ready, stop)
		}, nil},
		{"in-flight flood, PUBACKs never read", func(t *testing.T, e *testEnv, ready func(), stop <-chan struct{}) {
			rc := authed(t, e, "flood")
			if rc == nil {
				return
			}
			writeUntil(rc.Conn(), publishes(t, "flood", 64, 1<<10), ready, stop)
		}, nil},
	}
}

// clientHello is the first flight of a TLS handshake with cfg.
func clientHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() { _ = tls.Client(c1, cfg.Clone()).Handshake() }()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c2, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(c2, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

func subscriptions(filters []string) packets.Subscriptions {
	var subs packets.Subscriptions
	for _, f := range filters {
		subs = append(subs, packets.Subscription{Filter: f, Qos: 1})
	}
	return subs
}

// publishes is n QoS 1 telemetry PUBLISHes of cid with bodies of size.
func publishes(t *testing.T, cid string, n, size int) []byte {
	var b []byte
	for i := range n {
		pk, err := transporttest.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			TopicName: transporttest.TelemetryTopic(cid, ""), Payload: make([]byte, size), PacketID: uint16(i + 1)})
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, pk...)
	}
	return b
}

// pubackP99 is the 99th percentile of n PUBACK latencies of a client
// that sends one QoS 1 message at a time.
func pubackP99(t *testing.T, rc *transporttest.Raw, n int) time.Duration {
	t.Helper()
	lat := make([]time.Duration, 0, n)
	for i := range n {
		pid := uint16(i%60000 + 1)
		start := time.Now()
		if err := rc.Publish("devices/victim/messages/events/", []byte("latency"), 1, pid); err != nil {
			t.Fatal(err)
		}
		pk, err := rc.Read()
		if err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != pid {
			t.Fatalf("PUBACK %d: got %v %d, %v", pid, pk.FixedHeader.Type, pk.PacketID, err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100]
}

// The rates TestSecurityFloodsSpareOthers shapes clients to, as an
// operator would for devices on a small machine: far above what a device
// of IoT Hub sends, and low enough that one flooding client or a
// handshake flood leaves the others their share of 2 cores under -race.
const (
	floodPackets  = 500       // per device connection and second
	floodBytes    = 512 << 10 // per device connection and second
	floodConnects = 20        // new connections a second
)

// TestSecurityFloodsSpareOthers: while one client floods the endpoint
// (connections that never CONNECT, handshakes it never finishes,
// oversize announcements, SUBSCRIBEs, a pipeline kept full, PUBACKs
// never read), another client's PUBACK p99 stays within 2x of its
// baseline. Stores cost a synced commit's time, as on the edge.
// Baseline and flood rounds alternate and their medians are compared, so
// that the shared machine's noise falls on both; a measurement spoiled
// by it is taken again, up to five times, which a flood that really
// starves the others fails every time (a CI run on a machine loaded by
// other work failed one flood three times at 12x, 3.7x and 4.5x, with
// baseline rounds themselves from 7 to 59 ms).
func TestSecurityFloodsSpareOthers(t *testing.T) {
	const commit, attempts = 2 * time.Millisecond, 5
	rounds, samples := soak.N(3, 10), soak.N(100, 1000)
	for _, f := range floods() {
		t.Run(f.name, func(t *testing.T) {
			e := newSecurityEnv(t, func(c *Config) {
				c.Backend = committingBackend{c.Backend.(*fakeBackend), commit}
				c.ClientPackets, c.ClientBytes, c.ConnectRate = floodPackets, floodBytes, floodConnects
				if f.cfg != nil {
					f.cfg(c)
				}
			})
			e.be.addDevice("victim", device{})
			e.be.addDevice("flood", device{})
			victim := transporttest.NewRaw(mustDial(t, e, transporttest.MQTT))
			if code, err := victim.Connect("victim", username("victim"), e.token("victim", time.Hour)); err != nil || code != 0 {
				t.Fatalf("CONNACK %d, %v", code, err)
			}
			pubackP99(t, victim, 50) // warm up
			var ratios []float64
			for range attempts {
				var base, attacked []time.Duration
				for range rounds {
					base = append(base, pubackP99(t, victim, samples))
					stop, started, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
					go func() {
						defer close(done)
						f.run(t, e, sync.OnceFunc(func() { close(started) }), stop)
					}()
					select {
					case <-started:
					case <-done:
						t.Fatal("the flood ended before it started")
					}
					attacked = append(attacked, pubackP99(t, victim, samples))
					close(stop)
					<-done
				}
				b, a := soak.Median(base), soak.Median(attacked)
				ratios = append(ratios, float64(a)/float64(b))
				t.Logf("PUBACK p99 of another client: baseline %v, under the flood %v (%.2fx); rounds %v / %v",
					b.Round(time.Microsecond), a.Round(time.Microsecond), ratios[len(ratios)-1], base, attacked)
				if ratios[len(ratios)-1] <= 2 {
					return
				}
			}
			t.Errorf("PUBACK p99 under the flood at %.2fx the baseline, %d times", ratios, attempts)
		})
	}
}

// committingBackend stores as the edge does, as far as the gateway can
// tell: a synced commit's time per batch, and nothing kept on the heap
// (the fake's record of every message would make the flood a test of
// the garbage collector).
type committingBackend struct {
	*fakeBackend
	commit time.Duration
}

func (b committingBackend) Telemetry(context.Context, Identity, []*message.Message) error {
	time.Sleep(b.commit)
	return nil
}

// TestMessageOverTheByteBudget: a body larger than a connection's whole
// byte budget (MaxMessageSize set above it) is stored and acknowledged
// once the pipeline is empty; it never waits for more of the budget than
// there is.
func TestMessageOverTheByteBudget(t *testing.T) {
	size := pipelineBytes + budgetUnit
	e := newSecurityEnv(t, func(c *Config) { c.MaxMessageSize = size })
	rc := transporttest.NewRaw(mustDial(t, e, transporttest.MQTT))
	if code, err := rc.Connect("dev1", username("dev1"), e.token("dev1", time.Hour)); err != nil || code != 0 {
		t.Fatalf("CONNACK %d, %v", code, err)
	}
	if err := rc.Publish("devices/dev1/messages/events/", make([]byte, size), 1, 1); err != nil {
		t.Fatal(err)
	}
	pk, err := rc.ReadTimeout(20 * time.Second)
	if err != nil {
		t.Fatalf("no PUBACK for a %d-byte message: %v", size, err)
	}
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != 1 {
		t.Fatalf("got packet type %d id %d, want PUBACK 1", pk.FixedHeader.Type, pk.PacketID)
	}
	if got := e.be.storedMessages(); len(got) != 1 || len(got[0].Body) != size {
		t.Fatalf("stored %d messages, want the one of %d bytes", len(got), size)
	}
}
