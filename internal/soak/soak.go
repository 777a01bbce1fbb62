// Package soak scales the reliability tests: each runs a fast, bounded
// version in `make test` and a long one in `make soak`, which sets
// OUTPOST_SOAK=1. A test states both sizes where it runs, so the figures
// docs/RELIABILITY.md quotes can be traced to one place.
package soak

import (
	"os"
	"time"
)

// Enabled reports whether this is a soak run (OUTPOST_SOAK=1).
func Enabled() bool { return os.Getenv("OUTPOST_SOAK") == "1" }

// N is fast in `make test` and long in `make soak`.
func N(fast, long int) int {
	if Enabled() {
		return long
	}
	return fast
}

// D is N for durations.
func D(fast, long time.Duration) time.Duration {
	if Enabled() {
		return long
	}
	return fast
}
