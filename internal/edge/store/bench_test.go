package store

import (
	"context"
	"sync"
	"testing"
	"time"

	"outpost/internal/message"
)

func benchStore(b *testing.B) *Store {
	s, err := Open(Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func msg256() *message.Message {
	return &message.Message{DeviceID: "d", Body: make([]byte, 256)}
}

// BenchmarkAppendSync1 is one appender waiting for each durable ack.
func BenchmarkAppendSync1(b *testing.B) {
	s := benchStore(b)
	m := msg256()
	start := time.Now()
	for b.Loop() {
		if _, err := s.appendOne(context.Background(), "$upstream", m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "acked-msg/s")
}

// BenchmarkAppendAsync10x64 is ten appenders with up to 64 messages each in
// flight, as MQTT clients with a receive window of 64 would be.
func BenchmarkAppendAsync10x64(b *testing.B) {
	s := benchStore(b)
	m := msg256()
	const appenders, window = 10, 64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := b.N/appenders + 1
	for range appenders {
		wg.Go(func() {
			sem := make(chan struct{}, window)
			var inflight sync.WaitGroup
			for range per {
				sem <- struct{}{}
				inflight.Add(1)
				err := s.appendAsync([]Record{{Endpoint: "$upstream", Msg: m}}, func(_ []uint64, err error) {
					if err != nil {
						b.Error(err)
					}
					<-sem
					inflight.Done()
				})
				if err != nil {
					b.Error(err)
					return
				}
			}
			inflight.Wait()
		})
	}
	wg.Wait()
	b.ReportMetric(float64(per*appenders)/time.Since(start).Seconds(), "acked-msg/s")
	u := s.Usage()
	b.ReportMetric(float64(u.Appended)/float64(u.Commits), "msg/commit")
}
