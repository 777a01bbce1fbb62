package edge

import (
	"fmt"
	"strings"
	"testing"

	"outpost/internal/edge/upstream"
	"outpost/internal/status"
)

// TestLinkErr: a hub's refusal (4xx) reaches the device as the hub wrote
// it; a hub that failed (5xx), or a link that is down, lets the cache
// answer instead.
func TestLinkErr(t *testing.T) {
	refused := status.NotFound(status.CodeModuleNotFound, "no twin here")
	failed := status.Errorf(503, status.CodeServiceUnavailable, "jetstream down")
	for _, tc := range []struct {
		name      string
		err       error
		want      *status.Error // what the device sees; nil: the cache answers
		fromCache bool
		logs      string // what the error still says, for the edge's log
	}{
		{"refused", fmt.Errorf("twin get d/m: %w", refused), refused, false, "no twin here"},
		{"hub failed", fmt.Errorf("twin get d/m: %w", failed), nil, true, "jetstream down"},
		{"offline", upstream.ErrOffline, nil, true, "upstream link is down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := linkErr(tc.err)
			if got := upstreamFailed(err); got != tc.fromCache {
				t.Errorf("upstreamFailed(%v) = %v, want %v", err, got, tc.fromCache)
			}
			se, ok := status.As(err)
			if tc.want == nil {
				if ok {
					t.Errorf("linkErr(%v) carries %+v; want a plain error", tc.err, se)
				}
			}
			if !strings.Contains(err.Error(), tc.logs) {
				t.Errorf("linkErr(%v) = %q; it lost %q", tc.err, err, tc.logs)
			}
			if tc.want == nil {
				return
			}
			if !ok || *se != *tc.want {
				t.Errorf("linkErr(%v) = %v; want %+v", tc.err, err, tc.want)
			}
		})
	}
}
