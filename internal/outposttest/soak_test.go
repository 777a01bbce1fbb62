package outposttest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"outpost/internal/service"
)

// createChildren registers n devices child-0000 … as children of edge,
// 100 to a bulk request, and returns their ids.
func createChildren(t *testing.T, env *Env, edge *Edge, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("child-%04d", i)
	}
	for lo := 0; lo < n; lo += service.MaxBulkOps {
		var ops []service.BulkOp
		for _, id := range ids[lo:min(lo+service.MaxBulkOps, n)] {
			ops = append(ops, service.BulkOp{ID: id, ImportMode: service.ImportCreate, ParentScopes: []string{edge.Device.DeviceScope}})
		}
		res, err := env.Service().Bulk(ctxFor(t), ops)
		if err != nil {
			t.Fatalf("bulk create children %d…: %v", lo, err)
		}
		if !res.IsSuccessful {
			t.Fatalf("bulk create children %d… refused: %+v", lo, res.Errors)
		}
	}
	return ids
}

// An edge with 1,000 children gets them all at its first sync. Their
// snapshot (~720 KB) is one MQTT response; the link once read at most
// 320 KiB from its hub, dropped the connection over it, and never synced.
func TestEdgeSyncsThousandChildren(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	edge := env.CreateEdge("edge1")
	ids := createChildren(t, env, edge, 1000)
	snap, err := env.Plane.Snapshot("edge1")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(snap)
	t.Logf("identity snapshot of %d children: %d bytes", len(snap.Devices), len(js))

	node := env.StartEdge(t, "edge1")
	st, err := node.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Synced {
		t.Fatal("edge serving, yet not synced")
	}
	// The first and the last child of the snapshot authenticate from the
	// edge's cache, with the link cut.
	node.Cut()
	node.AwaitLink(t, false, 10*time.Second)
	for _, id := range []string{ids[0], ids[len(ids)-1]} {
		c := node.Child(t, id)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.Send(ctx, seqMessage(1))
		cancel()
		if err != nil {
			t.Errorf("%s through the offline edge: %v", id, err)
		}
	}
}
