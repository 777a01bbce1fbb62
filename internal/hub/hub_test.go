package hub

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"outpost/internal/identity"
	"outpost/internal/poll"
	"outpost/internal/status"
	"outpost/internal/twin"
)

func newTestHub(t testing.TB, dir string) *Hub {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	h, err := New(Config{DataDir: dir, HostName: "hub.test"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// statusOf returns the HTTP status an error carries, 0 for nil, -1 for an
// error that is no *status.Error.
func statusOf(err error) int {
	if err == nil {
		return 0
	}
	if se, ok := status.As(err); ok {
		return se.Status
	}
	return -1
}

func code(err error) string {
	se, _ := status.As(err)
	if se == nil {
		return ""
	}
	return se.Code
}

func wantStatus(t *testing.T, err error, want int) {
	t.Helper()
	if got := statusOf(err); got != want {
		t.Fatalf("error %v: status %d; want %d", err, got, want)
	}
}

// checkFor polls fn until it succeeds or the timeout passes.
func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	poll.Check(t, timeout, 0, fn)
}

func TestDeviceLifecycle(t *testing.T) {
	h := newTestHub(t, "")
	ctx := context.Background()

	d, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev*1?"}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if d.ETag == "" || d.Authentication.SymmetricKey.PrimaryKey == "" || d.Status != identity.StatusEnabled {
		t.Fatalf("created device not filled: %+v", d)
	}
	got, err := h.GetDevice("dev*1?")
	if err != nil || got.ETag != d.ETag {
		t.Fatalf("GetDevice = %+v, %v; want etag %s", got, err, d.ETag)
	}

	steps := []struct {
		name string
		run  func() error
		want int
	}{
		{"create again", func() error {
			_, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev*1?"}, "", false)
			return err
		}, 409},
		{"bad id", func() error {
			_, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "a/b"}, "", false)
			return err
		}, 400},
		{"update stale etag", func() error {
			_, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "dev*1?"}, `"`+etagOf(999999)+`"`, false)
			return err
		}, 412},
		{"update missing", func() error {
			_, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "nope"}, "*", false)
			return err
		}, 404},
		{"delete stale etag", func() error { return h.DeleteDevice(ctx, "dev*1?", etagOf(999999)) }, 412},
		{"delete missing", func() error { return h.DeleteDevice(ctx, "nope", "*") }, 404},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) { wantStatus(t, s.run(), s.want) })
	}

	upd := got
	upd.Status = identity.StatusDisabled
	u, err := h.CreateOrUpdateDevice(ctx, upd, `"`+got.ETag+`"`, false)
	if err != nil {
		t.Fatal(err)
	}
	if u.ETag == got.ETag || u.Status != identity.StatusDisabled || u.Authentication != got.Authentication {
		t.Fatalf("update: %+v", u)
	}
	// The old etag is now stale.
	_, err = h.CreateOrUpdateDevice(ctx, upd, got.ETag, false)
	wantStatus(t, err, 412)

	if n := len(h.ListDevices(0)); n != 1 {
		t.Fatalf("ListDevices: %d devices", n)
	}
	if err := h.DeleteDevice(ctx, "dev*1?", u.ETag); err != nil {
		t.Fatal(err)
	}
	_, err = h.GetDevice("dev*1?")
	wantStatus(t, err, 404)
	_, err = h.GetTwin("dev*1?", "")
	wantStatus(t, err, 404)
}

