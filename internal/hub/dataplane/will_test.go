package dataplane

import (
	"crypto/tls"
	"slices"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/internal/gateway/gatewaytest"
	"outpost/internal/topic"
)

// TestWillNotDelivered: a device that connects with a Will on another's
// topic, or on a filter every device holds, and drops its connection,
// is refused at CONNECT (5, not authorized), and a device subscribed
// there receives nothing: no forged method call, desired patch, C2D
// message or twin response.
func TestWillNotDelivered(t *testing.T) {
	e := newEnv(t)
	v := e.device("victim", false)
	a := e.device("attacker", false)

	got := make(chan paho.Message, 64)
	vc := e.pahoWith(e.pahoOptions(v.DeviceID, e.deviceToken(v)).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m }))
	filters := topic.Filters(v.DeviceID, "")
	for _, f := range filters {
		if tok := vc.Subscribe(f, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", f, tok.Error())
		}
	}

	wills := append(slices.Clone(filters), topic.MethodRequest("reboot", "1"), "devices/victim/messages/events/", "$outpost/res/#")
	gatewaytest.TryWills(t, e.gw, "127.0.0.1:"+e.mqttPort, &tls.Config{RootCAs: e.pool, ServerName: "localhost"},
		a.DeviceID, testHost+"/"+a.DeviceID+"/?api-version=2021-04-12", e.deviceToken(a), wills)
	gatewaytest.ReceivesNothingElse(t, vc, got)
}
