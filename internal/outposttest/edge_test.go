package outposttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/clocktest"
	"outpost/internal/edge"
	"outpost/internal/message"
	"outpost/internal/service"
)

// Generous bounds for what DESIGN.md promises: link return noticed
// within about a second; the test allows for a loaded machine.
const (
	linkReturnBound = 4 * time.Second
	// upstreamKeepAlive is the keepalive StartEdge gives the link.
	upstreamKeepAlive = UpstreamKeepAlive
)

func TestCutAndRestore(t *testing.T) {
	t.Parallel()
	children := []string{"child1", "child2", "child3"}
	s := newStory(t, children)

	var pubs []*publisher
	for _, id := range children {
		pubs = append(pubs, newPublisher(s.node.Child(t, id)))
	}
	f := startFleet(t, 5*time.Millisecond, pubs...)
	f.awaitMore(t, 10, 20*time.Second)

	s.node.Cut()
	lossAfter := s.node.AwaitLink(t, false, upstreamKeepAlive)
	t.Logf("link loss (reset) noticed in %v", lossAfter)
	f.awaitMore(t, 20, 20*time.Second)
	if q := s.node.UpstreamQueue(); q == 0 {
		t.Error("nothing queued upstream while the link was cut")
	}

	s.node.Restore()
	returnAfter := s.node.AwaitLink(t, true, 30*time.Second)
	t.Logf("link return noticed in %v", returnAfter)
	if returnAfter > linkReturnBound {
		t.Errorf("link return noticed in %v, want under %v", returnAfter, linkReturnBound)
	}
	f.awaitMore(t, 10, 20*time.Second)
	f.stop()

	for _, p := range pubs {
		if fails := p.failures(); len(fails) > 0 {
			t.Errorf("%s: %d sends got no PUBACK from the edge, first: %v", p.id, len(fails), fails[0])
		}
	}
	acked := ackedBy(pubs...)
	dups := s.mon.AwaitDelivered(t, 60*time.Second, acked)
	for id, n := range dups {
		if n > 0 {
			t.Errorf("%s: %d duplicates reached the hub's consumers; the hub should drop the edge's replays", id, n)
		}
		t.Logf("%s: %d acknowledged, all at the hub in order", id, len(acked[id]))
	}
	CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if q := s.node.UpstreamQueue(); q != 0 {
			return fmt.Errorf("upstream queue holds %d after the drain", q)
		}
		return nil
	})
}

func TestRestartWhileOffline(t *testing.T) {
	t.Parallel()
	children := []string{"child1", "child2"}
	s := newStory(t, children)
	var pubs []*publisher
	for _, id := range children {
		pubs = append(pubs, newPublisher(s.node.Child(t, id)))
	}
	for _, p := range pubs {
		p.sendN(t, 10)
	}

	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	for _, p := range pubs {
		p.sendN(t, 10)
	}

	s.node.Restart(t)
	// The children reconnect by themselves and authenticate from the
	// edge's cache: the hub is unreachable.
	for _, p := range pubs {
		p.sendN(t, 10)
	}
	if s.node.LinkUp() {
		t.Fatal("link up while cut")
	}
	for _, p := range pubs {
		if !p.c.Connected() {
			t.Errorf("%s not connected to the restarted edge", p.id)
		}
	}

	s.node.Restore()
	s.node.AwaitLink(t, true, 30*time.Second)
	dups := s.mon.AwaitDelivered(t, 60*time.Second, ackedBy(pubs...))
	for _, p := range pubs {
		t.Logf("%s: %d acknowledged, %d sends without PUBACK, %d duplicates at the hub",
			p.id, p.ackedLen(), len(p.failures()), dups[p.id])
		// Only a message sent again after a lost PUBACK may repeat.
		if dups[p.id] > len(p.failures()) {
			t.Errorf("%s: %d duplicates, but only %d messages were sent again", p.id, dups[p.id], len(p.failures()))
		}
	}
}

