package poll

import (
	"context"
	"errors"
	"time"
)

// ErrTimeout is what a condition without an error of its own can return
// to Until while it does not hold.
var ErrTimeout = errors.New("condition not met in time")

// Until calls f every interval (0: DefaultInterval) until it returns nil,
// timeout passes, or ctx ends, and returns how long it waited. Its error
// is nil once f held, else f's last error. It is
// the polling loop of tests (Check) and of the demo alike.
func Until(ctx context.Context, timeout, interval time.Duration, f func() error) (time.Duration, error) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	begin := time.Now()
	deadline := begin.Add(timeout)
	for {
		err := f()
		if err == nil {
			return time.Since(begin), nil
		}
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return time.Since(begin), err
		}
		t := time.NewTimer(min(interval, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}
