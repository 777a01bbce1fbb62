package edge

import (
	"crypto/tls"
	"fmt"
	"slices"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/internal/gateway/gatewaytest"
	"outpost/internal/sas"
	"outpost/internal/topic"
)

// TestWillNotDelivered: a child that connects to the edge with a Will on
// another child's topic, or on a filter every child holds, and drops its
// connection, is refused at CONNECT (5, not authorized), and a child
// subscribed there receives nothing: no forged method call, desired
// patch, C2D message or twin response.
func TestWillNotDelivered(t *testing.T) {
	hub := newFakeHub(t)
	vkey := hub.addDevice("victim")
	akey := hub.addDevice("attacker")
	te := startEdge(t, hub, t.TempDir(), true)
	te.awaitReady()
	addr := fmt.Sprintf("127.0.0.1:%d", te.port())
	tc := &tls.Config{RootCAs: hub.pool(t), ServerName: "localhost"}
	token := func(d, key string) string {
		tok, err := sas.Sign(sas.DeviceResource(hubHost, d, ""), key, "", time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	user := func(cid string) string { return hubHost + "/" + cid + "/?api-version=2021-04-12" }

	got := make(chan paho.Message, 64)
	vc := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + addr).
		SetClientID("victim").SetUsername(user("victim")).SetPassword(token("victim", vkey)).
		SetTLSConfig(tc).SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m }))
	if tok := vc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect victim: %v", tok.Error())
	}
	t.Cleanup(func() { vc.Disconnect(0) })
	filters := topic.Filters("victim", "")
	for _, f := range filters {
		if tok := vc.Subscribe(f, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", f, tok.Error())
		}
	}

	wills := append(slices.Clone(filters), topic.MethodRequest("reboot", "1"),
		"devices/victim/messages/events/", "$outpost/res/#", "$outpost/req/invoke/?$rid=1")
	gatewaytest.TryWills(t, te.e.Gateway(), addr, tc, "attacker", user("attacker"), token("attacker", akey), wills)
	gatewaytest.ReceivesNothingElse(t, vc, got)
}
