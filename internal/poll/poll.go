// Package poll waits for a condition by polling it with a deadline,
// never by sleeping for a guessed time: Until for any code (the demo),
// Check for tests. The loop exists once.
package poll

import (
	"context"
	"time"
)

// T is the part of testing.TB that Check uses. Taking it rather than
// testing.TB keeps package testing out of the binaries that poll (the
// demo).
type T interface {
	Helper()
	Fatalf(format string, args ...any)
}

// DefaultInterval is how often Check polls when given no interval.
const DefaultInterval = 5 * time.Millisecond

// Check calls f every interval until it returns nil, and fails the test
// with f's last error once timeout has passed. An interval of 0 means
// DefaultInterval.
func Check(t T, timeout, interval time.Duration, f func() error) {
	t.Helper()
	if _, err := Until(context.Background(), timeout, interval, f); err != nil {
		t.Fatalf("condition not met within %v: %v", timeout, err)
	}
}