func TestEdgeModules(t *testing.T) {
	h := newTestHub(t, "")
	ctx := context.Background()
	edge := identity.Device{DeviceID: "edge1", Capabilities: identity.Capabilities{IoTEdge: true}}
	if _, err := h.CreateOrUpdateDevice(ctx, edge, "", false); err != nil {
		t.Fatal(err)
	}
	ms, err := h.ListModules("edge1")
	if err != nil || len(ms) != 2 || ms[0].ModuleID != identity.EdgeAgent || ms[1].ModuleID != identity.EdgeHub {
		t.Fatalf("ListModules = %+v, %v", ms, err)
	}
	if _, err := h.GetTwin("edge1", identity.EdgeHub); err != nil {
		t.Fatalf("$edgeHub twin: %v", err)
	}

	m, err := h.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "edge1", ModuleID: "filter"}, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		run  func() error
		want int
	}{
		{"module exists", func() error {
			_, err := h.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "edge1", ModuleID: "filter"}, "")
			return err
		}, 409},
		{"reserved id", func() error {
			_, err := h.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "edge1", ModuleID: "$mine"}, "")
			return err
		}, 400},
		{"no device", func() error {
			_, err := h.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "ghost", ModuleID: "m"}, "")
			return err
		}, 404},
		{"stale etag", func() error {
			_, err := h.CreateOrUpdateModule(ctx, m, etagOf(99999))
			return err
		}, 412},
		{"delete system module", func() error { return h.DeleteModule(ctx, "edge1", identity.EdgeAgent, "*") }, 400},
		{"get missing module", func() error { _, err := h.GetModule("edge1", "zzz"); return err }, 404},
		{"module twin of missing module", func() error { _, err := h.GetTwin("edge1", "zzz"); return err }, 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantStatus(t, tc.run(), tc.want) })
	}
	m2, err := h.CreateOrUpdateModule(ctx, m, m.ETag)
	if err != nil || m2.ETag == m.ETag || m2.GenerationID != m.GenerationID {
		t.Fatalf("update module: %+v, %v", m2, err)
	}
	if err := h.DeleteModule(ctx, "edge1", "filter", m2.ETag); err != nil {
		t.Fatal(err)
	}
	if _, err := h.GetTwin("edge1", "filter"); statusOf(err) != 404 {
		t.Fatalf("twin of deleted module: %v", err)
	}

	// Deleting the device takes its modules; a new device of the same id
	// starts clean.
	if err := h.DeleteDevice(ctx, "edge1", ""); err != nil {
		t.Fatal(err)
	}
	d, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "edge1"}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if ms, _ := h.ListModules("edge1"); len(ms) != 0 {
		t.Fatalf("re-created device inherited modules %+v", ms)
	}
	// Turning IoT Edge on adds the runtime's modules.
	d.Capabilities.IoTEdge = true
	if _, err := h.CreateOrUpdateDevice(ctx, d, d.ETag, false); err != nil {
		t.Fatal(err)
	}
	if ms, _ := h.ListModules("edge1"); len(ms) != 2 {
		t.Fatalf("device turned edge has modules %+v", ms)
	}
}

func mustCreate(t *testing.T, h *Hub, id string, edge bool) identity.Device {
	t.Helper()
	d, err := h.CreateOrUpdateDevice(context.Background(), identity.Device{DeviceID: id, Capabilities: identity.Capabilities{IoTEdge: edge}}, "", false)
	if err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	return d
}

func childIDs(t *testing.T, h *Hub, edge string) []string {
	t.Helper()
	cs, err := h.ListChildren(edge)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, c := range cs {
		ids = append(ids, c.DeviceID)
	}
	return ids
}

