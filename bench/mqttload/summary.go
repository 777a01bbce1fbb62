package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"outpost/bench/summary"
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
	order, runs, err := summary.Read(r, func(res Result) (string, error) {
		if res.Label == "" {
			return "", errors.New("no label")
		}
		return res.Label, nil
	})
	if err != nil {
		return fmt.Errorf("summarize: %w", err)
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
			summary.Median(rs, msgsPerSec),
			summary.Ms(summary.Median(rs, p50)),
			summary.Ms(summary.Median(rs, p99)))
		for _, b := range baselines {
			row += " " + summary.Ratio(rs, runs[b], msgsPerSec) + " |"
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
			summary.Ratio(rs, base, msgsPerSec),
			summary.Ratio(rs, base, p50),
			summary.Ratio(rs, base, p99))
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

func msgsPerSec(r Result) float64 { return r.MsgsPerSec }
func p50(r Result) float64        { return r.P50us }
func p99(r Result) float64        { return r.P99us }
