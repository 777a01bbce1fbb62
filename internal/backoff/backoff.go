// Package backoff is the one reconnect backoff of Outpost's clients: the
// Go SDK and the edge's upstream link. It honours the context and takes
// its clock from the caller, so tests control time.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Default backoff bounds. The first retry comes after 100–200 ms so a link
// that returns is noticed quickly; the cap keeps a long outage from pushing
// retries minutes apart, as Azure's SDKs do.
const (
	DefaultInitial = 200 * time.Millisecond
	DefaultMax     = 5 * time.Second
)

// Backoff yields jittered, exponentially growing delays. Attempt n waits a
// uniformly random time in [c/2, c], where c = min(Initial·2ⁿ, Max): the
// lower half keeps a floor under the delay, the jitter keeps many clients
// that lost the same link from retrying in step.
//
// The zero value is ready to use with the defaults. A Backoff belongs to
// one goroutine; it is not safe for concurrent use.
type Backoff struct {
	Initial time.Duration // ceiling of the first delay; DefaultInitial if 0
	Max     time.Duration // ceiling of every delay; DefaultMax if 0
	// Rand returns a number in [0, 1). Tests pass a fixed source; nil
	// means math/rand/v2.
	Rand func() float64
	// After is the clock used by Wait; nil means RealAfter.
	After After

	attempt int
}

// Next returns the delay before the next attempt and counts the attempt.
func (b *Backoff) Next() time.Duration {
	initial, maxd := b.Initial, b.Max
	if initial <= 0 {
		initial = DefaultInitial
	}
	if maxd <= 0 {
		maxd = DefaultMax
	}
	if initial > maxd {
		initial = maxd
	}
	c := initial
	for i := 0; i < b.attempt && c < maxd; i++ {
		c *= 2
	}
	c = min(c, maxd)
	// Stop counting once capped so the counter cannot overflow.
	if c < maxd {
		b.attempt++
	}
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	half := c / 2
	return half + time.Duration(r()*float64(c-half))
}

// Reset starts the sequence again; call it after a successful attempt.
func (b *Backoff) Reset() { b.attempt = 0 }

// Wait sleeps for Next(), or returns ctx.Err() as soon as ctx is done.
func (b *Backoff) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !Sleep(ctx, b.After, b.Next()) {
		return ctx.Err()
	}
	return nil
}

// After is a clock's timer: a channel that fires once d has passed, and a
// stop function. Tests pass one they fire themselves.
type After func(d time.Duration) (<-chan time.Time, func() bool)

// RealAfter is After on the system clock.
func RealAfter(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

func (a After) orReal() After {
	if a == nil {
		return RealAfter
	}
	return a
}

// Sleep waits d on after (nil: the system clock), or until ctx is done.
// It reports whether the whole d passed.
func Sleep(ctx context.Context, after After, d time.Duration) bool {
	ch, stop := after.orReal()(d)
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		stop()
		return false
	}
}