func TestChildren(t *testing.T) {
	h := newTestHub(t, "")
	ctx := context.Background()
	e1 := mustCreate(t, h, "e1", true)
	mustCreate(t, h, "e2", true)
	mustCreate(t, h, "c1", false)
	mustCreate(t, h, "c2", false)

	if err := h.AddChildren(ctx, "e1", []string{"c1", "c2"}, false); err != nil {
		t.Fatal(err)
	}
	if got := childIDs(t, h, "e1"); !reflect.DeepEqual(got, []string{"c1", "c2"}) {
		t.Fatalf("children of e1 = %v", got)
	}
	c1, _ := h.GetDevice("c1")
	if c1.DeviceScope != e1.DeviceScope || !reflect.DeepEqual(c1.ParentScopes, []string{e1.DeviceScope}) {
		t.Fatalf("c1 scopes = %q %q; want %q", c1.DeviceScope, c1.ParentScopes, e1.DeviceScope)
	}

	tests := []struct {
		name string
		run  func() error
		want int
		code string
	}{
		{"edge as child", func() error { return h.AddChildren(ctx, "e1", []string{"e2"}, false) }, 400, status.CodeInvalidChildDevice},
		{"non-edge parent", func() error { return h.AddChildren(ctx, "c2", []string{"c1"}, false) }, 400, status.CodeInvalidParentDevice},
		{"re-parent without force", func() error { return h.AddChildren(ctx, "e2", []string{"c1"}, false) }, 400, status.CodeInvalidChildDevice},
		{"missing child", func() error { return h.AddChildren(ctx, "e1", []string{"ghost"}, false) }, 404, status.CodeDeviceNotFound},
		{"remove non-child", func() error { return h.RemoveChildren(ctx, "e2", []string{"c1"}) }, 400, status.CodeInvalidChildDevice},
		{"children of non-edge", func() error { _, err := h.ListChildren("c1"); return err }, 400, status.CodeInvalidParentDevice},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			wantStatus(t, err, tc.want)
			if code(err) != tc.code {
				t.Fatalf("code %q; want %q (%v)", code(err), tc.code, err)
			}
		})
	}
	// A refused batch changes nothing.
	if got := childIDs(t, h, "e1"); !reflect.DeepEqual(got, []string{"c1", "c2"}) {
		t.Fatalf("children of e1 after refusals = %v", got)
	}

	if err := h.AddChildren(ctx, "e2", []string{"c1"}, true); err != nil {
		t.Fatalf("forced re-parent: %v", err)
	}
	if got := childIDs(t, h, "e2"); !reflect.DeepEqual(got, []string{"c1"}) {
		t.Fatalf("children of e2 = %v", got)
	}
	if err := h.RemoveChildren(ctx, "e2", []string{"c1"}); err != nil {
		t.Fatal(err)
	}
	if c1, _ := h.GetDevice("c1"); c1.DeviceScope != "" || len(c1.ParentScopes) != 0 {
		t.Fatalf("detached c1 keeps scopes %q %q", c1.DeviceScope, c1.ParentScopes)
	}

	// An edge device with children cannot stop being an edge device.
	e1, _ = h.GetDevice("e1")
	e1.Capabilities.IoTEdge = false
	_, err := h.CreateOrUpdateDevice(ctx, e1, "*", false)
	wantStatus(t, err, 400)

	// Deleting an edge detaches its children.
	if err := h.DeleteDevice(ctx, "e1", "*"); err != nil {
		t.Fatal(err)
	}
	c2, _ := h.GetDevice("c2")
	if c2.DeviceScope != "" || len(c2.ParentScopes) != 0 {
		t.Fatalf("child of deleted edge keeps scopes %q %q", c2.DeviceScope, c2.ParentScopes)
	}
}

func TestParentByPut(t *testing.T) {
	h := newTestHub(t, "")
	ctx := context.Background()
	e1 := mustCreate(t, h, "e1", true)
	e2 := mustCreate(t, h, "e2", true)

	// Created as a child, the SDK way.
	c, err := h.CreateOrUpdateDevice(ctx, identity.Device{DeviceID: "c", DeviceScope: e1.DeviceScope}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := childIDs(t, h, "e1"); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("children of e1 = %v", got)
	}
	tests := []struct {
		name  string
		dev   identity.Device
		force bool
		want  int
	}{
		{"re-parent without force", identity.Device{DeviceID: "c", ParentScopes: []string{e2.DeviceScope}}, false, 400},
		{"unknown parent", identity.Device{DeviceID: "c", ParentScopes: []string{identity.NewEdgeScope("ghost")}}, true, 400},
		{"edge child", identity.Device{DeviceID: "e2", Capabilities: identity.Capabilities{IoTEdge: true}, ParentScopes: []string{e1.DeviceScope}}, true, 400},
		{"re-parent with force", identity.Device{DeviceID: "c", ParentScopes: []string{e2.DeviceScope}}, true, 0},
		{"detach", identity.Device{DeviceID: "c", ParentScopes: []string{}}, false, 0},
		{"attach parentless", identity.Device{DeviceID: "c", ParentScopes: []string{e1.DeviceScope}}, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.CreateOrUpdateDevice(ctx, tc.dev, "*", tc.force)
			wantStatus(t, err, tc.want)
		})
	}
	if got := childIDs(t, h, "e1"); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("children of e1 = %v", got)
	}
	if got := childIDs(t, h, "e2"); len(got) != 0 {
		t.Fatalf("children of e2 = %v", got)
	}
	_ = c
}

