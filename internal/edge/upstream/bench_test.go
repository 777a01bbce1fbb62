package upstream

import (
	"fmt"
	"testing"
	"time"
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