func TestTTLExpiry(t *testing.T) {
	t.Parallel()
	clock := clocktest.Real() // not stopped: the edge's link times its waits by this clock
	s := newStory(t, []string{"child1"}, WithClock(clock.Now))

	const ttl = 60
	patch := service.NewTwinPatch(nil, map[string]any{
		"storeAndForwardConfiguration": map[string]any{"timeToLiveSecs": ttl},
	})
	if _, err := s.env.Service().UpdateTwin(ctxFor(t), "edge1", "$edgeHub", patch, "*"); err != nil {
		t.Fatalf("set the edge's TTL: %v", err)
	}
	CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := s.node.Edge().Status().TTLSeconds; got != ttl {
			return fmt.Errorf("edge TTL %d s, want %d s", got, ttl)
		}
		return nil
	})

	p := newPublisher(s.node.Child(t, "child1"))
	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	p.sendN(t, 10) // seq 1..10: will expire
	clock.Advance(ttl*time.Second + time.Second)
	p.sendN(t, 10) // seq 11..20: live

	CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		st := s.node.Edge().Status()
		if st.Expired != 10 {
			return fmt.Errorf("%d expired, want 10 (queue %d)", st.Expired, st.Queues[edge.UpstreamEndpoint].Length)
		}
		return nil
	})

	s.node.Restore()
	live := p.ackedSeqs()[10:]
	s.mon.AwaitDelivered(t, 30*time.Second, map[string][]int{"child1": live})
	// The drain is in stored order: once the live messages are at the
	// hub, an expired one that was forwarded would be there too.
	seqs, err := s.mon.Seqs("child1")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range seqs {
		if n <= 10 {
			t.Errorf("expired message seq %d reached the hub", n)
		}
	}
}

func TestChildAddedWhileOffline(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1"})
	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)

	s.env.CreateDevice("late")
	s.env.AddChildren("edge1", "late")
	if _, err := s.node.ConnectChild(t, "late"); err == nil {
		t.Fatal("a child the edge never synced connected while offline")
	}

	s.node.Restore()
	var c *client.Client
	CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		var err error
		c, err = s.node.ConnectChild(t, "late")
		return err
	})
	p := newPublisher(c)
	p.sendN(t, 3)
	s.mon.AwaitDelivered(t, 20*time.Second, ackedBy(p))
}

func TestChildRemovedAtHub(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"keep", "gone"})
	keep := s.node.Child(t, "keep")
	var mu sync.Mutex
	var downs []error
	gone := s.node.Child(t, "gone", func(c *client.Client) {
		c.OnConnectionChange(func(up bool, err error) {
			if !up {
				mu.Lock()
				downs = append(downs, err)
				mu.Unlock()
			}
		})
	})

	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	s.env.RemoveChildren("edge1", "gone")
	// Offline, the edge cannot know: the cache still serves the child.
	if !gone.Connected() {
		t.Fatal("child dropped before the edge could learn of its removal")
	}

	s.node.Restore()
	CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(downs) == 0 || gone.Connected() {
			return errors.New("removed child still connected")
		}
		return nil
	})
	if _, err := s.node.ConnectChild(t, "gone"); err == nil {
		t.Fatal("removed child could connect again")
	}
	if !keep.Connected() {
		t.Error("the child still in scope lost its connection")
	}
	p := newPublisher(keep)
	p.sendN(t, 3)
	s.mon.AwaitDelivered(t, 20*time.Second, ackedBy(p))
}

func TestDiskQuota(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1"}, MaxStorageBytes(16<<10))
	c := s.node.Child(t, "child1")
	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)

	body := make([]byte, 1000)
	var acked []int
	var refusal error
	for seq := 1; seq <= 100 && refusal == nil; seq++ {
		msg := seqMessage(seq)
		msg.Body = body
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.Send(ctx, msg); err != nil {
			refusal = err
		} else {
			acked = append(acked, seq)
		}
		cancel()
	}
	if refusal == nil {
		t.Fatal("100 KB stored under a 16 KiB quota")
	}
	if len(acked) == 0 {
		t.Fatal("nothing accepted under the quota")
	}
	if !errors.Is(refusal, client.ErrConnectionLost) {
		t.Errorf("refused send: %v; want no PUBACK and a dropped connection (ErrConnectionLost)", refusal)
	}
	t.Logf("%d messages of 1000 B acknowledged under a 16 KiB quota; then: %v", len(acked), refusal)
	if st := s.node.Edge().Status(); st.QuotaRefusals == 0 {
		t.Error("quota refusal not counted in /status")
	}

	s.node.Restore()
	s.mon.AwaitDelivered(t, 30*time.Second, map[string][]int{"child1": acked})
	CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if q := s.node.UpstreamQueue(); q != 0 {
			return fmt.Errorf("upstream queue holds %d", q)
		}
		return nil
	})
	// Intake resumes: the client reconnected by itself.
	p := newPublisher(c)
	p.next = acked[len(acked)-1] + 1
	p.sendN(t, 5)
	s.mon.AwaitDelivered(t, 30*time.Second, map[string][]int{"child1": append(acked, p.ackedSeqs()...)})
}

