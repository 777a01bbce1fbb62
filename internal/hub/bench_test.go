package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/identity"
	"outpost/internal/twin"
)

func BenchmarkRegistryCreate(b *testing.B) {
	h := newTestHub(b, "")
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: fmt.Sprintf("d%d", i)}, "", false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRegistryGet(b *testing.B) {
	h := newTestHub(b, "")
	ctx := context.Background()
	const n = 1000
	for i := range n {
		if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: fmt.Sprintf("d%d", i)}, "", false); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.GetDevice(fmt.Sprintf("d%d", i%n)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTwinPatch(b *testing.B) {
	h := newTestHub(b, "")
	ctx := context.Background()
	if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "d"}, "", false); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := TwinPatch{Desired: map[string]any{"k": i}}
		if _, err := h.PatchTwin(ctx, "d", "", p, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkQuery100k times a tag query over 100k devices. The devices and
// twins are published straight into KV (as another replica would), so
// the setup also exercises the watchers that fill the index.
func BenchmarkQuery100k(b *testing.B) {
	const n = 100_000
	h := newTestHub(b, "")
	tmpl := identity.Device{DeviceID: "x"}
	if err := identity.PrepareNewDevice(&tmpl, time.Now()); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var futures []jetstream.PubAckFuture
	// Acks are awaited in windows, so the publisher never outruns the
	// server's limit on pending async publishes.
	wait := func() {
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				b.Fatal(err)
			}
		}
		futures = futures[:0]
	}
	for i := range n {
		if len(futures) >= 1000 {
			wait()
		}
		id := fmt.Sprintf("dev%06d", i)
		d := tmpl
		d.DeviceID = id
		dj, err := json.Marshal(&d)
		if err != nil {
			b.Fatal(err)
		}
		tw := twin.New(id, "", time.Now())
		tw.Tags["x"] = fmt.Sprintf("v%d", i%1000)
		tj, err := json.Marshal(&twinRecord{Twin: tw})
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range []struct {
			subj string
			data []byte
		}{{"$KV.devices." + deviceKey(id), dj}, {"$KV.twins." + deviceKey(id), tj}} {
			f, err := h.js.PublishAsync(m.subj, m.data)
			if err != nil {
				b.Fatal(err)
			}
			futures = append(futures, f)
		}
	}
	wait()
	published := time.Since(start)
	deadline := time.Now().Add(2 * time.Minute)
	for h.devTab.len() < n || h.twinTab.len() < n {
		if time.Now().After(deadline) {
			b.Fatalf("index holds %d devices, %d twins", h.devTab.len(), h.twinTab.len())
		}
		time.Sleep(10 * time.Millisecond)
	}
	indexed := time.Since(start)

	const q = "SELECT * FROM devices WHERE tags.x = 'v42'"
	cold := time.Now()
	page, err := h.Query(q, 100, "")
	if err != nil {
		b.Fatal(err)
	}
	if len(page.Items) != n/1000 {
		b.Fatalf("%d matches; want %d", len(page.Items), n/1000)
	}
	coldDur := time.Since(cold)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.Query(q, 100, ""); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Reported after the loop: ResetTimer clears reported metrics.
	b.ReportMetric(float64(published.Milliseconds()), "publish-ms")
	b.ReportMetric(float64(indexed.Milliseconds()), "indexed-ms")
	b.ReportMetric(float64(coldDur.Milliseconds()), "cold-query-ms")
}
