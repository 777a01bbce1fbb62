package dataplane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/client"
	"outpost/internal/edgeproto"
	"outpost/internal/gateway"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/service"
)

func TestX509Devices(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	selfSigned, _, _, err := certs.SelfSigned("thumb-dev")
	if err != nil {
		t.Fatal(err)
	}
	other, _, _, err := certs.SelfSigned("thumb-dev")
	if err != nil {
		t.Fatal(err)
	}
	byCA, _, _, err := e.ca.IssueClient("ca-dev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongCN, _, _, err := e.ca.IssueClient("someone-else", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(c tls.Certificate) string { return certs.Thumbprint(c.Leaf) }
	register := func(id string, a identity.Authentication) {
		t.Helper()
		if _, err := e.h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: id, Authentication: a}, "", false); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	register("thumb-dev", identity.Authentication{Type: identity.AuthSelfSigned, X509Thumbprint: identity.X509Thumbprint{PrimaryThumbprint: leaf(selfSigned)}})
	register("ca-dev", identity.Authentication{Type: identity.AuthCA})
	sasDev := e.device("sas-dev", false)

	tests := []struct {
		name   string
		device string
		cert   tls.Certificate
		ok     bool
	}{
		{"thumbprint", "thumb-dev", selfSigned, true},
		{"other thumbprint", "thumb-dev", other, false},
		{"signed by the hub CA", "ca-dev", byCA, true},
		{"CA cert for another id", "ca-dev", wrongCN, false},
		{"certificate for a SAS device", "sas-dev", byCA, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := "HostName=" + e.mqttHost() + ";DeviceId=" + tc.device + ";x509=true"
			c, err := e.newClient(cs, &tc.cert, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Connect(ctx)
			if tc.ok != (err == nil) {
				t.Fatalf("connect: %v; want ok=%v", err, tc.ok)
			}
			if tc.ok {
				if err := c.Send(ctx, &message.Message{Body: []byte("x509")}); err != nil {
					t.Errorf("send: %v", err)
				}
			}
		})
	}
	_ = sasDev
}

func TestDisabledOrDeletedDropsConnection(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tests := []struct {
		name   string
		module bool
		change func(id string) error
	}{
		{"device disabled", false, func(id string) error {
			d, err := e.h.GetDevice(id)
			if err != nil {
				return err
			}
			d.Status = identity.StatusDisabled
			_, err = e.h.CreateOrUpdateDevice(ctx, d, "*", false)
			return err
		}},
		{"device deleted", false, func(id string) error { return e.h.DeleteDevice(ctx, id, "*") }},
		{"module deleted", true, func(id string) error { return e.h.DeleteModule(ctx, id, "m", "*") }},
		{"module's device disabled", true, func(id string) error {
			d, err := e.h.GetDevice(id)
			if err != nil {
				return err
			}
			d.Status = identity.StatusDisabled
			_, err = e.h.CreateOrUpdateDevice(ctx, d, "*", false)
			return err
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("victim-%d", i)
			d := e.device(id, false)
			mod, cs := "", ""
			if tc.module {
				mod = "m"
				cs = service.ModuleConnectionString(e.module(id, "m"), e.mqttHost(), "")
			} else {
				cs = service.DeviceConnectionString(d, e.mqttHost(), "")
			}
			c := e.client(cs, nil, nil)
			e.session(id, mod)
			if err := tc.change(id); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 10*time.Second, func() error {
				if e.gw.Sessions(id, mod) != nil {
					return errors.New("session still live")
				}
				return nil
			})
			checkFor(t, 10*time.Second, func() error {
				if c.Connected() {
					return errors.New("client still connected")
				}
				return nil
			})
			fresh, err := e.newClient(cs, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := fresh.Connect(ctx); err == nil {
				t.Error("a new connection of the refused identity was accepted")
			}
		})
	}
}

func gatewayIdentity(deviceID string, edge bool) gateway.Identity {
	return gateway.Identity{DeviceID: deviceID, Edge: edge, AuthMethod: gateway.AuthSAS}
}

