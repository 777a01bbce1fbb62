package poll

import (
	"context"
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

func TestUntil(t *testing.T) {
	n := 0
	took, err := Until(context.Background(), time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 || took > time.Second {
		t.Fatalf("Until: n %d, took %v, err %v; want 3 calls and nil", n, took, err)
	}
	want := errors.New("never")
	if _, err := Until(context.Background(), 20*time.Millisecond, time.Millisecond, func() error { return want }); err != want {
		t.Fatalf("Until past its timeout: %v; want f's last error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if _, err := Until(ctx, time.Hour, time.Millisecond, func() error { return want }); err != want || time.Since(start) > time.Second {
		t.Fatalf("Until with an ended context: %v after %v", err, time.Since(start))
	}
}
