package poll

import (
	"errors"
	"testing"
	"time"
)

func TestCheckReturnsOnceTrue(t *testing.T) {
	n := 0
	Check(t, time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("f called %d times, want 3", n)
	}
}

// fakeT records Fatalf instead of ending the test.
type fakeT struct {
	testing.TB
	failed string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = format
	panic(f)
}

func TestCheckFailsAfterTimeout(t *testing.T) {
	ft := &fakeT{TB: t}
	start := time.Now()
	func() {
		defer func() {
			if r := recover(); r != ft {
				panic(r)
			}
		}()
		Check(ft, 30*time.Millisecond, 0, func() error { return errors.New("never") })
	}()
	if ft.failed == "" {
		t.Fatal("Check did not fail when the condition never held")
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("failed after %v, before the timeout", d)
	}
}
