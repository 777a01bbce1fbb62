package statustest_test

import (
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"outpost/internal/status"
	"outpost/internal/status/statustest"
)

// WriteHTTP passes CheckHTTP; the check's own failures are seen through a
// recording testing.TB.
func TestCheckHTTP(t *testing.T) {
	e := status.NotFound(status.CodeDeviceNotFound, "device d1 not found")
	rec := httptest.NewRecorder()
	if got := status.WriteHTTP(rec, e, time.Now()); got != e {
		t.Fatalf("WriteHTTP returned %+v, want %+v", got, e)
	}
	if got := statustest.CheckHTTP(t, rec.Result(), e); *got != *e {
		t.Fatalf("CheckHTTP read %+v, want %+v", got, e)
	}

	for _, tc := range []struct {
		name string
		want *status.Error
	}{
		{"other status", status.Conflict(status.CodeDeviceNotFound, "device d1 not found")},
		{"other code", status.NotFound(status.CodeModuleNotFound, "device d1 not found")},
		{"other text", status.NotFound(status.CodeDeviceNotFound, "device d2 not found")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			status.WriteHTTP(rec, e, time.Now())
			r := &recorder{TB: t}
			statustest.CheckHTTP(r, rec.Result(), tc.want)
			if !r.failed {
				t.Errorf("CheckHTTP accepted %+v as %+v", e, tc.want)
			}
		})
	}

	t.Run("a 500 hides its cause", func(t *testing.T) {
		rec := httptest.NewRecorder()
		status.WriteHTTP(rec, errors.New("secret path /var/lib/x"), time.Now())
		statustest.CheckHTTP(t, rec.Result(), &status.Error{Status: 500, Code: status.CodeServerError, Message: "internal error"})
	})
}

type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) Fatalf(string, ...any) { r.failed = true }
func (r *recorder) Helper()               {}
