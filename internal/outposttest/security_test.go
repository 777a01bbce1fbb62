package outposttest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/clocktest"
	"outpost/internal/gateway"
	"outpost/internal/identity"
	"outpost/internal/sas"
	"outpost/internal/service"
	"outpost/internal/soak"
)

// The through-edge part of the security suite (docs/RELIABILITY.md,
// "Security"): what only a hub and an edge together can show.

// childWith connects deviceID through n with the key of d (a snapshot
// of the identity, possibly older than the registry's).
func childWith(n *EdgeNode, d identity.Device) (*client.Client, error) {
	c, err := client.New(client.Config{
		ConnectionString: service.DeviceConnectionString(d, HubHostName, n.MQTTAddr()),
		RootCAs:          n.env.RootCAs,
		Logger:           n.env.log.With("side", "child", "device", d.DeviceID),
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		c.Close()
		return nil, err
	}
	n.t.Cleanup(func() { c.Close() })
	return c, nil
}

// refusedNotAuthorized is whether err is a refusal a retry cannot mend.
func refusedNotAuthorized(err error) bool {
	var ce *client.ConnectError
	return errors.As(err, &ce) && !ce.Retryable()
}

// TestSecurityRotationOffline: a child's key rotated, and another child
// disabled, at the hub while the edge is offline. By design the edge
// goes on with what it cached at its last sync: the old key and the
// disabled child keep working offline (a restart included), the new key
// does not yet. At the resync the old key is refused, the new one
// taken, the disabled child dropped and refused; and the messages the
// edge acknowledged before all reach the hub.
func TestSecurityRotationOffline(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"rotated", "disabled"})
	old := s.env.device("rotated")
	rot, dis := newPublisher(s.node.Child(t, "rotated")), newPublisher(s.node.Child(t, "disabled"))
	n := soak.N(3, 1000) // messages of each child online, and again offline
	rot.sendN(t, n)
	dis.sendN(t, n)

	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	ctx := ctxFor(t)
	d := s.env.device("rotated")
	d.Authentication.SymmetricKey = identity.SymmetricKey{PrimaryKey: sas.GenerateKey(), SecondaryKey: sas.GenerateKey()}
	if _, err := s.env.Service().UpdateDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	off := s.env.device("disabled")
	off.Status = identity.StatusDisabled
	if _, err := s.env.Service().UpdateDevice(ctx, off); err != nil {
		t.Fatal(err)
	}

	// Offline, through a restart: the children authenticate again from
	// the cache, with the old key and as enabled.
	s.node.Restart(t)
	rot.sendN(t, n)
	dis.sendN(t, n)
	// (Each extra connection is closed at once: it takes the session of
	// the publisher's client, which shares its client id.)
	if c, err := childWith(s.node, old); err != nil {
		t.Errorf("old key refused offline, before the resync: %v", err)
	} else {
		c.Close()
	}
	if _, err := s.node.ConnectChild(t, "rotated"); !refusedNotAuthorized(err) {
		t.Errorf("new key offline: %v, want refused until the resync", err)
	}

	s.node.Restore()
	s.node.AwaitLink(t, true, 30*time.Second)
	// The resync drops the disabled child and lets the new key in.
	CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if dis.c.Connected() {
			return errors.New("disabled child still connected")
		}
		if _, err := childWith(s.node, old); !refusedNotAuthorized(err) {
			return fmt.Errorf("old key after the resync: %v, want refused", err)
		}
		return nil
	})
	if c, err := s.node.ConnectChild(t, "rotated"); err != nil {
		t.Errorf("new key after the resync: %v", err)
	} else {
		c.Close()
	}
	if _, err := childWith(s.node, s.env.device("disabled")); !refusedNotAuthorized(err) {
		t.Errorf("disabled child after the resync: %v, want refused", err)
	}

	acked := ackedBy(rot, dis)
	s.mon.AwaitDelivered(t, 60*time.Second, acked)
	for id, seqs := range acked {
		t.Logf("%s: %d acknowledged (%d offline), all at the hub in order", id, len(seqs), len(seqs)-n)
	}
}

// TestSecurityTLSVersionsHubAndEdge: every listener of the hub and of the edge
// (MQTT over TLS; HTTPS, which also carries MQTT over WebSocket) serves
// TLS 1.2 and 1.3 only.
func TestSecurityTLSVersionsHubAndEdge(t *testing.T) {
	t.Parallel()
	s := newStory(t, nil)
	for _, l := range []struct{ name, addr string }{
		{"hub MQTT", s.env.MQTTAddr}, {"hub HTTPS", s.env.HTTPSAddr},
		{"edge MQTT", s.node.MQTTAddr()}, {"edge HTTPS", s.node.HTTPSAddr()},
	} {
		for _, v := range []struct {
			name    string
			version uint16
			ok      bool
		}{{"1.0", tls.VersionTLS10, false}, {"1.1", tls.VersionTLS11, false}, {"1.2", tls.VersionTLS12, true}, {"1.3", tls.VersionTLS13, true}} {
			t.Run(l.name+"/TLS "+v.name, func(t *testing.T) {
				nc, err := tls.Dial("tcp", l.addr, &tls.Config{RootCAs: s.env.RootCAs, ServerName: "localhost",
					MinVersion: v.version, MaxVersion: v.version})
				if err == nil {
					nc.Close()
				}
				if (err == nil) != v.ok {
					t.Fatalf("handshake: %v, want ok=%v", err, v.ok)
				}
			})
		}
	}
}

// TestSecurityEdgeLinkClockJump (IoT Edge #6421): an edge whose clock is
// wrong after a long offline period signs its link's token by that
// clock. Behind by less than the token's lifetime plus the hub's skew
// window it still gets in; days behind it is refused, and once the clock
// is set right the next attempt signs a fresh token and the link returns
// by itself.
func TestSecurityEdgeLinkClockJump(t *testing.T) {
	t.Parallel()
	clock := clocktest.Real()
	env := NewEnv(t)
	env.CreateEdge("edge1")
	node := env.StartEdge(t, "edge1", WithClock(clock.Now))
	reconnect := func() {
		node.Cut()
		node.AwaitLink(t, false, upstreamKeepAlive)
		node.Restore()
	}

	// The link's token lives an hour: an hour and four minutes behind,
	// it expired four minutes ago by the hub's clock, within the skew.
	behind := time.Hour + gateway.DefaultClockSkew - time.Minute
	clock.Advance(-behind)
	reconnect()
	t.Logf("clock %v behind: link back in %v", behind, node.AwaitLink(t, true, 30*time.Second))

	clock.Advance(-72 * time.Hour)
	reconnect()
	CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if node.LinkUp() {
			return errors.New("link up with a token expired days ago")
		}
		if e := node.Edge().Status().Link.LastError; !strings.Contains(e, "not authorized") {
			return fmt.Errorf("link's last error %q: want a refusal as not authorized", e)
		}
		return nil
	})
	clock.Advance(72*time.Hour + behind)
	t.Logf("clock set right: link back in %v", node.AwaitLink(t, true, 30*time.Second))
}
