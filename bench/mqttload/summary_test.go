package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"outpost/bench/summary/summarytest"
)

func TestSummarize(t *testing.T) {
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	// Three rounds, alternating targets as run.sh does. In round 3 the
	// machine got busy: pairing keeps outpost's ratio at 2.
	rounds := []struct{ mem, out float64 }{{100, 200}, {110, 220}, {50, 100}}
	for _, r := range rounds {
		enc.Encode(Result{Label: "mem", MsgsPerSec: r.mem, P50us: 1000, P99us: 3000})
		enc.Encode(Result{Label: "outpost", MsgsPerSec: r.out, P50us: 500, P99us: 1500})
	}
	tests := []struct {
		name      string
		in        string
		baselines []string
		pairs     []pair
		want      []string // substrings of the output
		wantErr   string
	}{
		{"ratios", in.String(), []string{"mem", "absent"}, nil, []string{
			"| target | runs | msg/s (median) | PUBACK p50 | PUBACK p99 | × mem | × absent |",
			"| mem | 3 | 100 | 1.00 ms | 3.00 ms | 1.00 | – |",
			"| outpost | 3 | 200 | 0.50 ms | 1.50 ms | 2.00 | – |",
		}, ""},
		{"no baseline", in.String(), nil, nil, []string{"| outpost | 3 | 200 | 0.50 ms | 1.50 ms |\n"}, ""},
		{"pairs", in.String(), nil, []pair{{"outpost", "mem"}, {"outpost", "absent"}}, []string{
			"| target | peer | rounds | msg/s × peer | PUBACK p50 × peer | PUBACK p99 × peer |",
			"| outpost | mem | 3 | 2.00 | 0.50 | 0.50 |\n",
		}, ""},
		{"empty", "", nil, nil, nil, "no results"},
		{"bad json", "{\n", nil, nil, nil, "line 1"},
		{"no label", `{"msgsPerSec":1}`, nil, nil, nil, "no label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := summarytest.Check(t, func(r io.Reader, w io.Writer) error {
				return summarize(r, w, tt.baselines, tt.pairs)
			}, tt.in, tt.want, tt.wantErr)
			if tt.name == "pairs" && strings.Contains(out, "| outpost | absent |") {
				t.Errorf("a pair with no peer runs got a row:\n%s", out)
			}
		})
	}
}

func TestParsePair(t *testing.T) {
	tests := []struct {
		in      string
		want    pair
		wantErr bool
	}{
		{"hub=mosquitto-tls", pair{"hub", "mosquitto-tls"}, false},
		{"hub", pair{}, true},
		{"=peer", pair{}, true},
		{"hub=", pair{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parsePair(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parsePair(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
