package main

import (
	"math/bits"
	"time"
)

// subBuckets per power of two: values are kept to within 1/subBuckets
// (under 1 %), which is plenty for quoting percentiles, at a fixed 60 KB per
// histogram whatever the run length.
const (
	subBits    = 7
	subBuckets = 1 << subBits
	numBuckets = (64 - subBits) * subBuckets // up to the bucket of MaxInt64
)

// histogram is a log-linear latency histogram in nanoseconds. It is not
// safe for concurrent use: each client owns one and they are merged at the end.
type histogram struct {
	counts [numBuckets]uint64
	n      uint64
	max    int64
}

func bucketOf(v int64) int {
	if v < subBuckets {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	e := bits.Len64(uint64(v)) - subBits - 1
	return (e+1)*subBuckets + int(uint64(v)>>e) - subBuckets
}

// lowerBound is the smallest value that falls in bucket i.
func lowerBound(i int) int64 {
	if i < subBuckets {
		return int64(i)
	}
	e := i/subBuckets - 1
	return int64(subBuckets+i%subBuckets) << e
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(int64(d))]++
	h.n++
	if int64(d) > h.max {
		h.max = int64(d)
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q in [0, 1]: the midpoint of its
// bucket, capped by the exact maximum.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	if rank == h.n {
		return time.Duration(h.max)
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			if i+1 == numBuckets {
				return time.Duration(h.max)
			}
			lo := lowerBound(i)
			mid := lo + (lowerBound(i+1)-lo)/2
			return time.Duration(min(mid, h.max))
		}
	}
	return time.Duration(h.max)
}
