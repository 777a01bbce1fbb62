package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// summarize reads Result JSON lines, in the order run.sh produced them, and
// writes one markdown table row per label with medians over the runs.
//
// A ratio to a baseline is the median of per-round ratios: the i-th run of
// a target is divided by the i-th run of the baseline. run.sh alternates the
// targets within a round, so each pair ran seconds apart and shares whatever
// else the shared machine was doing; that cancels more noise than dividing
// two medians taken minutes apart.
//
// Each pair adds a row to a second table that quotes a target against its
// own peer on every measure: msg/s, and PUBACK p50 and p99 (for latency, a
// ratio under 1 means the target answers faster).
func summarize(r io.Reader, w io.Writer, baselines []string, pairs []pair) error {
	var order []string
	runs := map[string][]Result{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		var res Result
		if err := json.Unmarshal([]byte(s), &res); err != nil {
			return fmt.Errorf("summarize: line %d: %w", line, err)
		}
		if res.Label == "" {
			return fmt.Errorf("summarize: line %d: no label", line)
		}
		if _, ok := runs[res.Label]; !ok {
			order = append(order, res.Label)
		}
		runs[res.Label] = append(runs[res.Label], res)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("summarize: %w", err)
	}
	if len(order) == 0 {
		return errors.New("summarize: no results")
	}

	head := "| target | runs | msg/s (median) | PUBACK p50 | PUBACK p99 |"
	rule := "|---|---:|---:|---:|---:|"
	for _, b := range baselines {
		head += " × " + b + " |"
		rule += "---:|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, rule)
	for _, label := range order {
		rs := runs[label]
		row := fmt.Sprintf("| %s | %d | %.0f | %s | %s |", label, len(rs),
			median(rs, func(r Result) float64 { return r.MsgsPerSec }),
			ms(median(rs, func(r Result) float64 { return r.P50us })),
			ms(median(rs, func(r Result) float64 { return r.P99us })))
		for _, b := range baselines {
			row += " " + ratio(rs, runs[b]) + " |"
		}
		fmt.Fprintln(w, row)
	}
	if len(pairs) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | peer | rounds | msg/s × peer | PUBACK p50 × peer | PUBACK p99 × peer |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
	for _, p := range pairs {
		rs, base := runs[p.target], runs[p.peer]
		if len(rs) == 0 || len(base) == 0 {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s |\n", p.target, p.peer, min(len(rs), len(base)),
			ratioOf(rs, base, func(r Result) float64 { return r.MsgsPerSec }),
			ratioOf(rs, base, func(r Result) float64 { return r.P50us }),
			ratioOf(rs, base, func(r Result) float64 { return r.P99us }))
	}
	return nil
}

// pair names a target and the peer it is quoted against.
type pair struct{ target, peer string }

func parsePair(s string) (pair, error) {
	t, p, ok := strings.Cut(s, "=")
	if !ok || t == "" || p == "" {
		return pair{}, fmt.Errorf("pair %q: want TARGET=PEER", s)
	}
	return pair{t, p}, nil
}

func median(rs []Result, f func(Result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return medianOf(v)
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if n := len(v); n%2 == 1 {
		return v[n/2]
	} else {
		return (v[n/2-1] + v[n/2]) / 2
	}
}

func ratio(rs, base []Result) string {
	return ratioOf(rs, base, func(r Result) float64 { return r.MsgsPerSec })
}

// ratioOf is the median over rounds of f(rs[i]) / f(base[i]).
func ratioOf(rs, base []Result, f func(Result) float64) string {
	var v []float64
	for i := range min(len(rs), len(base)) {
		if b := f(base[i]); b > 0 {
			v = append(v, f(rs[i])/b)
		}
	}
	if len(v) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", medianOf(v))
}

func ms(us float64) string {
	return fmt.Sprintf("%.2f ms", us/1000)
}
