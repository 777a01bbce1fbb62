package upstream

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
	"outpost/internal/message"
)

// The drain sets aside what the hub refuses for good, and only that: a
// message the hub dropped the connection over is sent again until it is
// delivered, and nothing behind either waits for good.
func TestDrainSetsAsideRefusedForGood(t *testing.T) {
	var mu sync.Mutex
	var aside []SetAside
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second, setAside: func(sa SetAside) {
		mu.Lock()
		aside = append(aside, sa)
		mu.Unlock()
	}})
	drops := 0
	e.hub.mu.Lock()
	e.hub.judge = func(device string) (string, bool) {
		switch device {
		case "bad":
			return edgeproto.RefusedNotInScope, false
		case "flaky":
			e.hub.mu.Lock()
			defer e.hub.mu.Unlock()
			drops++
			return "", drops <= 2 // a failure that mends
		}
		return "", false
	}
	e.hub.mu.Unlock()
	e.appendN(3, "good", "", 10)
	bad := e.appendTo(Endpoint, 2, "bad", "", 10)
	e.appendN(3, "good", "", 10)
	e.appendN(1, "flaky", "", 10)
	// Within the store's limit, but escaping its property triples it in
	// the topic: over the hub's packet limit.
	huge, err := e.store.AppendRecords(context.Background(), []store.Record{{Endpoint: Endpoint, Msg: &message.Message{
		DeviceID: "good", Body: make([]byte, 100<<10),
		Properties: map[string]string{"p": strings.Repeat(" ", 100<<10)},
		System:     message.System{MessageID: "huge"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	e.appendN(2, "good", "", 10)
	e.start()

	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if q := e.queued(); q != 0 {
			return fmt.Errorf("%d still queued", q)
		}
		return nil
	})
	// Each drop by the hub sends what was in flight again (at-least-once;
	// the real hub drops those replays by their key): compare each
	// message once, in the order first received.
	var devices []string
	seen := map[uint64]bool{}
	for _, r := range e.hub.received() {
		if !seen[r.seq] {
			seen[r.seq] = true
			devices = append(devices, r.device)
		}
	}
	if want := []string{"good", "good", "good", "good", "good", "good", "flaky", "good", "good"}; !slices.Equal(devices, want) {
		t.Errorf("hub got %v, want %v", devices, want)
	}
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, sa := range aside {
		got = append(got, fmt.Sprintf("%s/%d/%s", sa.DeviceID, sa.Seq, sa.Reason))
		if sa.Endpoint != Endpoint || sa.MessageID == "" || sa.Message == "" {
			t.Errorf("set aside without its details: %+v", sa)
		}
	}
	want := []string{
		fmt.Sprintf("bad/%d/%s", bad[0], edgeproto.RefusedNotInScope),
		fmt.Sprintf("bad/%d/%s", bad[1], edgeproto.RefusedNotInScope),
		fmt.Sprintf("good/%d/%s", huge[0], edgeproto.RefusedTooLarge),
	}
	if !slices.Equal(got, want) {
		t.Errorf("set aside %v, want %v (each once; never the flaky one)", got, want)
	}
	if n := e.obs.n.Load(); n < 9 {
		t.Errorf("%d observed as forwarded, want at least 9 (replays count again)", n)
	}
}