func TestTwins(t *testing.T) {
	h := newTestHub(t, "")
	ctx := context.Background()
	mustCreate(t, h, "d", false)
	t0, err := h.GetTwin("d", "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseTwinPatch([]byte(`{"tags":{"x":"v1"},"properties":{"desired":{"temp":21}}}`))
	if err != nil {
		t.Fatal(err)
	}
	t1, err := h.PatchTwin(ctx, "d", "", p, t0.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if t1.ETag == t0.ETag || t1.Version != t0.Version+1 || t1.DesiredVersion() != 2 || t1.Tags["x"] != "v1" {
		t.Fatalf("patched twin: %+v", t1)
	}
	if t1.Capabilities == nil || t1.Status != identity.StatusEnabled {
		t.Fatalf("twin lacks registry fields: %+v", t1)
	}
	_, err = h.PatchTwin(ctx, "d", "", p, t0.ETag)
	wantStatus(t, err, 412)

	big := make([]byte, 0, 40000)
	big = append(big, `{"properties":{"desired":{"blob":"`...)
	for range 33 * 1024 {
		big = append(big, 'a')
	}
	big = append(big, `"}}}`...)
	bad := []struct {
		name string
		body string
	}{
		{"too large", string(big)},
		{"dollar key", `{"properties":{"desired":{"$x":1}}}`},
		{"too deep", `{"tags":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{"k":{"l":1}}}}}}}}}}}}}`},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseTwinPatch([]byte(tc.body))
			if err == nil {
				_, err = h.PatchTwin(ctx, "d", "", p, "")
			}
			wantStatus(t, err, 400)
			now, _ := h.GetTwin("d", "")
			if now.ETag != t1.ETag || !reflect.DeepEqual(now.Properties, t1.Properties) {
				t.Fatalf("refused patch changed the twin")
			}
		})
	}
	if _, err := ParseTwinPatch([]byte(`{"properties":{"reported":{"a":1}}}`)); statusOf(err) != 400 {
		t.Fatalf("reported patch from the service: %v", err)
	}

	n := &twin.Twin{Tags: map[string]any{"y": "z"}, Properties: twin.Properties{Desired: map[string]any{"mode": "eco"}}}
	t2, err := h.ReplaceTwin(ctx, "d", "", n, "*")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := t2.Tags["x"]; ok || t2.Tags["y"] != "z" || t2.Desired()["mode"] != "eco" || t2.Desired()["temp"] != nil {
		t.Fatalf("replaced twin: tags %v desired %v", t2.Tags, t2.Desired())
	}

	v, err := h.PatchReported(ctx, "d", "", map[string]any{"fw": "1.0"})
	if err != nil || v != 2 {
		t.Fatalf("PatchReported = %d, %v", v, err)
	}
}

func TestConcurrentTwinPatchesMerge(t *testing.T) {
	h := newTestHub(t, "")
	mustCreate(t, h, "d", false)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := TwinPatch{Desired: map[string]any{fmt.Sprintf("k%d", i): i}}
			_, err := h.PatchTwin(context.Background(), "d", "", p, "")
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	tw, _ := h.GetTwin("d", "")
	if len(tw.Desired()) != n || tw.DesiredVersion() != n+1 {
		t.Fatalf("desired after %d concurrent patches: %d keys, $version %d", n, len(tw.Desired()), tw.DesiredVersion())
	}
}

