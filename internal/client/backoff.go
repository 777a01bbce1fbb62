package client

import (
	"context"
	"math/rand/v2"
	"time"
)

// Default backoff bounds. The first retry comes after 100–200 ms so a link
// that returns is noticed quickly; the cap keeps a long outage from pushing
// retries minutes apart, as Azure's SDKs do.
const (
	DefaultBackoffInitial = 200 * time.Millisecond
	DefaultBackoffMax     = 5 * time.Second
)

// Backoff yields jittered, exponentially growing delays. Attempt n waits a
// uniformly random time in [c/2, c], where c = min(Initial·2ⁿ, Max): the
// lower half keeps a floor under the delay, the jitter keeps many clients
// that lost the same link from retrying in step.
//
// The zero value is ready to use with the defaults. A Backoff belongs to
// one goroutine; it is not safe for concurrent use.
type Backoff struct {
	Initial time.Duration // ceiling of the first delay; DefaultBackoffInitial if 0
	Max     time.Duration // ceiling of every delay; DefaultBackoffMax if 0
	// Rand returns a number in [0, 1). Tests pass a fixed source; nil
	// means math/rand/v2.
	Rand func() float64
	// After is the clock used by Wait; nil means time.NewTimer.
	After func(time.Duration) (<-chan time.Time, func() bool)

	attempt int
}

// Next returns the delay before the next attempt and counts the attempt.
func (b *Backoff) Next() time.Duration {
	initial, maxd := b.Initial, b.Max
	if initial <= 0 {
		initial = DefaultBackoffInitial
	}
	if maxd <= 0 {
		maxd = DefaultBackoffMax
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
	d := b.Next()
	var ch <-chan time.Time
	var stop func() bool
	if b.After != nil {
		ch, stop = b.After(d)
	} else {
		t := time.NewTimer(d)
		ch, stop = t.C, t.Stop
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		stop()
		return ctx.Err()
	}
}