func TestEdgeExtensions(t *testing.T) {
	e := newEnv(t)
	edge := e.device("edge-x", true)
	e.device("kid-1", false)
	e.device("kid-2", false)
	e.device("stranger", false)
	e.module("kid-1", "sensor")
	if err := e.h.AddChildren(context.Background(), "edge-x", []string{"kid-1", "kid-2"}, false); err != nil {
		t.Fatal(err)
	}
	plain := e.device("not-edge", false)
	ctx := ctxT(t)

	type reply struct {
		topic string
		body  []byte
	}
	call := func(c *client.Client, replies chan reply, name string, payload []byte) reply {
		t.Helper()
		if err := c.Publish(ctx, "$outpost/req/"+name+"/?$rid=1", 1, payload); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-replies:
			return r
		case <-time.After(10 * time.Second):
			t.Fatalf("no reply to %s", name)
			return reply{}
		}
	}
	connect := func(d identity.Device) (*client.Client, chan reply) {
		replies := make(chan reply, 4)
		c := e.deviceClient(d, func(c *client.Client) {
			if err := c.Subscribe("$outpost/res/#", 0, func(tp string, b []byte) { replies <- reply{tp, b} }); err != nil {
				t.Error(err)
			}
		})
		return c, replies
	}
	ec, er := connect(edge)

	t.Run("sync-identities", func(t *testing.T) {
		r := call(ec, er, edgeproto.ReqSyncIdentities, []byte("{}"))
		if !strings.HasPrefix(r.topic, "$outpost/res/200/") {
			t.Fatalf("reply topic %s: %s", r.topic, r.body)
		}
		var s identity.ScopeSnapshot
		if err := json.Unmarshal(r.body, &s); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range s.Devices {
			ids = append(ids, d.DeviceID)
			if d.Authentication.SymmetricKey.PrimaryKey == "" {
				t.Errorf("device %s synced without keys", d.DeviceID)
			}
		}
		if s.Edge.DeviceID != "edge-x" || strings.Join(ids, ",") != "kid-1,kid-2" {
			t.Errorf("snapshot edge %s devices %v; want edge-x with kid-1,kid-2", s.Edge.DeviceID, ids)
		}
		mods := map[string]bool{}
		for _, m := range s.Modules {
			mods[m.DeviceID+"/"+m.ModuleID] = true
		}
		if !mods["kid-1/sensor"] || !mods["edge-x/$edgeHub"] {
			t.Errorf("snapshot modules %v; want kid-1/sensor and edge-x/$edgeHub", mods)
		}
		if !strings.Contains(s.RootCA, "BEGIN CERTIFICATE") || s.HubHostName != testHost {
			t.Errorf("root CA %q… host %q", s.RootCA[:min(len(s.RootCA), 30)], s.HubHostName)
		}
	})
	t.Run("sign-edge-ca", func(t *testing.T) {
		csr, _, err := certs.NewCSR("edge-x", "edge-x.example")
		if err != nil {
			t.Fatal(err)
		}
		r := call(ec, er, edgeproto.ReqSignEdgeCA, csr)
		if !strings.HasPrefix(r.topic, "$outpost/res/200/") {
			t.Fatalf("reply topic %s: %s", r.topic, r.body)
		}
		var sc edgeproto.SignedCA
		if err := json.Unmarshal(r.body, &sc); err != nil {
			t.Fatal(err)
		}
		chain, err := certs.ParseCertsPEM([]byte(sc.Certificate))
		if err != nil || len(chain) == 0 {
			t.Fatalf("chain: %v", err)
		}
		if !chain[0].IsCA || chain[0].Subject.CommonName != "edge-x" {
			t.Errorf("signed cert CA=%v CN=%q", chain[0].IsCA, chain[0].Subject.CommonName)
		}
		if err := chain[0].CheckSignatureFrom(e.ca.Cert); err != nil {
			t.Errorf("not signed by the hub root: %v", err)
		}
		other, _, _ := certs.NewCSR("kid-1", "kid-1.example")
		if r := call(ec, er, edgeproto.ReqSignEdgeCA, other); !strings.HasPrefix(r.topic, "$outpost/res/403/") {
			t.Errorf("CSR for another id answered %s", r.topic)
		}
	})
	t.Run("not an edge", func(t *testing.T) {
		pc, pr := connect(plain)
		// Every request of the contract, each with a body its handler
		// would take from an edge: the refusal comes before the handler.
		csr, _, _ := certs.NewCSR("not-edge", "not-edge.example")
		for _, rq := range []struct {
			name string
			body []byte
		}{
			{edgeproto.ReqSyncIdentities, []byte("{}")},
			{edgeproto.ReqSignEdgeCA, csr},
			{edgeproto.ReqPresence, []byte(`{"connected":["x"]}`)},
			{edgeproto.ReqStorePosition, []byte(`{"storeId":"0123456789abcdef0123456789abcdef","next":1}`)},
		} {
			if r := call(pc, pr, rq.name, rq.body); !strings.HasPrefix(r.topic, "$outpost/res/403/") {
				t.Errorf("%s by a plain device answered %s", rq.name, r.topic)
			}
		}
	})
	t.Run("scope", func(t *testing.T) {
		id := func(d string) (bool, error) {
			return e.p.InScope(ctx, gatewayIdentity("edge-x", true), d, "")
		}
		for _, tc := range []struct {
			device, module string
			want           bool
		}{
			{"kid-1", "", true}, {"kid-1", "sensor", true}, {"kid-1", "nope", false},
			{"edge-x", "$edgeHub", true}, {"stranger", "", false}, {"ghost", "", false},
		} {
			got, err := e.p.InScope(ctx, gatewayIdentity("edge-x", true), tc.device, tc.module)
			if err != nil || got != tc.want {
				t.Errorf("InScope(%s/%s) = %v, %v; want %v", tc.device, tc.module, got, err, tc.want)
			}
		}
		if ok, _ := id("kid-2"); !ok {
			t.Error("kid-2 not in scope")
		}
	})
}
