package hub

import (
	"context"
	"fmt"
	"testing"
	"time"

	"outpost/internal/clocktest"
	"outpost/internal/identity"
)

func newClockHub(t *testing.T, dir string) (*Hub, *clocktest.Clock) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	clk := clocktest.At(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	h, err := New(Config{DataDir: dir, HostName: "hub.test", Now: clk.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h, clk
}

// presenceWrites is how many writes the presence bucket has stored: the
// revision of its latest entry, key being the only one written. A watcher
// cannot count them: the bucket keeps one value per key, and a value
// overwritten before the watcher is sent it is skipped.
func presenceWrites(t *testing.T, h *Hub, key string) uint64 {
	t.Helper()
	_, rev, err := h.pres.get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func TestPresenceKeepsETag(t *testing.T) {
	h, clk := newClockHub(t, "")
	ctx := context.Background()
	d, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev1"}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if d.ConnectionState != identity.Disconnected || !d.ConnectionStateUpdatedTime.IsZero() {
		t.Fatalf("new device: %s at %v", d.ConnectionState, d.ConnectionStateUpdatedTime)
	}
	clk.Advance(time.Second)
	connectedAt := clk.Now()
	if err := h.SetConnected(ctx, "dev1", "", "s1"); err != nil {
		t.Fatal(err)
	}
	got, _ := h.GetDevice("dev1")
	if got.ConnectionState != identity.Connected || !got.ConnectionStateUpdatedTime.Equal(connectedAt) || !got.LastActivityTime.Equal(connectedAt) {
		t.Fatalf("after connect: %s since %v, active %v", got.ConnectionState, got.ConnectionStateUpdatedTime, got.LastActivityTime)
	}
	if got.ETag != d.ETag {
		t.Fatalf("etag changed by presence: %s -> %s", d.ETag, got.ETag)
	}
	tw, err := h.GetTwin("dev1", "")
	if err != nil || tw.ConnectionState != identity.Connected || tw.DeviceETag != d.ETag {
		t.Fatalf("twin: %+v, %v", tw, err)
	}

	// The operator's conditional update with the etag read before the
	// connection still applies, and keeps the connection state.
	upd := d
	upd.Status = identity.StatusDisabled
	out, err := h.CreateOrUpdateDevice(ctx, upd, d.ETag, false)
	if err != nil {
		t.Fatalf("update with pre-connection etag: %v", err)
	}
	if out.ConnectionState != identity.Connected {
		t.Fatalf("update answered state %s", out.ConnectionState)
	}

	clk.Advance(time.Second)
	if err := h.SetDisconnected(ctx, "dev1", "", "s1"); err != nil {
		t.Fatal(err)
	}
	got, _ = h.GetDevice("dev1")
	if got.ConnectionState != identity.Disconnected || !got.ConnectionStateUpdatedTime.Equal(clk.Now()) {
		t.Fatalf("after disconnect: %s since %v", got.ConnectionState, got.ConnectionStateUpdatedTime)
	}
	if got.ETag != out.ETag {
		t.Fatalf("etag changed by disconnect: %s -> %s", out.ETag, got.ETag)
	}
}

func TestPresenceTakeover(t *testing.T) {
	h, _ := newClockHub(t, "")
	ctx := context.Background()
	if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev1"}, "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := h.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "dev1", ModuleID: "m1"}, ""); err != nil {
		t.Fatal(err)
	}
	for _, mid := range []string{"", "m1"} {
		t.Run("module="+mid, func(t *testing.T) {
			// The old session's end is reported after the new one began,
			// as the gateway does on takeover (or another hub does).
			for _, step := range []func() error{
				func() error { return h.SetConnected(ctx, "dev1", mid, "old") },
				func() error { return h.SetConnected(ctx, "dev1", mid, "new") },
				func() error { return h.SetDisconnected(ctx, "dev1", mid, "old") },
			} {
				if err := step(); err != nil {
					t.Fatal(err)
				}
			}
			if s := connState(t, h, "dev1", mid); s != identity.Connected {
				t.Fatalf("after takeover: %s", s)
			}
			if err := h.SetDisconnected(ctx, "dev1", mid, "new"); err != nil {
				t.Fatal(err)
			}
			if s := connState(t, h, "dev1", mid); s != identity.Disconnected {
				t.Fatalf("after the new session ended: %s", s)
			}
		})
	}
}

func connState(t *testing.T, h *Hub, d, m string) string {
	t.Helper()
	if m == "" {
		dev, err := h.GetDevice(d)
		if err != nil {
			t.Fatal(err)
		}
		return dev.ConnectionState
	}
	mod, err := h.GetModule(d, m)
	if err != nil {
		t.Fatal(err)
	}
	return mod.ConnectionState
}

