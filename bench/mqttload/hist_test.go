package main

import (
	"math"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	for _, v := range []int64{0, 1, 127, 128, 129, 255, 256, 1000, 123456789, 1 << 40, math.MaxInt64} {
		t.Run("", func(t *testing.T) {
			i := bucketOf(v)
			if i >= numBuckets {
				t.Fatalf("bucketOf(%d) = %d, out of %d", v, i, numBuckets)
			}
			if lo := lowerBound(i); lo > v {
				t.Errorf("lowerBound(bucketOf(%d)) = %d, above the value", v, lo)
			}
			if i+1 < numBuckets {
				if hi := lowerBound(i + 1); hi <= v {
					t.Errorf("next bucket of %d starts at %d, not above it", v, hi)
				}
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	var h histogram
	// 1..10000 µs, uniformly: quantile q is q*10 ms.
	for i := 1; i <= 10000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 5 * time.Millisecond},
		{0.9, 9 * time.Millisecond},
		{0.99, 9900 * time.Microsecond},
		{1, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			got := h.quantile(tt.q)
			if rel := math.Abs(float64(got-tt.want)) / float64(tt.want); rel > 0.01 {
				t.Errorf("quantile(%v) = %v, want %v within 1%%", tt.q, got, tt.want)
			}
		})
	}
	if h.quantile(1) != 10*time.Millisecond {
		t.Errorf("quantile(1) = %v, want the exact max", h.quantile(1))
	}

	var merged, empty histogram
	if empty.quantile(0.5) != 0 {
		t.Errorf("empty histogram quantile = %v", empty.quantile(0.5))
	}
	merged.merge(&h)
	merged.merge(&h)
	if merged.n != 2*h.n || merged.quantile(0.5) != h.quantile(0.5) {
		t.Errorf("merge: n %d p50 %v, want %d and %v", merged.n, merged.quantile(0.5), 2*h.n, h.quantile(0.5))
	}
}
