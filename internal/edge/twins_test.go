package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/topic"
	"outpost/internal/twin"
)

// twinHub is a fake hub's twins, served through the fake uplink.
type twinHub struct {
	mu       sync.Mutex
	desired  map[string]map[string]any // by client id, with $version
	reported map[string]map[string]any
	patches  map[string][]string // reported patches received, by client id
	hang     bool                // the link looks up but never answers
}

func newTwinHub(up *fakeUplink) *twinHub {
	h := &twinHub{desired: map[string]map[string]any{}, reported: map[string]map[string]any{}, patches: map[string][]string{}}
	cid := func(d, m string) string {
		if m == "" {
			return d
		}
		return d + "/" + m
	}
	getFn := func(ctx context.Context, d, m string) ([]byte, error) {
		if h.hanging() {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		k := cid(d, m)
		des, rep := h.desired[k], h.reported[k]
		if des == nil {
			des = map[string]any{"$version": 1}
		}
		if rep == nil {
			rep = map[string]any{"$version": 1}
		}
		return json.Marshal(map[string]any{"desired": des, "reported": rep})
	}
	repFn := func(ctx context.Context, d, m string, patch []byte) (int64, error) {
		if h.hanging() {
			<-ctx.Done()
			return 0, ctx.Err()
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		k := cid(d, m)
		p, err := twin.DecodeObject(patch)
		if err != nil {
			return 0, err
		}
		rep := h.reported[k]
		if rep == nil {
			rep = map[string]any{"$version": int64(1)}
			h.reported[k] = rep
		}
		twin.Merge(rep, p)
		v := twin.SectionVersion(rep) + 1
		rep["$version"] = v
		h.patches[k] = append(h.patches[k], string(patch))
		return v, nil
	}
	up.set(func(f *fakeUplink) { f.twinGet, f.twinReported = getFn, repFn })
	return h
}

func (h *twinHub) hanging() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hang
}

func (h *twinHub) setDesired(cid string, doc map[string]any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.desired[cid] = doc
}

func (h *twinHub) received(cid string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.patches[cid]...)
}

func (h *twinHub) reportedOf(cid string) map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.reported[cid])
}

// TestTwinsNeverBlockOnADeadLink: with a cached twin, a GET and a reported
// patch are answered within a second whether the link hangs (cut but not
// yet noticed) or is known down; the GET is never empty; patches held
// meanwhile reach the hub collapsed, one per identity, on reconnect.
func TestTwinsNeverBlockOnADeadLink(t *testing.T) {
	hub := newFakeHub(t)
	childKey := hub.addDevice("child1")
	modKey := hub.addModule("edge1", "mod")
	te := startEdge(t, hub, t.TempDir(), true)
	th := newTwinHub(te.up)
	th.setDesired("child1", map[string]any{"mode": "eco", "$version": 4})
	th.setDesired("edge1/mod", map[string]any{"rate": 5, "$version": 2})
	te.awaitReady()
	child := te.connect("child1", "", childKey)
	mod := te.connect("edge1", "mod", modKey)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, c := range []interface {
		GetTwin(context.Context) (map[string]any, map[string]any, error)
	}{child, mod} {
		if _, _, err := c.GetTwin(ctx); err != nil {
			t.Fatal(err)
		}
	}

	steps := []struct {
		name string
		cut  func()
	}{
		{"link hangs", func() { th.mu.Lock(); th.hang = true; th.mu.Unlock() }},
		{"link down", func() { te.up.setConnected(false) }},
	}
	n := 0
	for _, st := range steps {
		st.cut()
		t.Run(st.name, func(t *testing.T) {
			start := time.Now()
			des, _, err := child.GetTwin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d >= time.Second {
				t.Fatalf("offline GET took %v", d)
			}
			if des["mode"] != "eco" || fmt.Sprint(des["$version"]) != "4" {
				t.Fatalf("offline GET desired %v", des)
			}
			for _, c := range []interface {
				UpdateReported(context.Context, map[string]any) (int64, error)
			}{child, mod} {
				n++
				start = time.Now()
				if _, err := c.UpdateReported(ctx, map[string]any{"step": n, fmt.Sprint("k", n): true}); err != nil {
					t.Fatal(err)
				}
				if d := time.Since(start); d >= time.Second {
					t.Fatalf("offline PATCH took %v", d)
				}
			}
			_, rep, err := child.GetTwin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(rep["step"]) != fmt.Sprint(n-1) {
				t.Fatalf("offline GET does not show the held patch: %v", rep)
			}
		})
	}
	if got := th.received("child1"); len(got) != 0 {
		t.Fatalf("patches reached the hub while offline: %v", got)
	}

	th.mu.Lock()
	th.hang = false
	th.mu.Unlock()
	te.up.setConnected(true)
	for _, cid := range []string{"child1", "edge1/mod"} {
		checkFor(t, 5*time.Second, func() error {
			if got := th.received(cid); len(got) != 1 {
				return fmt.Errorf("%s: hub received %v, want one collapsed patch", cid, got)
			}
			return nil
		})
		rep := th.reportedOf(cid)
		if rep["k1"] == nil && rep["k2"] == nil {
			t.Fatalf("%s: first held patch lost: %v", cid, rep)
		}
		if rep["k3"] == nil && rep["k4"] == nil {
			t.Fatalf("%s: second held patch lost: %v", cid, rep)
		}
	}
	if fmt.Sprint(th.reportedOf("child1")["step"]) != "3" || fmt.Sprint(th.reportedOf("edge1/mod")["step"]) != "4" {
		t.Fatalf("latest values lost: %v %v", th.reportedOf("child1"), th.reportedOf("edge1/mod"))
	}
}

