package hub

import (
	"context"
	"fmt"
	"reflect"
	"testing"
)

func TestQuery(t *testing.T) {
	h := newTestHub(t, "")
	ctx := context.Background()
	mustCreate(t, h, "edge", true)
	for i := range 5 {
		id := fmt.Sprintf("d%d", i)
		mustCreate(t, h, id, false)
		if _, err := h.PatchTwin(ctx, id, "", TwinPatch{Tags: map[string]any{"x": fmt.Sprintf("v%d", i%2), "n": i}}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.AddChildren(ctx, "edge", []string{"d3"}, false); err != nil {
		t.Fatal(err)
	}
	ids := func(items []map[string]any, field string) []string {
		out := []string{}
		for _, it := range items {
			out = append(out, fmt.Sprint(it[field]))
		}
		return out
	}
	tests := []struct {
		name  string
		q     string
		field string
		want  []string
	}{
		{"non-edge", "SELECT * FROM devices WHERE capabilities.iotEdge = false", "deviceId", []string{"d0", "d1", "d2", "d3", "d4"}},
		{"edge", "SELECT deviceId FROM devices WHERE capabilities.iotEdge = true", "deviceId", []string{"edge"}},
		{"tag", "SELECT deviceId FROM devices WHERE tags.x = 'v1'", "deviceId", []string{"d1", "d3"}},
		{"number tag", "SELECT deviceId FROM devices WHERE tags.n >= 3", "deviceId", []string{"d3", "d4"}},
		{"status", "SELECT deviceId FROM devices WHERE status = 'enabled' AND tags.n < 1", "deviceId", []string{"d0"}},
		{"unknown function", "SELECT deviceId FROM devices WHERE ARRAY_LENGTH(parentScopes) > 0", "deviceId", nil},
		{"modules", "SELECT * FROM devices.modules WHERE moduleId = '$edgeHub'", "deviceId", []string{"edge"}},
		{"count", "SELECT COUNT() AS n FROM devices WHERE capabilities.iotEdge = false", "n", []string{"5"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			page, err := h.Query(tc.q, 0, "")
			if tc.want == nil {
				wantStatus(t, err, 400)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(page.Items, tc.field); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v; want %v", got, tc.want)
			}
		})
	}

	// The child's scopes are queryable.
	edge, _ := h.GetDevice("edge")
	page, err := h.Query(fmt.Sprintf("SELECT deviceId FROM devices WHERE deviceScope = '%s' AND capabilities.iotEdge = false", edge.DeviceScope), 0, "")
	if err != nil || !reflect.DeepEqual(ids(page.Items, "deviceId"), []string{"d3"}) {
		t.Fatalf("scope query: %v, %v", page.Items, err)
	}

	t.Run("paging", func(t *testing.T) {
		q := "SELECT deviceId FROM devices"
		var got []string
		cont, pages := "", 0
		for {
			page, err := h.Query(q, 2, cont)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			got = append(got, ids(page.Items, "deviceId")...)
			if page.Continuation == "" {
				break
			}
			cont = page.Continuation
		}
		if pages != 3 || !reflect.DeepEqual(got, []string{"d0", "d1", "d2", "d3", "d4", "edge"}) {
			t.Fatalf("%d pages: %v", pages, got)
		}
		_, err := h.Query("SELECT * FROM devices", 2, cont)
		wantStatus(t, err, 400)
	})

	t.Run("read after write", func(t *testing.T) {
		if _, err := h.PatchTwin(ctx, "d0", "", TwinPatch{Tags: map[string]any{"x": "fresh"}}, ""); err != nil {
			t.Fatal(err)
		}
		page, err := h.Query("SELECT deviceId FROM devices WHERE tags.x = 'fresh'", 0, "")
		if err != nil || !reflect.DeepEqual(ids(page.Items, "deviceId"), []string{"d0"}) {
			t.Fatalf("%v, %v", page.Items, err)
		}
		if err := h.DeleteDevice(ctx, "d0", "*"); err != nil {
			t.Fatal(err)
		}
		page, _ = h.Query("SELECT deviceId FROM devices WHERE tags.x = 'fresh'", 0, "")
		if len(page.Items) != 0 {
			t.Fatalf("deleted device still matches: %v", page.Items)
		}
	})

	t.Run("syntax error", func(t *testing.T) {
		_, err := h.Query("SELEC * FROM devices", 0, "")
		wantStatus(t, err, 400)
		if code(err) != CodeInvalidQuery {
			t.Fatalf("code %q", code(err))
		}
	})
}
