package demo

import (
	"sort"
	"sync"
)

// tally counts telemetry on both ends: what each device sent and had
// acknowledged by the edge, and what reached the hub, by the per-device
// sequence number each message carries. From the two it tells order,
// duplicates and losses.
type tally struct {
	mu sync.Mutex
	// mu guards devs.
	devs map[string]*devTally
}

type devTally struct {
	sent, failed int64
	acked        map[int64]bool
	delivered    map[int64]bool
	maxDelivered int64 // highest seq seen at the hub; seqs start at 1
	inOrder      int64
	outOfOrder   int64
	duplicates   int64
}

// Totals are the counts over every device.
type Totals struct {
	// Sent counts messages handed to the device client; Acked those the
	// edge acknowledged (durable in its store); SendFailed those whose send
	// failed (never acknowledged).
	Sent, Acked, SendFailed int64
	// Delivered counts distinct messages read at the hub; InOrder those
	// that came after every earlier message of their device; OutOfOrder
	// those that came after a later one; Duplicates repeats.
	Delivered, InOrder, OutOfOrder, Duplicates int64
	// Lost counts messages acknowledged but not (yet) delivered.
	Lost int64
}

func newTally(devices []string) *tally {
	t := &tally{devs: map[string]*devTally{}}
	for _, d := range devices {
		t.devs[d] = &devTally{acked: map[int64]bool{}, delivered: map[int64]bool{}}
	}
	return t
}

// devLocked returns the device's counters, or nil for a device not counted.
func (t *tally) devLocked(id string) *devTally { return t.devs[id] }

func (t *tally) sent(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := t.devLocked(id); d != nil {
		d.sent++
	}
}

func (t *tally) acked(id string, seq int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := t.devLocked(id); d != nil {
		d.acked[seq] = true
	}
}

func (t *tally) failed(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := t.devLocked(id); d != nil {
		d.failed++
	}
}

// delivered records a message read at the hub, in the hub's order.
func (t *tally) delivered(id string, seq int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.devLocked(id)
	if d == nil {
		return
	}
	switch {
	case d.delivered[seq]:
		d.duplicates++
		return
	case seq > d.maxDelivered:
		d.inOrder++
		d.maxDelivered = seq
	default:
		d.outOfOrder++
	}
	d.delivered[seq] = true
}

// totals sums the counters of every device.
func (t *tally) totals() Totals {
	t.mu.Lock()
	defer t.mu.Unlock()
	var s Totals
	for _, d := range t.devs {
		s.Sent += d.sent
		s.SendFailed += d.failed
		s.Acked += int64(len(d.acked))
		s.Delivered += int64(len(d.delivered))
		s.InOrder += d.inOrder
		s.OutOfOrder += d.outOfOrder
		s.Duplicates += d.duplicates
		for seq := range d.acked {
			if !d.delivered[seq] {
				s.Lost++
			}
		}
	}
	return s
}

// marks returns, for each device, its highest acknowledged seq: what the
// hub must have received for a backlog to count as drained.
func (t *tally) marks() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]int64, len(t.devs))
	for id, d := range t.devs {
		for seq := range d.acked {
			m[id] = max(m[id], seq)
		}
	}
	return m
}

// undelivered counts the acknowledged messages at or below each device's
// mark that the hub has not received yet.
func (t *tally) undelivered(marks map[string]int64) int64 {
	_, n := t.upTo(marks)
	return n
}

// upTo counts the acknowledged messages at or below each device's mark,
// and those of them the hub has not received yet.
func (t *tally) upTo(marks map[string]int64) (acked, undelivered int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, d := range t.devs {
		mark := marks[id]
		for seq := range d.acked {
			if seq <= mark {
				acked++
				if !d.delivered[seq] {
					undelivered++
				}
			}
		}
	}
	return acked, undelivered
}

// lostSeqs lists, per device, the acknowledged messages the hub never
// received, for the report of a failed run.
func (t *tally) lostSeqs() map[string][]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string][]int64{}
	for id, d := range t.devs {
		for seq := range d.acked {
			if !d.delivered[seq] {
				out[id] = append(out[id], seq)
			}
		}
		sort.Slice(out[id], func(i, j int) bool { return out[id][i] < out[id][j] })
	}
	for id, s := range out {
		if len(s) == 0 {
			delete(out, id)
		}
	}
	return out
}
