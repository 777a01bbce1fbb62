package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	tests := []struct {
		name    string
		b       Backoff
		rand    float64
		want    []time.Duration
		nextArg int
	}{
		{
			name: "defaults, low jitter",
			rand: 0,
			want: []time.Duration{100, 200, 400, 800, 1600, 2500, 2500, 2500},
		},
		{
			name: "defaults, high jitter",
			rand: 0.999999,
			want: []time.Duration{200, 400, 800, 1600, 3200, 5000, 5000},
		},
		{
			name: "custom bounds",
			b:    Backoff{Initial: 50 * time.Millisecond, Max: 120 * time.Millisecond},
			rand: 0,
			want: []time.Duration{25, 50, 60, 60},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			b.Rand = func() float64 { return tt.rand }
			for i, w := range tt.want {
				got := b.Next().Round(time.Millisecond)
				if got != w*time.Millisecond {
					t.Fatalf("attempt %d: %v, want %v", i, got, w*time.Millisecond)
				}
			}
			b.Reset()
			if got := b.Next().Round(time.Millisecond); got != tt.want[0]*time.Millisecond {
				t.Fatalf("after Reset: %v, want %v", got, tt.want[0]*time.Millisecond)
			}
		})
	}
}

func TestBackoffJitter(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 200 {
		var b Backoff
		d := b.Next()
		if d < 100*time.Millisecond || d > 200*time.Millisecond {
			t.Fatalf("first delay %v outside [100ms, 200ms]", d)
		}
		seen[d] = true
	}
	if len(seen) < 50 {
		t.Fatalf("only %d distinct first delays in 200: not jittered", len(seen))
	}
	var b Backoff
	for i := range 1000 {
		if d := b.Next(); d < 0 || d > DefaultMax {
			t.Fatalf("attempt %d: %v beyond the cap", i, d)
		}
	}
}

func TestBackoffWait(t *testing.T) {
	t.Run("fires", func(t *testing.T) {
		var asked time.Duration
		b := Backoff{Rand: func() float64 { return 0 }, After: func(d time.Duration) (<-chan time.Time, func() bool) {
			asked = d
			ch := make(chan time.Time, 1)
			ch <- time.Now()
			return ch, func() bool { return false }
		}}
		if err := b.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if asked != 100*time.Millisecond {
			t.Fatalf("waited %v, want 100ms", asked)
		}
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		stopped := false
		waiting := make(chan struct{})
		b := Backoff{After: func(time.Duration) (<-chan time.Time, func() bool) {
			close(waiting)
			return make(chan time.Time), func() bool { stopped = true; return true }
		}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- b.Wait(ctx) }()
		<-waiting
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait = %v, want context.Canceled", err)
		}
		if !stopped {
			t.Error("timer not stopped")
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var b Backoff
		if err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait = %v", err)
		}
	})
	t.Run("real timer", func(t *testing.T) {
		b := Backoff{Initial: 2 * time.Millisecond, Max: 2 * time.Millisecond}
		start := time.Now()
		if err := b.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el < time.Millisecond {
			t.Fatalf("returned after %v, before the delay", el)
		}
	})
}
