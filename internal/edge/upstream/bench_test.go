package upstream

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/message"
)

// BenchmarkDrain drains 100k messages of 256 B from a real store through
// the cuttable proxy to the fake hub, over TLS, and reports messages per
// second.
func BenchmarkDrain(b *testing.B) {
	const n = 100000
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b, envOpts{})
		e.appendN(n, "child1", "", 256)
		b.StartTimer()
		start := time.Now()
		e.start()
		checkFor(b, 5*time.Minute, time.Millisecond, func() error {
			if q := e.queued(); q != 0 {
				return fmt.Errorf("store still holds %d", q)
			}
			return nil
		})
		elapsed := time.Since(start)
		b.StopTimer()
		if got := e.hub.count(); got < n {
			b.Fatalf("hub got %d of %d", got, n)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "msg/s")
		e.stop()
		b.StartTimer()
	}
}

// BenchmarkDrainWithLive drains a 50k backlog while live messages are
// appended one at a time, with and without a Kick after each append (the
// edge kicked after every telemetry batch until the drain was found to
// relist its queues at each Kick). Compare the two in one run.
func BenchmarkDrainWithLive(b *testing.B) {
	const backlog, live = 50000, 5000
	for _, kick := range []bool{true, false} {
		b.Run(fmt.Sprintf("kick=%v", kick), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				e := newEnv(b, envOpts{})
				e.appendN(backlog, "child1", "", 256)
				b.StartTimer()
				start := time.Now()
				e.start()
				for i := range live {
					if _, err := e.store.AppendRecords(context.Background(), []store.Record{{Endpoint: Endpoint, Msg: &message.Message{DeviceID: "child2", Body: []byte(strconv.Itoa(i))}}}); err != nil {
						b.Fatal(err)
					}
					if kick {
						e.link.Kick()
					}
				}
				checkFor(b, 5*time.Minute, time.Millisecond, func() error {
					if q := e.queued(); q != 0 {
						return fmt.Errorf("store still holds %d", q)
					}
					return nil
				})
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(backlog+live)/elapsed.Seconds(), "msg/s")
				e.stop()
				b.StartTimer()
			}
		})
	}
}
