// Package clocktest is the settable clock that tests hand to production
// code through its Config.Now func() time.Time, so the clock exists once.
// It imports the standard library only, so every package's tests may use
// it.
package clocktest

import (
	"sync"
	"time"
)

// Clock is a clock that tests move forward by hand. It is safe for
// concurrent use; pass its Now method as a Config.Now.
type Clock struct {
	mu     sync.Mutex
	fixed  bool
	at     time.Time
	offset time.Duration
}

// At returns a clock stopped at t: only Advance moves it.
func At(t time.Time) *Clock {
	return &Clock{fixed: true, at: t}
}

// Real returns a clock that follows the real time plus whatever Advance
// adds, for code that also needs time to pass (timers, keep-alives) while
// a test makes stored data age. The zero Clock is the same.
func Real() *Clock {
	return &Clock{}
}

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fixed {
		return c.at.Add(c.offset)
	}
	return time.Now().Add(c.offset)
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}
