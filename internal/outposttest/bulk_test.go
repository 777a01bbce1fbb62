package outposttest

import (
	"context"
	"testing"

	"outpost/internal/service"
)

// Every bulk import mode the service client offers is one the hub serves:
// the two cannot drift apart, as they once did.
func TestBulkModesAgree(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	ctx := context.Background()
	for _, mode := range service.ImportModes {
		t.Run(mode, func(t *testing.T) {
			id := "bulk-" + mode
			if mode != service.ImportCreate {
				env.CreateDevice(id)
			}
			op := service.BulkOp{ID: id, ImportMode: mode}
			if mode == service.ImportUpdateIfMatchETag || mode == service.ImportDeleteIfMatchETag {
				op.ETag = env.device(id).ETag
			}
			res, err := env.Service().Bulk(ctx, []service.BulkOp{op})
			if err != nil {
				t.Fatalf("bulk %s: %v", mode, err)
			}
			if !res.IsSuccessful {
				t.Fatalf("bulk %s refused: %+v", mode, res.Errors)
			}
		})
	}
}