func TestWatchTwins(t *testing.T) {
	h := newTestHub(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mustCreate(t, h, "d", false)
	ch, err := h.WatchTwins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.PatchTwin(ctx, "d", "", TwinPatch{Tags: map[string]any{"t": 1}}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.PatchTwin(ctx, "d", "", TwinPatch{Desired: map[string]any{"on": true}}, ""); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for i := 0; i < 2; i++ {
		select {
		case c := <-ch:
			if c.DeviceID != "d" || c.ModuleID != "" {
				t.Fatalf("change for %q/%q", c.DeviceID, c.ModuleID)
			}
			if i == 0 && c.DesiredPatch != nil {
				t.Fatalf("a tags change carries desired patch %v", c.DesiredPatch)
			}
			if i == 1 && (c.DesiredPatch["on"] != true || c.DesiredVersion != 2) {
				t.Fatalf("desired change = %v at %d", c.DesiredPatch, c.DesiredVersion)
			}
		case <-timeout:
			t.Fatal("no twin change")
		}
	}
	cancel()
	checkFor(t, 5*time.Second, func() error {
		select {
		case _, ok := <-ch:
			if !ok {
				return nil
			}
		default:
		}
		return errors.New("channel still open after cancel")
	})
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	h, err := New(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, h, "e", true)
	mustCreate(t, h, "c", false)
	if err := h.AddChildren(ctx, "e", []string{"c"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := h.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "e", ModuleID: "m"}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.PatchTwin(ctx, "c", "", TwinPatch{Tags: map[string]any{"x": "v"}, Desired: map[string]any{"a": 1}}, ""); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, h, "gone", false)
	if err := h.DeleteDevice(ctx, "gone", "*"); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, h)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	h2 := newTestHub(t, dir)
	after := snapshot(t, h2)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed across restart:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := childIDs(t, h2, "e"); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("children after restart = %v", got)
	}
}

type state struct {
	Devices []identity.Device
	Modules []identity.Module
	Twins   map[string]*twin.Twin
}

func snapshot(t *testing.T, h *Hub) state {
	t.Helper()
	s := state{Devices: h.ListDevices(0), Twins: map[string]*twin.Twin{}}
	for _, d := range s.Devices {
		tw, err := h.GetTwin(d.DeviceID, "")
		if err != nil {
			t.Fatal(err)
		}
		s.Twins[d.DeviceID] = tw
		ms, _ := h.ListModules(d.DeviceID)
		for _, m := range ms {
			s.Modules = append(s.Modules, m)
			tw, err := h.GetTwin(d.DeviceID, m.ModuleID)
			if err != nil {
				t.Fatal(err)
			}
			s.Twins[d.DeviceID+"/"+m.ModuleID] = tw
		}
	}
	return s
}

// startNATS runs a standalone JetStream server on a random loopback port,
// standing in for an external NATS cluster.
func startNATS(t *testing.T) string {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	return srv.ClientURL()
}

func TestReplicasShareExternalNATS(t *testing.T) {
	url := startNATS(t)
	ctx := context.Background()
	a, err := New(Config{NATSURL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(Config{NATSURL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	mustCreate(t, a, "d", false)
	checkFor(t, 5*time.Second, func() error {
		_, err := b.GetDevice("d")
		return err
	})
	// Twin patches from both replicas, without If-Match, all land.
	var wg sync.WaitGroup
	for i, h := range []*Hub{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.PatchTwin(ctx, "d", "", TwinPatch{Desired: map[string]any{fmt.Sprintf("k%d", i): i}}, ""); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	checkFor(t, 5*time.Second, func() error {
		tw, err := b.GetTwin("d", "")
		if err != nil {
			return err
		}
		if len(tw.Desired()) != 4 {
			return fmt.Errorf("replica b sees %d desired keys", len(tw.Desired()))
		}
		return nil
	})
	// A write on b with the etag b last served works on a, even if a's
	// index has not caught up yet.
	tw, _ := b.GetTwin("d", "")
	if _, err := a.PatchTwin(ctx, "d", "", TwinPatch{Tags: map[string]any{"t": 1}}, tw.ETag); err != nil {
		t.Fatalf("patch on a with b's etag: %v", err)
	}
	// So does a delete: of a module, with the etag b served on its update.
	if _, err := a.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "d", ModuleID: "m"}, ""); err != nil {
		t.Fatal(err)
	}
	m, err := b.CreateOrUpdateModule(ctx, identity.Module{DeviceID: "d", ModuleID: "m"}, "*")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteModule(ctx, "d", "m", m.ETag); err != nil {
		t.Fatalf("delete on a with b's etag: %v", err)
	}
	if err := b.DeleteDevice(ctx, "d", "*"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if _, err := a.GetDevice("d"); statusOf(err) != 404 {
			return fmt.Errorf("replica a still has the device: %v", err)
		}
		return nil
	})
}
