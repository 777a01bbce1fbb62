package outposttest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/message"
)

// benchChildren are the children of the benchmarks' edge.
const benchChildren = 10

// benchEdge is a hub and an edge with benchChildren connected children.
func benchEdge(b *testing.B) (*Env, *EdgeNode, []*client.Client) {
	b.Helper()
	env := NewEnv(b)
	env.CreateEdge("edge1")
	var ids []string
	for i := range benchChildren {
		id := fmt.Sprintf("child%02d", i)
		env.CreateDevice(id)
		ids = append(ids, id)
	}
	env.AddChildren("edge1", ids...)
	node := env.StartEdge(b, "edge1")
	var cs []*client.Client
	for _, id := range ids {
		cs = append(cs, node.Child(b, id))
	}
	return env, node, cs
}

// ingest sends perChild messages of 256 B from every client at once,
// each client keeping up to client.DefaultMaxInFlight (64) unacknowledged,
// and returns once all are acknowledged (the edge acks after fsync).
func ingest(b *testing.B, cs []*client.Client, perChild int) {
	b.Helper()
	body := make([]byte, 256)
	var wg sync.WaitGroup
	errs := make(chan error, len(cs))
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// SendAsync blocks while the window is full, so at most
			// MaxInFlight are outstanding; acks come in order.
			pending := make([]<-chan error, 0, client.DefaultMaxInFlight)
			for range perChild {
				if len(pending) == cap(pending) {
					if err := <-pending[0]; err != nil {
						errs <- err
						return
					}
					pending = pending[1:]
				}
				pending = append(pending, c.SendAsync(&message.Message{Body: body}))
			}
			for _, ch := range pending {
				if err := <-ch; err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("send: %v", err)
	}
}

// BenchmarkOfflineIngest measures acknowledged messages per second into
// an edge whose link is down: 10 children, QoS 1, 256 B, 64 in flight
// each, every PUBACK after a synced commit.
func BenchmarkOfflineIngest(b *testing.B) {
	_, node, cs := benchEdge(b)
	node.Cut()
	node.AwaitLink(b, false, time.Minute)
	const perChild = 2000
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		ingest(b, cs, perChild)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	total := b.N * perChild * len(cs)
	b.ReportMetric(float64(total)/elapsed.Seconds(), "msg/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDrain measures how a 100k-message backlog drains once the
// link returns: reconnect time (link-up noticed) and transfer time (from
// then to the last message stored at the hub).
func BenchmarkDrain(b *testing.B) {
	env, node, cs := benchEdge(b)
	mon := env.Monitor(b)
	const backlog = 100_000
	var reconnect, transfer time.Duration
	for i := range b.N {
		b.StopTimer()
		node.Cut()
		node.AwaitLink(b, false, time.Minute)
		ingest(b, cs, backlog/len(cs))
		if q := node.UpstreamQueue(); q != backlog {
			b.Fatalf("backlog %d, want %d", q, backlog)
		}
		want := (i + 1) * backlog
		b.StartTimer()

		start := time.Now()
		node.Restore()
		node.AwaitLink(b, true, time.Minute)
		up := time.Now()
		CheckFor(b, 2*time.Minute, 5*time.Millisecond, func() error {
			if n := mon.Len(); n < want {
				return fmt.Errorf("%d of %d at the hub; edge queue %d, link up %v", n, want, node.UpstreamQueue(), node.LinkUp())
			}
			return nil
		})
		reconnect += up.Sub(start)
		transfer += time.Since(up)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(reconnect.Seconds()*1000/n, "reconnect-ms")
	b.ReportMetric(transfer.Seconds()/n, "transfer-s")
	b.ReportMetric(backlog*n/transfer.Seconds(), "drain-msg/s")
	b.ReportMetric(0, "ns/op")
}
