// Package poll waits for a condition in tests by polling it with a
// deadline, never by sleeping for a guessed time. Every package's tests
// use it, so the loop exists once.
package poll

import (
	"testing"
	"time"
)

// DefaultInterval is how often Check polls when given no interval.
const DefaultInterval = 5 * time.Millisecond

// Check calls f every interval until it returns nil, and fails the test
// with f's last error once timeout has passed. An interval of 0 means
// DefaultInterval.
func Check(t testing.TB, timeout, interval time.Duration, f func() error) {
	t.Helper()
	if interval <= 0 {
		interval = DefaultInterval
	}
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(interval) // the polling interval, not a wait for the condition
	}
}
