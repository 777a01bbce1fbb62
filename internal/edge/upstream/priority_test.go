package upstream

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
)

// checkPerEndpoint checks that got, de-duplicated by seq, holds every
// sequence of each endpoint in want exactly in that endpoint's stored
// order, and returns the position of each sequence's first arrival.
func checkPerEndpoint(got []received, want map[string][]uint64) (map[uint64]int, error) {
	endpointOf := map[uint64]string{}
	for ep, seqs := range want {
		for _, s := range seqs {
			endpointOf[s] = ep
		}
	}
	pos := map[uint64]int{}
	arrived := map[string][]uint64{}
	for i, r := range got {
		if r.edgeID != testEdge {
			return nil, fmt.Errorf("seq %d: %s = %q", r.seq, edgeproto.BagEdgeID, r.edgeID)
		}
		ep, ok := endpointOf[r.seq]
		if !ok {
			return nil, fmt.Errorf("seq %d was never stored", r.seq)
		}
		if _, seen := pos[r.seq]; seen {
			continue
		}
		pos[r.seq] = i
		arrived[ep] = append(arrived[ep], r.seq)
	}
	for ep, seqs := range want {
		if !slices.Equal(arrived[ep], seqs) {
			return nil, fmt.Errorf("%s: %d distinct messages arrived, want %d, in stored order", ep, len(arrived[ep]), len(seqs))
		}
	}
	return pos, nil
}

// TestPriorityDrain drains a low-priority backlog while high-priority
// messages arrive: the high-priority ones must overtake it.
func TestPriorityDrain(t *testing.T) {
	const (
		low     = Endpoint + "/p9"
		backlog = 5000
		urgent  = 100
	)
	tests := []struct {
		name string
		// when the urgent messages are stored
		when string // "before start", "during drain", "while offline"
		// listLate lists Endpoint only once the urgent messages are
		// stored, followed by a Kick, as the edge does after a route change.
		listLate bool
	}{
		{"backlog and urgent before connect", "before start", false},
		{"urgent during drain", "during drain", false},
		{"urgent endpoint listed on kick", "during drain", true},
		{"urgent while offline", "while offline", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var late atomic.Bool
			late.Store(!tc.listLate)
			e := newEnv(t, envOpts{keepAlive: 2 * time.Second, endpoints: func() []string {
				if late.Load() {
					return []string{Endpoint, low}
				}
				return []string{low}
			}})
			if err := e.store.SetEndpoint(Endpoint, store.EndpointConfig{Priority: 0}); err != nil {
				t.Fatal(err)
			}
			if err := e.store.SetEndpoint(low, store.EndpointConfig{Priority: 9}); err != nil {
				t.Fatal(err)
			}
			want := map[string][]uint64{low: e.appendTo(low, backlog, "child1", "", 256)}
			appendedAt := 0 // the hub's count when the urgent ones are stored
			addUrgent := func() {
				appendedAt = e.hub.count()
				want[Endpoint] = e.appendTo(Endpoint, urgent, "child2", "", 64)
				late.Store(true)
				e.link.Kick()
			}
			if tc.when == "before start" {
				addUrgent()
			}
			e.start()
			switch tc.when {
			case "during drain":
				checkFor(t, 30*time.Second, time.Millisecond, func() error {
					if c := e.hub.count(); c < 200 {
						return fmt.Errorf("hub has %d", c)
					}
					return nil
				})
				addUrgent()
			case "while offline":
				checkFor(t, 30*time.Second, time.Millisecond, func() error {
					if c := e.hub.count(); c < 1000 {
						return fmt.Errorf("hub has %d", c)
					}
					return nil
				})
				e.proxy.Cut()
				checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
					if e.link.Connected() {
						return errors.New("link still up after the cut")
					}
					return nil
				})
				addUrgent()
				if err := e.proxy.Restore(); err != nil {
					t.Fatal(err)
				}
			}
			checkFor(t, 60*time.Second, 10*time.Millisecond, func() error {
				st := e.store.Stats()
				if n := st[Endpoint].Len + st[low].Len; n != 0 {
					return fmt.Errorf("store still holds %d", n)
				}
				return nil
			})
			got := e.hub.received()
			pos, err := checkPerEndpoint(got, want)
			if err != nil {
				t.Fatal(err)
			}
			lastUrgent := pos[want[Endpoint][urgent-1]]
			lastBacklog := pos[want[low][backlog-1]]
			if lastUrgent > lastBacklog {
				t.Fatalf("last urgent message arrived at %d, after the backlog's last at %d", lastUrgent, lastBacklog)
			}
			first := pos[want[Endpoint][0]]
			switch tc.when {
			case "before start":
				// Both queues were full at connect: the urgent ones first.
				if lastUrgent != urgent-1 {
					t.Fatalf("urgent messages arrived at %d..%d, want 0..%d", first, lastUrgent, urgent-1)
				}
			case "during drain":
				t.Logf("%d backlog messages arrived after the urgent ones were stored and before the first of them; backlog ended at %d",
					first-appendedAt, lastBacklog)
			case "while offline":
				// Rewound and listed again at reconnect: the urgent ones
				// go before anything of the backlog, replays included.
				var second []received
				for _, r := range got {
					if r.conn == 2 {
						second = append(second, r)
					}
				}
				if len(second) < urgent {
					t.Fatalf("%d messages on the second connection", len(second))
				}
				for i, r := range second[:urgent] {
					if r.seq != want[Endpoint][i] {
						t.Fatalf("second connection's message %d is seq %d (%s), want urgent seq %d", i, r.seq, r.device, want[Endpoint][i])
					}
				}
			}
			if n := e.obs.n.Load(); n < backlog+urgent {
				t.Fatalf("observer saw %d forwarded messages, want at least %d", n, backlog+urgent)
			}
		})
	}
}
