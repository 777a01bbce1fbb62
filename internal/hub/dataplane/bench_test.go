package dataplane

import (
	"context"
	"testing"

	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/message"
)

// BenchmarkTelemetry measures the plane's ingest: batches of 256 messages
// of 256 B, each call returning once JetStream acknowledged the batch.
func BenchmarkTelemetry(b *testing.B) {
	h, err := hub.New(hub.Config{DataDir: b.TempDir(), HostName: testHost})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	e, err := New(Config{Hub: h})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	via := gateway.Identity{DeviceID: "bench", AuthMethod: gateway.AuthSAS}
	body := make([]byte, 256)
	const batch = 256
	b.SetBytes(batch * 256)
	b.ResetTimer()
	for b.Loop() {
		msgs := make([]*message.Message, batch)
		for i := range msgs {
			msgs[i] = &message.Message{DeviceID: "bench", Body: body, System: message.System{ConnDeviceID: "bench"}}
		}
		if err := e.Telemetry(context.Background(), via, msgs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msg/s")
}
