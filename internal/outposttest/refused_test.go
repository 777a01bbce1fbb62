package outposttest

import (
	"fmt"
	"testing"
	"time"

	"outpost/internal/edgeproto"
)

// A message the hub refuses for good must not block its queue (IoT Edge
// #5364): a child removed from the edge's scope at the hub while the
// edge was offline, with its messages queued ahead of good ones. The hub
// used to drop the link over the first of them, and the edge sent it
// again after every reconnect. Now the good ones all arrive, and the bad
// ones are set aside, counted with their reason in /status.
func TestRefusedForGoodDoesNotBlockTheQueue(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"good", "gone"})
	good := newPublisher(s.node.Child(t, "good"))
	gone := newPublisher(s.node.Child(t, "gone"))
	good.sendN(t, 5)
	gone.sendN(t, 5)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(good, gone))

	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	gone.sendN(t, 3) // first in the queue
	good.sendN(t, 20)
	gone.sendN(t, 2) // and among the good ones
	good.sendN(t, 5)
	s.env.RemoveChildren("edge1", "gone")
	offlinePeriods := s.node.Edge().Status().Link.OfflinePeriods

	s.node.Restore()
	dups := s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(good))
	if dups["good"] != 0 {
		t.Errorf("%d duplicates of good", dups["good"])
	}
	setAside := func() error {
		st, err := s.node.Status()
		if err != nil {
			return err
		}
		sa := st.SetAside
		if sa.Total != 5 || sa.ByReason[edgeproto.RefusedNotInScope] != 5 || len(sa.Recent) != 5 {
			return fmt.Errorf("set aside: %+v, want 5 not in scope", sa)
		}
		for i, r := range sa.Recent {
			if r.DeviceID != "gone" || r.Reason != edgeproto.RefusedNotInScope || r.Message == "" || r.Endpoint == "" {
				return fmt.Errorf("set-aside entry %d: %+v", i, r)
			}
		}
		if q := st.Queues["$upstream"].Length; q != 0 {
			return fmt.Errorf("upstream queue holds %d", q)
		}
		return nil
	}
	CheckFor(t, 10*time.Second, 20*time.Millisecond, setAside)
	// Nothing of the removed child reached the hub after its removal,
	// and the link was never dropped over it.
	if seqs, _ := s.mon.Seqs("gone"); len(seqs) != 5 {
		t.Errorf("hub holds %d messages of the removed child, want the 5 sent before", len(seqs))
	}
	if st := s.node.Edge().Status(); st.Link.OfflinePeriods != offlinePeriods || !st.Link.Connected {
		t.Errorf("link dropped during the drain: %d offline periods, had %d", st.Link.OfflinePeriods, offlinePeriods)
	}

	// The counts are kept in the store: a restart shows the same.
	s.node.Restart(t)
	s.node.AwaitLink(t, true, 30*time.Second)
	if err := setAside(); err != nil {
		t.Errorf("after a restart: %v", err)
	}
}