// TestTwinReportedTextRefused: the edge refuses, with a 400, a reported
// patch whose text the JSON decoder would silently replace (invalid
// UTF-8, a lone surrogate) or with a '$' inside a key, online and
// offline, and neither forwards nor holds it.
func TestTwinReportedTextRefused(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	th := newTwinHub(te.up)
	te.awaitReady()
	c := te.connect("child1", "", key)
	res := make(chan string, 8)
	if err := c.Subscribe(topic.FilterTwinResponses, 0, func(tp string, _ []byte) { res <- tp }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// patch sends body raw (the client's own call would re-encode it)
	// and returns the response topic.
	patch := func(rid, body string) string {
		t.Helper()
		if err := c.Publish(ctx, topic.TwinReported(rid), 0, []byte(body)); err != nil {
			t.Fatal(err)
		}
		select {
		case tp := <-res:
			return tp
		case <-ctx.Done():
			t.Fatalf("%q: no twin response", body)
			return ""
		}
	}
	bodies := []string{
		"{\"temp\":\"\xff\"}",
		"{\"t\xe9mp\":1}",
		`{"temp":"\ud800"}`,
		`{"te$mp":1}`,
	}
	rid := 0
	for _, online := range []bool{true, false} {
		te.up.setConnected(online)
		for _, body := range bodies {
			rid++
			if tp, want := patch(strconv.Itoa(rid), body), "$iothub/twin/res/400/?$rid="+strconv.Itoa(rid); tp != want {
				t.Fatalf("online=%v %q answered on %s; want %s", online, body, tp, want)
			}
		}
	}
	// A valid patch goes up alone: a held refused one would be merged
	// into it.
	te.up.setConnected(true)
	if tp := patch("ok", `{"ok":1}`); !strings.HasPrefix(tp, "$iothub/twin/res/204/?$rid=ok") {
		t.Fatalf("valid patch answered on %s", tp)
	}
	if got := th.received("child1"); len(got) != 1 || got[0] != `{"ok":1}` {
		t.Fatalf("hub received %q; want only the valid patch", got)
	}
}

// TestLivePatchAfterHeldKeepsOrder: a patch sent online while an older
// one is still held must not be overwritten by the held one at the hub.
func TestLivePatchAfterHeldKeepsOrder(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	th := newTwinHub(te.up)
	te.awaitReady()
	c := te.connect("child1", "", key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	te.up.setConnected(false)
	if _, err := c.UpdateReported(ctx, map[string]any{"temp": 1, "old": true}); err != nil {
		t.Fatal(err)
	}
	te.up.setConnected(true)
	if _, err := c.UpdateReported(ctx, map[string]any{"temp": 2}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if _, err := te.e.Store().Get(pendingKey("child1")); err == nil {
			return fmt.Errorf("patch still held")
		}
		return nil
	})
	rep := th.reportedOf("child1")
	if fmt.Sprint(rep["temp"]) != "2" || rep["old"] != true {
		t.Fatalf("hub reported %v (patches %v), want temp 2 and old", rep, th.received("child1"))
	}
}

// TestDesiredChangedWhileOffline: on reconnect a connected device gets one
// patch with the changes made at the hub meanwhile and the hub's version;
// later patches with older versions are dropped.
func TestDesiredChangedWhileOffline(t *testing.T) {
	hub := newFakeHub(t)
	key := hub.addDevice("child1")
	te := startEdge(t, hub, t.TempDir(), true)
	th := newTwinHub(te.up)
	th.setDesired("child1", map[string]any{"mode": "eco", "gone": 1, "nested": map[string]any{"a": 1, "b": 2}, "$version": 4})
	te.awaitReady()
	type patch struct {
		body    map[string]any
		version int64
	}
	got := make(chan patch, 10)
	c := te.newClient("child1", "", key)
	c.OnDesired(func(p map[string]any, v int64) { got <- patch{p, v} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.GetTwin(ctx); err != nil {
		t.Fatal(err)
	}
	te.up.setConnected(false)
	th.setDesired("child1", map[string]any{"mode": "turbo", "new": true, "nested": map[string]any{"a": 1, "b": 3}, "$version": 7})
	te.up.setConnected(true)
	var p patch
	select {
	case p = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no desired patch after reconnect")
	}
	b, _ := json.Marshal(p.body)
	if want := `{"$version":7,"gone":null,"mode":"turbo","nested":{"b":3},"new":true}`; string(b) != want || p.version != 7 {
		t.Fatalf("patch %s v%d, want %s v7", b, p.version, want)
	}
	// A hub patch the reconciliation already covered is dropped; a newer
	// one passes.
	te.e.DesiredPatch("child1", "", 6, []byte(`{"mode":"stale","$version":6}`))
	te.e.DesiredPatch("child1", "", 8, []byte(`{"mode":"later","$version":8}`))
	select {
	case p = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no patch v8")
	}
	if p.version != 8 || p.body["mode"] != "later" {
		t.Fatalf("got %v v%d, want mode later v8 (stale v6 must be dropped)", p.body, p.version)
	}
	te.up.setConnected(false)
	des, _, err := c.GetTwin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if des["mode"] != "later" || fmt.Sprint(des["$version"]) != "8" || des["gone"] != nil {
		t.Fatalf("cached desired %v", des)
	}
}

// TestEdgeAgentEnv: the edgeHub module's env from the $edgeAgent twin is
// fetched when the edge comes online, handed to OnEdgeHubEnv and kept.
func TestEdgeAgentEnv(t *testing.T) {
	hub := newFakeHub(t)
	dir := t.TempDir()
	envs := make(chan map[string]string, 4)
	opt := func(c *Config) { c.OnEdgeHubEnv = func(env map[string]string) { envs <- env } }
	te := startEdge(t, hub, dir, true, opt)
	th := newTwinHub(te.up)
	th.setDesired("edge1/$edgeAgent", map[string]any{"schemaVersion": "1.1", "$version": 3,
		"systemModules": map[string]any{"edgeHub": map[string]any{"env": map[string]any{"storageFolder": map[string]any{"value": "/data/edge"}}}}})
	te.awaitReady()
	select {
	case env := <-envs:
		if env["storageFolder"] != "/data/edge" {
			t.Fatalf("env %v", env)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnEdgeHubEnv not called")
	}
	te.close()
	te2 := startEdge(t, hub, dir, false)
	te2.awaitReady()
	if got := te2.e.EdgeHubEnv()["storageFolder"]; got != "/data/edge" {
		t.Fatalf("env after restart %q", got)
	}
}