func TestNeverSyncedEdgeRefusesToServe(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	env.CreateEdge("edge1")
	env.CreateDevice("child1")
	env.AddChildren("edge1", "child1")

	node := env.StartEdge(t, "edge1", StartOffline())
	CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(node.Logs.String(), "never synced") {
			return errors.New("no log saying the edge never synced")
		}
		return nil
	})
	if node.Ready() {
		t.Fatal("a never-synced edge serves clients")
	}
	if st := node.Edge().Status(); st.Synced {
		t.Fatal("status says synced")
	}
	err := node.Stop()
	if !errors.Is(err, edge.ErrNeverSynced) {
		t.Fatalf("Run: %v, want ErrNeverSynced", err)
	}
	t.Logf("edge stopped with: %v", err)

	// Once the link comes up it syncs, and from then on it serves.
	node2 := env.StartEdge(t, "edge1", StartOffline())
	if node2.Ready() {
		t.Fatal("serving before the first sync")
	}
	node2.Restore()
	node2.AwaitReady(t, 30*time.Second)
	node2.Child(t, "child1")
}

func TestLinkLossAndReturnDetection(t *testing.T) {
	t.Parallel()
	s := newStory(t, nil)

	s.node.Cut()
	t.Logf("reset link: loss noticed in %v", s.node.AwaitLink(t, false, upstreamKeepAlive))
	s.node.Restore()
	d := s.node.AwaitLink(t, true, 30*time.Second)
	t.Logf("link return noticed in %v", d)
	if d > linkReturnBound {
		t.Errorf("link return noticed in %v, want under %v", d, linkReturnBound)
	}

	// A silent link: only the keepalive can tell.
	s.node.Stall()
	start := time.Now()
	d = s.node.AwaitLink(t, false, upstreamKeepAlive+10*time.Second)
	t.Logf("silent link: loss noticed in %v (keepalive %v)", d, upstreamKeepAlive)
	if d > upstreamKeepAlive+2*time.Second {
		t.Errorf("silent link noticed after %v, keepalive %v", time.Since(start), upstreamKeepAlive)
	}
	s.node.Restore()
	d = s.node.AwaitLink(t, true, 30*time.Second)
	t.Logf("link return after a stall noticed in %v", d)
	if d > linkReturnBound {
		t.Errorf("link return noticed in %v, want under %v", d, linkReturnBound)
	}
}

func TestCloudToChildThroughEdge(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1"})
	c2d := make(chan *message.Message, 1)
	s.node.Child(t, "child1", func(c *client.Client) {
		c.OnC2D(func(m *message.Message) { c2d <- m })
		c.OnMethod("reboot", func(ctx context.Context, name string, payload []byte) (int, []byte) {
			return 200, append([]byte(`{"echo":`), append(payload, '}')...)
		})
	})

	ctx := ctxFor(t)
	if _, err := s.env.Service().SendC2D(ctx, "child1", service.C2DMessage{
		Body: []byte("open the valve"), Properties: map[string]string{"valve": "3"},
	}); err != nil {
		t.Fatalf("send c2d: %v", err)
	}
	select {
	case m := <-c2d:
		if string(m.Body) != "open the valve" || m.Properties["valve"] != "3" {
			t.Errorf("c2d arrived as %q %v", m.Body, m.Properties)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("c2d did not reach the child through the edge")
	}

	res, err := s.env.Service().InvokeMethod(ctx, "child1", "", service.MethodRequest{
		MethodName:               "reboot",
		Payload:                  json.RawMessage(`{"delay":1}`),
		ResponseTimeoutInSeconds: 10,
		ConnectTimeoutInSeconds:  10,
	})
	if err != nil {
		t.Fatalf("invoke method: %v", err)
	}
	if res.Status != 200 || string(res.Payload) != `{"echo":{"delay":1}}` {
		t.Errorf("method answered %d %s", res.Status, res.Payload)
	}
}

func TestStatusEndpoint(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1"})
	p := newPublisher(s.node.Child(t, "child1"))

	st, err := s.node.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Synced || !st.Link.Connected || st.DeviceID != "edge1" {
		t.Errorf("online status: synced %v, link %+v, device %q", st.Synced, st.Link, st.DeviceID)
	}
	if !slices.Contains(st.ConnectedClients, "child1") {
		t.Errorf("connected clients %v, want child1", st.ConnectedClients)
	}

	s.node.Cut()
	s.node.AwaitLink(t, false, upstreamKeepAlive)
	p.sendN(t, 5)
	if st, err = s.node.Status(); err != nil {
		t.Fatal(err)
	}
	if st.Link.Connected || st.Link.OfflinePeriods < 1 || st.Link.LastError == "" {
		t.Errorf("offline link status: %+v", st.Link)
	}
	if q := st.Queues[edge.UpstreamEndpoint].Length; q != 5 {
		t.Errorf("upstream queue length %d, want 5", q)
	}

	s.node.Restore()
	CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		st, err := s.node.Status()
		if err != nil {
			return err
		}
		if !st.Link.Connected || st.Queues[edge.UpstreamEndpoint].Length != 0 {
			return fmt.Errorf("link connected %v, upstream queue %d", st.Link.Connected, st.Queues[edge.UpstreamEndpoint].Length)
		}
		return nil
	})
}
