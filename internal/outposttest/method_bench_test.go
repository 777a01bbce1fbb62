package outposttest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/service"
)

// BenchmarkMethodRoundTrip measures a direct method call end to end, one
// call at a time: POST /twins/{d}/methods on the service REST API, the
// hub's request to the device over MQTT, the device's answer (internal/
// client, echoing a 256 B JSON payload) and the hub's HTTP response.
// bench/run.sh measures the same call against the hub binary, next to a
// raw MQTT request/response through mosquitto.
func BenchmarkMethodRoundTrip(b *testing.B) {
	env := NewEnv(b)
	d := env.CreateDevice("method1")
	dev, err := client.New(client.Config{
		ConnectionString: service.DeviceConnectionString(d.Device, env.HubMQTTHost(), ""),
		RootCAs:          env.RootCAs,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	dev.OnMethod("echo", func(_ context.Context, _ string, p []byte) (int, []byte) { return 200, p })
	if err := dev.Connect(ctxFor(b)); err != nil {
		b.Fatal(err)
	}
	payload := []byte(`"` + string(bytes.Repeat([]byte("a"), 254)) + `"`)
	ctx := b.Context()
	call := func() error {
		res, err := env.Service().InvokeMethod(ctx, d.ID, "", service.MethodRequest{
			MethodName: "echo", Payload: payload, ResponseTimeoutInSeconds: 10,
		})
		if err != nil {
			return err
		}
		if res.Status != 200 || !bytes.Equal(bytes.TrimSpace(res.Payload), payload) {
			return fmt.Errorf("answer %d with %d bytes, want 200 with %d", res.Status, len(res.Payload), len(payload))
		}
		return nil
	}
	// Until the hub has the device's method subscription, calls fail.
	CheckFor(b, 30*time.Second, 20*time.Millisecond, call)

	var lat []time.Duration
	for b.Loop() {
		t := time.Now()
		if err := call(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(int(p*float64(len(lat))), len(lat)-1)].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
