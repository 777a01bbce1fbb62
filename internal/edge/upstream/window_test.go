package upstream

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"outpost/internal/backoff"
	"outpost/internal/netfault"
	"outpost/internal/soak"
)

// A link that resets every ~64 KiB (32–96 KiB a connection) in the middle
// of a drain: every entry arrives, in order, and the drain does not slow
// down with every reset. A new connection's window starts small and
// grows with the PUBACKs, so each connection spends its bytes on entries
// the hub acks; and a connection that delivered resets the reconnect
// backoff, so the waits between connections do not grow with the
// resets.
func TestDrainWindowThroughResets(t *testing.T) {
	n := soak.N(1500, 30000)
	const resetAfter = 64 << 10
	e := newEnv(t, envOpts{})
	var mu sync.Mutex
	var waits []time.Duration
	e.link.cfg.After = func(d time.Duration) (<-chan time.Time, func() bool) {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return backoff.RealAfter(d)
	}
	e.appendN(n, "child1", "", 256)
	e.proxy.SetFaults(netfault.Faults{ResetAfter: resetAfter})

	start := time.Now()
	e.start()
	checkFor(t, soak.D(2*time.Minute, 20*time.Minute), 5*time.Millisecond, func() error {
		if q := e.queued(); q != 0 {
			return fmt.Errorf("store still holds %d of %d after %v (%d resets)", q, n, time.Since(start).Round(time.Millisecond), e.proxy.Resets())
		}
		return nil
	})
	d := time.Since(start)
	e.stop()

	// Every entry arrived; on each connection in sequence order, and the
	// first arrivals in sequence order overall (0 misordered).
	seen := map[uint64]bool{}
	var last uint64
	lastOnConn := map[int]uint64{}
	dups, misordered := 0, 0
	for _, r := range e.hub.received() {
		if r.seq <= lastOnConn[r.conn] {
			misordered++
		}
		lastOnConn[r.conn] = r.seq
		if seen[r.seq] {
			dups++
			continue
		}
		seen[r.seq] = true
		if r.seq < last {
			misordered++
		}
		last = r.seq
	}
	missing := 0
	for s := uint64(1); s <= uint64(n); s++ {
		if !seen[s] {
			missing++
		}
	}
	if missing != 0 || misordered != 0 {
		t.Errorf("%d missing, %d misordered of %d", missing, misordered, n)
	}
	resets := e.proxy.Resets()
	if resets == 0 {
		t.Fatal("no reset during the drain: the backlog is too small for the budget")
	}
	mu.Lock()
	var longest time.Duration
	for _, w := range waits {
		longest = max(longest, w)
	}
	mu.Unlock()
	// A connection reset before its first PUBACK (a slow hub, a small
	// budget) backs off one step more; two such in a row are unlikely.
	if limit := 2 * reconnectInitial; longest > limit {
		t.Errorf("a reconnect wait of %v: the backoff grew past its second step (%v)", longest, limit)
	}
	// Each reset costs at most the backoff's first step plus a connect
	// (TLS, CONNECT, store position: connectAllowance, under -race on
	// shared cores). Before this, the waits grew to the probe's 1 s and
	// each connection resent a burst of its window.
	const connectAllowance = 600 * time.Millisecond
	if bound := time.Duration(resets+1) * (reconnectInitial + connectAllowance); d > bound {
		t.Errorf("drained in %v through %d resets; want within %v (a first-step wait and a connect each)", d.Round(time.Millisecond), resets, bound)
	}
	conns := len(lastOnConn)
	t.Logf("FIGURE %d entries through a reset every ~%d KiB: %d resets, %d connections, %.0f new entries a connection, %d sent again, longest reconnect wait %v; drained in %v = %.0f msg/s",
		n, resetAfter>>10, resets, conns, float64(n)/float64(conns), dups, longest.Round(time.Millisecond), d.Round(time.Millisecond), float64(n)/d.Seconds())
}
