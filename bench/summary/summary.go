// Package summary is what the benchmark commands (mqttload, outpostbench)
// share to summarise their JSON result lines: several runs per label, read
// in the order they ran, quoted as medians and as medians of per-round
// ratios to a peer.
package summary

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Read decodes one T per non-blank line of r and groups the results by
// label, with the labels in the order first seen. A label error stops the
// read, quoted with its line number.
func Read[T any](r io.Reader, label func(T) (string, error)) (order []string, runs map[string][]T, err error) {
	runs = map[string][]T{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		var res T
		if err := json.Unmarshal([]byte(s), &res); err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", line, err)
		}
		l, err := label(res)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", line, err)
		}
		if _, ok := runs[l]; !ok {
			order = append(order, l)
		}
		runs[l] = append(runs[l], res)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	if len(order) == 0 {
		return nil, nil, errors.New("no results")
	}
	return order, runs, nil
}

// Median is the median of f over rs.
func Median[T any](rs []T, f func(T) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return MedianOf(v)
}

// MedianOf is the median of v, 0 for none; v is left as it was.
func MedianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Ratio is the median over rounds of f(rs[i]) / f(peer[i]), as "%.2f".
// Runs pair up by round because a round's runs ran seconds apart and share
// whatever else the machine was doing; rounds whose peer measured 0 are
// skipped, and with none left the ratio is "–".
func Ratio[T any](rs, peer []T, f func(T) float64) string {
	var v []float64
	for i := range min(len(rs), len(peer)) {
		if p := f(peer[i]); p > 0 {
			v = append(v, f(rs[i])/p)
		}
	}
	if len(v) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", MedianOf(v))
}

// Ms quotes microseconds as milliseconds.
func Ms(us float64) string {
	return fmt.Sprintf("%.2f ms", us/1000)
}
