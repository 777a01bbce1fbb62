package outposttest

import (
	"fmt"
	"testing"
	"time"

	"outpost/internal/netfault"
	"outpost/internal/soak"
)

// drainFigure logs what a drain measured, in the form RELIABILITY.md
// quotes.
func drainFigure(t *testing.T, what string, n int, d time.Duration, dups map[string]int) {
	t.Helper()
	total := 0
	for _, v := range dups {
		total += v
	}
	t.Logf("FIGURE %s: %d messages drained in %v = %.0f msg/s; 0 missing, 0 misordered, %d duplicates",
		what, n, d.Round(time.Millisecond), float64(n)/d.Seconds(), total)
}

// fillOffline cuts the link and has each child send n messages, acked by
// the edge, so that a backlog of len(children)*n waits upstream.
func fillOffline(t *testing.T, s story, n int, children ...string) []*publisher {
	t.Helper()
	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	var pubs []*publisher
	for _, id := range children {
		p := newPublisher(s.node.Child(t, id))
		p.sendN(t, n)
		pubs = append(pubs, p)
	}
	if q := s.node.UpstreamQueue(); q != int64(n*len(children)) {
		t.Fatalf("upstream queue %d, want %d", q, n*len(children))
	}
	return pubs
}

// An edge drains a backlog through a degraded link: every acked message
// arrives, in order per device, and the drain rate is reported.
func TestDrainThroughLinkFaults(t *testing.T) {
	t.Parallel()
	perChild := soak.N(250, 10000)
	cases := []struct {
		name   string
		faults netfault.Faults
		soakN  int // per child in soak, when not perChild
	}{
		{"clean link (baseline)", netfault.Faults{}, 0},
		{"latency 50 ms + jitter 25 ms", netfault.Faults{Latency: 50 * time.Millisecond, Jitter: 25 * time.Millisecond}, 0},
		{"bandwidth 128 KiB/s", netfault.Faults{Bandwidth: 128 << 10}, 0},
		{"sliced packets of 1-64 bytes", netfault.Faults{SliceMax: 64}, 0},
		// The budget is well above a connect's own traffic (TLS, identity
		// sync, twins, presence), so each connection drains some; the
		// window starts small on each (TestDrainWindowThroughResets).
		{"resets every ~64 KiB", netfault.Faults{ResetAfter: 64 << 10}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			children := []string{"child1", "child2"}
			s := newStory(t, children)
			perChild := perChild
			if soak.Enabled() && tc.soakN > 0 {
				perChild = tc.soakN
			}
			pubs := fillOffline(t, s, perChild, children...)

			s.node.Proxy.SetFaults(tc.faults)
			start := time.Now()
			s.node.Restore()
			dups := s.mon.AwaitDelivered(t, soak.D(60*time.Second, 20*time.Minute), ackedBy(pubs...))
			d := time.Since(start)
			for id, n := range dups {
				// Children kept their connection to the edge: only the
				// edge's replays could repeat, and the hub drops them.
				if n > 0 {
					t.Errorf("%s: %d duplicates reached the hub's consumers", id, n)
				}
			}
			drainFigure(t, tc.name, perChild*len(children), d, dups)
			if tc.faults.ResetAfter > 0 {
				t.Logf("%d resets during the drain", s.node.Proxy.Resets())
				if s.node.Proxy.Resets() == 0 {
					t.Error("no reset during the drain: the backlog is too small for the budget")
				}
			}
		})
	}
}

