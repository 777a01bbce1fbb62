package clocktest

import (
	"sync"
	"testing"
	"time"
)

func TestAt(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := At(t0)
	if got := c.Now(); !got.Equal(t0) {
		t.Fatalf("Now %v, want %v", got, t0)
	}
	c.Advance(90 * time.Second)
	c.Advance(time.Hour)
	if got, want := c.Now(), t0.Add(time.Hour+90*time.Second); !got.Equal(want) {
		t.Fatalf("after Advance: Now %v, want %v", got, want)
	}
}

func TestAtZeroTimeStaysStopped(t *testing.T) {
	c := At(time.Time{})
	if got := c.Now(); !got.IsZero() {
		t.Fatalf("Now %v, want the zero time", got)
	}
}

func TestReal(t *testing.T) {
	for _, tt := range []struct {
		name string
		c    *Clock
	}{
		{"Real", Real()},
		{"zero Clock", &Clock{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			got := tt.c.Now()
			if got.Before(before) || got.After(time.Now()) {
				t.Fatalf("Now %v, not between %v and the time after", got, before)
			}
			tt.c.Advance(time.Hour)
			before = time.Now().Add(time.Hour)
			got = tt.c.Now()
			if got.Before(before) || got.After(time.Now().Add(time.Hour)) {
				t.Fatalf("after Advance(1h): Now %v, want real time plus an hour", got)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	c := At(time.Unix(0, 0))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				c.Advance(time.Second)
				_ = c.Now()
			}
		}()
	}
	wg.Wait()
	if got, want := c.Now(), time.Unix(800, 0); !got.Equal(want) {
		t.Fatalf("Now %v, want %v", got, want)
	}
}
