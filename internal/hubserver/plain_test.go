package hubserver

import (
	"context"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"outpost/internal/identity"
	"outpost/internal/sas"
	"outpost/internal/service"
)

// TestPlainMQTTOnlyBehindItsFlag: without MQTTPlainAddr nothing serves
// plain TCP; with it, a device connects and publishes over plain TCP,
// authenticated as on TLS, while the TLS listener stays TLS-only.
func TestPlainMQTTOnlyBehindItsFlag(t *testing.T) {
	if s := start(t, t.TempDir()); s.MQTTPlainAddr() != nil {
		t.Fatalf("plain listener %v without MQTTPlainAddr", s.MQTTPlainAddr())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", MQTTPlainAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, s) })
	svc, err := service.New(service.Config{ConnectionString: s.ConnectionString(), CAFile: s.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	d, err := svc.CreateDevice(ctx, identity.Device{DeviceID: "dev1"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.Sign(sas.DeviceResource(s.HostName(), "dev1", ""), d.Authentication.SymmetricKey.PrimaryKey, "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	connect := func(addr string) error {
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("dev1").
			SetUsername(s.HostName() + "/dev1/?api-version=2021-04-12").SetPassword(tok).
			SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
		c := mqtt.NewClient(opts)
		tk := c.Connect()
		if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			return tk.Error()
		}
		defer c.Disconnect(0)
		pt := c.Publish("devices/dev1/messages/events/", 1, false, "plain")
		if !pt.WaitTimeout(10 * time.Second) {
			t.Fatal("no PUBACK over plain TCP")
		}
		return pt.Error()
	}
	if err := connect(s.MQTTPlainAddr().String()); err != nil {
		t.Fatalf("plain TCP: %v", err)
	}
	if err := connect(s.MQTTAddr().String()); err == nil {
		t.Fatal("the TLS listener accepted a plain-TCP client")
	}
}
