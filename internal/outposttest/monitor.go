package outposttest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/hub/dataplane"
)

// Monitor collects the telemetry that reaches the hub, read from the
// hub's telemetry stream from its start, as `outpost monitor-events`
// reads it.
type Monitor struct {
	mu sync.Mutex
	// mu guards the following fields.
	events []dataplane.Event
	err    error
}

// Monitor starts collecting telemetry; it stops at the end of the test.
func (e *Env) Monitor(t testing.TB) *Monitor {
	t.Helper()
	m := &Monitor{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := e.Plane.Events(ctx, dataplane.EventsOptions{FromStart: true}, func() { close(ready) }, func(ev dataplane.Event) error {
			m.mu.Lock()
			m.events = append(m.events, ev)
			m.mu.Unlock()
			return nil
		})
		if err != nil {
			m.mu.Lock()
			m.err = err
			m.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-ready:
	case <-done:
		t.Fatalf("monitor: %v", m.Err())
	case <-time.After(30 * time.Second):
		t.Fatal("monitor: no reader within 30 s")
	}
	return m
}

// Err is the error that ended the monitor's stream, if any.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Events returns what reached the hub so far, in stored order.
func (m *Monitor) Events() []dataplane.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]dataplane.Event(nil), m.events...)
}

// Len is how many messages reached the hub so far.
func (m *Monitor) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.events)
}

// Seqs returns the Seq properties of a device's messages, in the order
// the hub stored them; messages without one are reported as errors.
func (m *Monitor) Seqs(deviceID string) ([]int, error) {
	var out []int
	for _, ev := range m.Events() {
		if ev.DeviceID != deviceID {
			continue
		}
		n, err := seqOf(ev.Properties)
		if err != nil {
			return nil, fmt.Errorf("%s: hub sequence %d: %w", deviceID, ev.SequenceNumber, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// Delivery is what a device's messages at the hub look like against
// what it was acknowledged.
type Delivery struct {
	Missing    []int // acknowledged, not at the hub
	Duplicates int   // messages seen more than once
	// OutOfOrder is the first place where the order broke, or "".
	OutOfOrder string
}

// Check compares a device's messages at the hub with the Seqs it was
// acknowledged. Repeats of a message right after itself (a device
// sending again what it had no PUBACK for) count as duplicates, not as
// disorder; any other step back is disorder.
func (m *Monitor) Check(deviceID string, acked []int) (Delivery, error) {
	seqs, err := m.Seqs(deviceID)
	if err != nil {
		return Delivery{}, err
	}
	var d Delivery
	seen := map[int]bool{}
	prev := 0
	for i, s := range seqs {
		if seen[s] {
			d.Duplicates++
		}
		seen[s] = true
		if i > 0 && s < prev && d.OutOfOrder == "" {
			d.OutOfOrder = fmt.Sprintf("%s: seq %d after %d (message %d of the device at the hub)", deviceID, s, prev, i)
		}
		prev = max(prev, s)
	}
	for _, a := range acked {
		if !seen[a] {
			d.Missing = append(d.Missing, a)
		}
	}
	return d, nil
}

// AwaitDelivered waits until every acknowledged message of every device
// reached the hub, then checks their order. acked maps device ids to the
// Seqs they were acknowledged. It returns the duplicates per device.
func (m *Monitor) AwaitDelivered(t testing.TB, timeout time.Duration, acked map[string][]int) map[string]int {
	t.Helper()
	ids := make([]string, 0, len(acked))
	for id := range acked {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	result := map[string]Delivery{}
	CheckFor(t, timeout, 20*time.Millisecond, func() error {
		if err := m.Err(); err != nil {
			return fmt.Errorf("monitor stopped: %w", err)
		}
		var missing []string
		for _, id := range ids {
			d, err := m.Check(id, acked[id])
			if err != nil {
				return err
			}
			result[id] = d
			if len(d.Missing) > 0 {
				missing = append(missing, fmt.Sprintf("%s: %d of %d missing (first %d)", id, len(d.Missing), len(acked[id]), d.Missing[0]))
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("acknowledged messages not at the hub: %s", strings.Join(missing, "; "))
		}
		return nil
	})
	dups := map[string]int{}
	for _, id := range ids {
		if d := result[id]; d.OutOfOrder != "" {
			t.Errorf("out of order at the hub: %s", d.OutOfOrder)
		}
		dups[id] = result[id].Duplicates
		if dups[id] > 0 {
			t.Logf("%s duplicates: %s", id, m.duplicateDetail(id))
		}
	}
	return dups
}

// duplicateDetail tells where a duplicate came from: the same edge
// sequence twice means the hub's replay de-duplication missed; different
// edge sequences mean the edge stored the message twice (a device resent
// it); the same stream sequence twice means the reader saw one stored
// message twice.
func (m *Monitor) duplicateDetail(deviceID string) string {
	type where struct {
		stream, edgeSeq uint64
	}
	at := map[int][]where{}
	for _, ev := range m.Events() {
		if ev.DeviceID != deviceID {
			continue
		}
		if n, err := seqOf(ev.Properties); err == nil {
			at[n] = append(at[n], where{ev.SequenceNumber, ev.System.EdgeSeq})
		}
	}
	var out []string
	for n, ws := range at {
		if len(ws) > 1 {
			out = append(out, fmt.Sprintf("seq %d at (stream, edge seq) %v", n, ws))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}
