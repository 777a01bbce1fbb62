package outposttest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/clocktest"
	"outpost/internal/edge"
)

// TestTTLClockJumpsThroughEdge: the store's TTL test (edge/store
// TestTTLClockJumps) end to end, through the edge's drain to the hub.
// The link is down; a child sends with the default 2 h TTL, the edge's
// clock is advanced 2 h + 1 s, set back 3 h (a clock that lost its
// time) and corrected again, the child sending at each step. After the
// link is back the hub must hold every live message in order (0 live
// lost) and none of the expired ones (0 expired forwarded).
func TestTTLClockJumpsThroughEdge(t *testing.T) {
	t.Parallel()
	clock := clocktest.Real() // not stopped: the edge's link times its waits by this clock
	s := newStory(t, []string{"child1"}, WithClock(clock.Now))
	if ttl := s.node.Edge().Status().TTLSeconds; ttl != 7200 {
		t.Fatalf("edge TTL %d s, want the default 2 h", ttl)
	}
	// The child's clock follows the edge's, as two devices set by the
	// same NTP server would, so that its tokens stay valid by it.
	cfg := s.node.ChildConfig("child1")
	cfg.Now = clock.Now
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	p := newPublisher(c)
	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)

	queued := func(step string, length int, expired uint64) {
		t.Helper()
		CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
			st := s.node.Edge().Status()
			if n := st.Queues[edge.UpstreamEndpoint].Length; n != int64(length) || st.Expired != expired {
				return fmt.Errorf("%s: %d queued, %d expired; want %d, %d", step, n, st.Expired, length, expired)
			}
			return nil
		})
	}
	p.sendN(t, 10) // seq 1..10: expire at t0 + 2 h
	clock.Advance(time.Hour)
	p.sendN(t, 10)                         // 11..20: expire at t0 + 3 h
	clock.Advance(time.Hour + time.Second) // t0 + 2 h + 1 s
	queued("2 h + 1 s", 10, 10)
	clock.Advance(-3 * time.Hour) // set back: t0 - 59 min 59 s
	p.sendN(t, 10)                // 21..30
	queued("set back 3 h", 20, 10)
	clock.Advance(3 * time.Hour) // corrected: t0 + 2 h + 1 s
	p.sendN(t, 10)               // 31..40
	queued("corrected", 30, 10)

	s.node.Restore()
	acked := p.ackedSeqs()
	var live []int
	for _, n := range acked {
		if n > 10 {
			live = append(live, n)
		}
	}
	dups := s.mon.AwaitDelivered(t, 30*time.Second, map[string][]int{"child1": live})
	seqs, err := s.mon.Seqs("child1")
	if err != nil {
		t.Fatal(err)
	}
	var forwarded int
	for _, n := range seqs {
		if n <= 10 {
			forwarded++
		}
	}
	if forwarded > 0 {
		t.Errorf("%d expired messages reached the hub", forwarded)
	}
	if st := s.node.Edge().Status(); st.Expired != 10 {
		t.Errorf("%d expired at the edge, want 10: live ones expired early", st.Expired)
	}
	t.Logf("%d acked, %d live delivered in order, %d expired forwarded, %d duplicates", len(acked), len(live), forwarded, dups["child1"])
}
