package soak

import (
	"testing"
	"time"
)

func TestScale(t *testing.T) {
	t.Setenv("OUTPOST_SOAK", "")
	if Enabled() || N(5, 50) != 5 || D(time.Second, time.Minute) != time.Second {
		t.Fatal("fast sizes expected without OUTPOST_SOAK")
	}
	t.Setenv("OUTPOST_SOAK", "1")
	if !Enabled() || N(5, 50) != 50 || D(time.Second, time.Minute) != time.Minute {
		t.Fatal("long sizes expected with OUTPOST_SOAK=1")
	}
}

func TestMedianAndQuantile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 100}
	if got := Median(ds); got != 4 {
		t.Errorf("Median = %v, want 4 (the upper middle of 6)", got)
	}
	if got := Median(ds[:5]); got != 3 {
		t.Errorf("Median of 5 = %v, want 3", got)
	}
	if ds[0] != 5 {
		t.Errorf("Median sorted its argument: %v", ds)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0, 1}, {0.5, 3}, {0.99, 100}, {1, 100}} {
		if got := Quantile(ds, c.q); got != c.want {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if Median(nil) != 0 || Quantile(nil, 0.5) != 0 {
		t.Error("empty: want 0")
	}
}
