package edge

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"outpost/internal/message"
)

// BenchmarkChildToModule measures local routing: a child publishes (QoS
// 1, acknowledged once stored), a route takes the message to a module
// input, the module receives it. It reports the latency from send to
// receipt (p50, p99) and the rate, with one message in flight (latency)
// and with 64 (throughput).
func BenchmarkChildToModule(b *testing.B) {
	for _, inflight := range []int{1, 64} {
		b.Run("inflight="+strconv.Itoa(inflight), func(b *testing.B) { benchChildToModule(b, inflight) })
	}
}

func benchChildToModule(b *testing.B, inflight int) {
	hub := newFakeHub(b)
	childKey := hub.addDevice("child1")
	modKey := hub.addModule("edge1", "filter")
	te := startEdge(b, hub, b.TempDir(), true)
	te.awaitReady()
	te.up.setConnected(false)
	te.e.EdgeHubDesired([]byte(`{"routes":{"toFilter":"FROM /messages/* WHERE $connectionDeviceId = 'child1' INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")"}}`))

	var mu sync.Mutex
	warm := false
	sent := map[int]time.Time{}
	lat := make([]time.Duration, 0, b.N)
	done := make(chan struct{})
	mod := te.newClient("edge1", "filter", modKey)
	mod.OnInput(func(input string, m *message.Message) {
		i, _ := strconv.Atoi(string(m.Body))
		mu.Lock()
		defer mu.Unlock()
		if i < 0 {
			warm = true
			return
		}
		lat = append(lat, time.Since(sent[i]))
		if len(lat) == b.N {
			close(done)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := mod.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	child := te.newClient("child1", "", childKey)
	if err := child.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	// Warm up: the module's worker starts on its first message.
	if err := child.Send(ctx, &message.Message{Body: []byte("-1")}); err != nil {
		b.Fatal(err)
	}
	checkFor(b, time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !warm {
			return errors.New("warm-up message not received")
		}
		return nil
	})

	b.ResetTimer()
	start := time.Now()
	window := make(chan struct{}, inflight)
	var acks sync.WaitGroup
	for i := range b.N {
		window <- struct{}{}
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		ch := child.SendAsync(&message.Message{Body: []byte(strconv.Itoa(i))})
		acks.Add(1)
		go func() {
			defer acks.Done()
			if err := <-ch; err != nil {
				b.Error(err)
			}
			<-window
		}()
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatal("not all messages reached the module")
	}
	elapsed := time.Since(start)
	b.StopTimer()
	acks.Wait()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
}