// A link that turns into a black hole in the middle of a drain: the
// hub's port still accepts, nothing ever answers, so only the keepalive
// tells, and every reconnect hangs in its handshake until the link is
// back. Nothing acked may be lost.
func TestDrainThroughBlackHole(t *testing.T) {
	t.Parallel()
	perChild := soak.N(300, 10000)
	children := []string{"child1", "child2"}
	s := newStory(t, children)
	pubs := fillOffline(t, s, perChild, children...)
	total := perChild * len(children)

	// Slow enough that the black hole falls within the drain.
	s.node.Proxy.SetFaults(netfault.Faults{Bandwidth: 32 << 10})
	start := time.Now()
	s.node.Restore()
	CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := s.mon.Len(); n < total/10 {
			return fmt.Errorf("%d of %d at the hub", n, total)
		}
		return nil
	})
	s.node.Proxy.BlackHole()
	holeAt := time.Now()
	lost := s.node.AwaitLink(t, false, upstreamKeepAlive+5*time.Second)
	t.Logf("black hole noticed in %v (keepalive %v), %d of %d at the hub", lost, upstreamKeepAlive, s.mon.Len(), total)
	if lost > upstreamKeepAlive+2*time.Second {
		t.Errorf("black hole noticed after %v, keepalive %v", lost, upstreamKeepAlive)
	}
	// Reconnects go into the hole and hang there.
	s.node.Proxy.SetFaults(netfault.Faults{})
	hold := soak.D(time.Second, 30*time.Second)
	deadline := time.Now().Add(hold)
	CheckFor(t, hold+5*time.Second, 20*time.Millisecond, func() error {
		if s.node.LinkUp() {
			t.Fatal("link up through a black hole")
		}
		if time.Now().Before(deadline) {
			return fmt.Errorf("holding the black hole for %v", hold)
		}
		return nil
	})
	s.node.Restore()
	back := s.node.AwaitLink(t, true, 30*time.Second)
	t.Logf("link back %v after the black hole ended (%v in the hole)", back, time.Since(holeAt)-back)
	if back > linkReturnBound {
		t.Errorf("link return after a black hole noticed in %v, want under %v", back, linkReturnBound)
	}
	dups := s.mon.AwaitDelivered(t, soak.D(60*time.Second, 20*time.Minute), ackedBy(pubs...))
	drainFigure(t, "black hole mid-drain (32 KiB/s before it)", total, time.Since(start), dups)
	for id, n := range dups {
		if n > 0 {
			t.Errorf("%s: %d duplicates reached the hub's consumers", id, n)
		}
	}
}

// The link goes off and on, each cycle half off and half on, while
// children keep sending: after every cycle the backlog drains, and in
// the end every acked message is at the hub, in order.
func TestLinkOffOnCycles(t *testing.T) {
	t.Parallel()
	cycles := soak.N(6, 60)
	const cycle = 10 * time.Second
	children := []string{"child1", "child2", "child3"}
	s := newStory(t, children)
	var pubs []*publisher
	for _, id := range children {
		pubs = append(pubs, newPublisher(s.node.Child(t, id)))
	}
	f := startFleet(t, 20*time.Millisecond, pubs...)
	f.awaitMore(t, 5, 20*time.Second)

	// phase waits out one half of a cycle: the scenario's own length,
	// not a guess at how long something takes.
	phase := func(until time.Time) {
		if d := time.Until(until); d > 0 {
			<-time.After(d)
		}
	}
	next := time.Now()
	for i := range cycles {
		next = next.Add(cycle / 2)
		s.node.Cut()
		s.node.AwaitLink(t, false, upstreamKeepAlive)
		phase(next)
		backlog := s.node.UpstreamQueue()

		next = next.Add(cycle / 2)
		s.node.Restore()
		up := s.node.AwaitLink(t, true, 30*time.Second)
		if up > linkReturnBound {
			t.Errorf("cycle %d: link return noticed in %v, want under %v", i+1, up, linkReturnBound)
		}
		// The children keep sending: drained means the queue is back to
		// what arrives between two drain passes.
		start := time.Now()
		CheckFor(t, cycle/2, 10*time.Millisecond, func() error {
			if q := s.node.UpstreamQueue(); q > int64(len(children))*5 {
				return fmt.Errorf("cycle %d: %d still queued", i+1, q)
			}
			return nil
		})
		d := time.Since(start)
		t.Logf("cycle %d: backlog %d drained in %v (link back in %v): %.0f msg/s",
			i+1, backlog, d.Round(time.Millisecond), up.Round(time.Millisecond), float64(backlog)/max(d.Seconds(), 0.001))
		phase(next)
	}
	f.stop()
	acked := ackedBy(pubs...)
	dups := s.mon.AwaitDelivered(t, 60*time.Second, acked)
	n := 0
	for _, p := range pubs {
		n += len(acked[p.id])
		if fails := p.failures(); len(fails) > 0 {
			t.Errorf("%s: %d sends got no PUBACK from the edge, first: %v", p.id, len(fails), fails[0])
		}
		if dups[p.id] > 0 {
			t.Errorf("%s: %d duplicates reached the hub's consumers", p.id, dups[p.id])
		}
	}
	t.Logf("FIGURE %d off/on cycles of %v: %d messages acked, 0 missing, 0 misordered, %d offline periods",
		cycles, cycle, n, s.node.Edge().Status().Link.OfflinePeriods)
}
