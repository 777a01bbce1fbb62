package dataplane

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/gateway"
	"outpost/internal/message"
)

// publish stores n messages of device dev through the plane, in batches
// as the gateway hands them over; bodies are "0".."n-1".
func (e *env) publish(ctx context.Context, dev string, from, n int) error {
	via := gateway.Identity{DeviceID: dev, AuthMethod: gateway.AuthSAS}
	for i := from; i < from+n; {
		var batch []*message.Message
		for ; i < from+n && len(batch) < 256; i++ {
			batch = append(batch, &message.Message{DeviceID: dev, Body: []byte(strconv.Itoa(i)), System: message.System{ConnDeviceID: dev}})
		}
		if err := e.p.Telemetry(ctx, via, batch); err != nil {
			return err
		}
	}
	return nil
}

// readerKinds are the two kinds of reader: a consumer of its own, and a
// durable one that a consumer group shares.
var readerKinds = []struct {
	name string
	opts EventsOptions
}{
	{"ephemeral", EventsOptions{}},
	{"consumer group", EventsOptions{ConsumerGroup: "readers"}},
}

// A reader keeps up with a burst stored as fast as the plane takes it,
// without a pause: the pull iterator it used before could wait about 4 s
// (two missed heartbeats) for a pull the server no longer served. The
// bound on a gap is generous for a loaded machine and half the stall.
func TestEventsBurstWithoutStall(t *testing.T) {
	const (
		n      = 10000
		maxGap = 2 * time.Second
	)
	for _, tc := range readerKinds {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctx, cancel := context.WithTimeout(ctxT(t), 60*time.Second)
			defer cancel()
			pubErr := make(chan error, 1)
			var (
				got     int
				lastSeq uint64
				last    time.Time
				gap     time.Duration
			)
			err := e.p.Events(ctx, tc.opts, func() {
				last = time.Now()
				go func() { pubErr <- e.publish(ctx, "burst-dev", 0, n) }()
			}, func(ev Event) error {
				now := time.Now()
				gap = max(gap, now.Sub(last))
				last = now
				if string(ev.Body) != strconv.Itoa(got) || ev.SequenceNumber <= lastSeq {
					return fmt.Errorf("event %d: body %q, sequence %d after %d; want body %d in stream order", got, ev.Body, ev.SequenceNumber, lastSeq, got)
				}
				lastSeq = ev.SequenceNumber
				if got++; got == n {
					cancel()
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := <-pubErr; err != nil && got < n {
				t.Fatalf("publish: %v", err)
			}
			if got != n {
				t.Fatalf("read %d of %d events before the deadline (longest gap %v)", got, n, gap)
			}
			if gap > maxGap {
				t.Errorf("longest gap between events %v; want under %v", gap, maxGap)
			}
		})
	}
}

// Readers sharing a group share its messages; one that leaves hands what
// it fetched but did not read to the others at once, not after the ack
// wait (30 s), and nothing is read twice.
func TestEventsGroupReaderLeaves(t *testing.T) {
	const n = 600
	e := newEnv(t)
	ctx := ctxT(t)
	opts := EventsOptions{ConsumerGroup: "shared", FromStart: true}
	var (
		mu   sync.Mutex
		seen = map[string]int{}
	)
	record := func(ev Event) {
		mu.Lock()
		seen[string(ev.Body)]++
		mu.Unlock()
	}

	// a reads one message and then holds on to it until it is told to
	// leave, with more fetched behind it.
	actx, aleave := context.WithCancel(ctx)
	aheld := make(chan struct{})
	aerr := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		aerr <- e.p.Events(actx, opts, func() { close(ready) }, func(ev Event) error {
			record(ev)
			select {
			case <-aheld:
			default:
				close(aheld)
			}
			<-actx.Done()
			return nil
		})
	}()
	<-ready
	if err := e.publish(ctx, "shared-dev", 0, n); err != nil {
		t.Fatal(err)
	}
	select {
	case <-aheld:
	case <-ctx.Done():
		t.Fatal("first reader got nothing")
	}

	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	berr := make(chan error, 1)
	bready := make(chan struct{})
	go func() {
		berr <- e.p.Events(bctx, opts, func() { close(bready) }, func(ev Event) error {
			record(ev)
			return nil
		})
	}()
	<-bready
	aleave()
	if err := <-aerr; err != nil {
		t.Fatalf("leaving reader: %v", err)
	}
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) < n {
			return fmt.Errorf("the group read %d of %d messages", len(seen), n)
		}
		return nil
	})
	bcancel()
	if err := <-berr; err != nil {
		t.Fatalf("remaining reader: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for body, k := range seen {
		if k != 1 {
			t.Errorf("message %s read %d times; want once", body, k)
		}
	}
}

// Deleting the consumer under a reader ends its read with an error.
func TestEventsConsumerDeleted(t *testing.T) {
	for _, tc := range readerKinds {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := ctxT(t)
			errc := make(chan error, 1)
			ready := make(chan struct{})
			go func() {
				errc <- e.p.Events(ctx, tc.opts, func() { close(ready) }, func(Event) error { return nil })
			}()
			<-ready
			names := e.p.tel.ConsumerNames(ctx)
			var deleted int
			for name := range names.Name() {
				if err := e.p.tel.DeleteConsumer(ctx, name); err != nil {
					t.Fatal(err)
				}
				deleted++
			}
			if deleted != 1 {
				t.Fatalf("deleted %d consumers; want the reader's one", deleted)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, jetstream.ErrConsumerDeleted) && !errors.Is(err, jetstream.ErrConsumerNotFound) {
					t.Errorf("read ended with %v; want a deleted consumer", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("read goes on without its consumer")
			}
		})
	}
}