func TestPresenceQuery(t *testing.T) {
	h, _ := newClockHub(t, "")
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: id}, "", false); err != nil {
			t.Fatal(err)
		}
		if _, err := h.CreateOrUpdateModule(ctx, identity.Module{DeviceID: id, ModuleID: "m"}, ""); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(q string) string {
		t.Helper()
		page, err := h.Query(q, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		s := ""
		for _, it := range page.Items {
			s += fmt.Sprint(it["deviceId"]) + ";"
		}
		return s
	}
	const q = "SELECT * FROM devices WHERE connectionState = 'Connected'"
	const qm = "SELECT * FROM devices.modules WHERE connectionState = 'Connected'"
	if got := ids(q); got != "" {
		t.Fatalf("before any connection: %q", got)
	}
	if err := h.SetConnected(ctx, "b", "", "s"); err != nil {
		t.Fatal(err)
	}
	if err := h.SetConnected(ctx, "c", "m", "s"); err != nil {
		t.Fatal(err)
	}
	// The same query again: its cached documents must not hide the change.
	if got := ids(q); got != "b;" {
		t.Fatalf("devices connected: %q", got)
	}
	if got := ids(qm); got != "c;" {
		t.Fatalf("modules connected: %q", got)
	}
	if got := ids("SELECT deviceId FROM devices WHERE connectionState = 'Disconnected'"); got != "a;c;" {
		t.Fatalf("devices disconnected: %q", got)
	}
	if err := h.SetDisconnected(ctx, "b", "", "s"); err != nil {
		t.Fatal(err)
	}
	if got := ids(q); got != "" {
		t.Fatalf("after disconnect: %q", got)
	}
}

func TestActivityThrottled(t *testing.T) {
	h, clk := newClockHub(t, "")
	ctx := context.Background()
	if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev1"}, "", false); err != nil {
		t.Fatal(err)
	}
	start := clk.Now()
	// 100 messages within one resolution interval: one write.
	for range 100 {
		if err := h.TouchActivity(ctx, "dev1", ""); err != nil {
			t.Fatal(err)
		}
		clk.Advance(DefaultActivityResolution / 200)
	}
	d, _ := h.GetDevice("dev1")
	if !d.LastActivityTime.Equal(start) || d.ConnectionState != identity.Disconnected {
		t.Fatalf("after first burst: active %v, state %s", d.LastActivityTime, d.ConnectionState)
	}
	if h.ActivityDue("dev1", "") {
		t.Fatal("activity due within the resolution")
	}
	clk.Advance(DefaultActivityResolution)
	if !h.ActivityDue("dev1", "") {
		t.Fatal("activity not due after the resolution")
	}
	for range 100 {
		if err := h.TouchActivity(ctx, "dev1", ""); err != nil {
			t.Fatal(err)
		}
	}
	d, _ = h.GetDevice("dev1")
	if !d.LastActivityTime.Equal(clk.Now()) {
		t.Fatalf("activity %v; want %v", d.LastActivityTime, clk.Now())
	}
	if n := presenceWrites(t, h, deviceKey("dev1")); n != 2 {
		t.Fatalf("%d presence writes for 200 touches; want 2", n)
	}
}

func TestPresenceOfDeadHub(t *testing.T) {
	h, _ := newClockHub(t, "")
	ctx := context.Background()
	for _, id := range []string{"orphan", "mine"} {
		if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: id}, "", false); err != nil {
			t.Fatal(err)
		}
	}
	// A hub instance that crashed left "orphan" Connected; it never beat.
	err := h.changePresence(ctx, deviceKey("orphan"), func(*presence) *presence {
		return &presence{State: identity.Connected, Since: h.now(), Hub: "crashed", Session: "crashed.1"}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SetConnected(ctx, "mine", "", h.Instance()+".1"); err != nil {
		t.Fatal(err)
	}
	if err := h.sweepPresence(ctx, false); err != nil {
		t.Fatal(err)
	}
	if s := connState(t, h, "orphan", ""); s != identity.Disconnected {
		t.Fatalf("device of a dead hub: %s", s)
	}
	if s := connState(t, h, "mine", ""); s != identity.Connected {
		t.Fatalf("device of the live hub: %s", s)
	}
}

func TestPresenceClearedAtClose(t *testing.T) {
	dir := t.TempDir()
	h, err := New(Config{DataDir: dir, HostName: "hub.test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev1"}, "", false); err != nil {
		t.Fatal(err)
	}
	if err := h.SetConnected(ctx, "dev1", "", h.Instance()+".1"); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h2 := newTestHub(t, dir)
	if s := connState(t, h2, "dev1", ""); s != identity.Disconnected {
		t.Fatalf("after the hub closed: %s", s)
	}
}

func TestPresenceRemovedWithIdentity(t *testing.T) {
	h, _ := newClockHub(t, "")
	ctx := context.Background()
	if _, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev1"}, "", false); err != nil {
		t.Fatal(err)
	}
	if err := h.SetConnected(ctx, "dev1", "", "s"); err != nil {
		t.Fatal(err)
	}
	if err := h.DeleteDevice(ctx, "dev1", "*"); err != nil {
		t.Fatal(err)
	}
	d, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev1"}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if d.ConnectionState != identity.Disconnected || !d.LastActivityTime.IsZero() {
		t.Fatalf("re-created device inherits presence: %s, %v", d.ConnectionState, d.LastActivityTime)
	}
	// The old session's end, reported late, writes nothing.
	if err := h.SetDisconnected(ctx, "dev1", "", "s"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.presTab.get(deviceKey("dev1")); ok {
		t.Fatal("late disconnect created a presence record")
	}
}
