package gateway

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/message"
)

// BenchmarkTelemetryIngest: 10 clients publish 256 B QoS 1 telemetry with
// 64 messages in flight each, against a backend whose every call costs a
// 200 µs "fsync". It reports throughput and PUBACK latency.
func BenchmarkTelemetryIngest(b *testing.B) {
	const (
		clients  = 10
		inFlight = 64
		size     = 256
		fsync    = 200 * time.Microsecond
	)
	e := newEnv(b)
	e.be.telemetry = func(ctx context.Context, _ Identity, _ []*message.Message) error {
		time.Sleep(fsync)
		return nil
	}
	body := bytes.Repeat([]byte("x"), size)
	rcs := make([]*rawClient, clients)
	for i := range rcs {
		cid := fmt.Sprintf("bench%d", i)
		e.be.addDevice(cid, device{})
		rcs[i] = e.dialRaw(b)
		rcs[i].mustConnect(e, cid)
	}
	// The fake backend keeps every message; drop them as we go.
	var latMu sync.Mutex
	var lat []time.Duration

	b.SetBytes(size)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, rc := range rcs {
		n := b.N / clients
		if i < b.N%clients {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			topicName := fmt.Sprintf("devices/bench%d/messages/events/", i)
			var sent [1 << 16]atomic.Int64
			window := make(chan struct{}, inFlight)
			local := make([]time.Duration, 0, n)
			done := make(chan error, 1)
			go func() {
				for range n {
					pk, err := rc.read(30 * time.Second)
					if err != nil {
						done <- err
						return
					}
					if pk.FixedHeader.Type != packets.Puback {
						done <- fmt.Errorf("got packet type %d", pk.FixedHeader.Type)
						return
					}
					local = append(local, time.Duration(time.Now().UnixNano()-sent[pk.PacketID].Load()))
					<-window
				}
				done <- nil
			}()
			var buf bytes.Buffer
			for j := range n {
				window <- struct{}{}
				pid := uint16(j%65535) + 1
				pk := packets.Packet{
					FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1},
					TopicName:       topicName,
					Payload:         body,
					PacketID:        pid,
					ProtocolVersion: 4,
				}
				buf.Reset()
				if err := pk.PublishEncode(&buf); err != nil {
					b.Error(err)
					return
				}
				sent[pid].Store(time.Now().UnixNano())
				if _, err := rc.nc.Write(buf.Bytes()); err != nil {
					b.Error(err)
					return
				}
			}
			if err := <-done; err != nil {
				b.Error(err)
			}
			latMu.Lock()
			lat = append(lat, local...)
			latMu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "msg/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		b.ReportMetric(float64(len(lat))/float64(e.be.telemetryCalls()), "msgs/call")
	}
}
