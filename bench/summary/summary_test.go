package summary

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

type run struct {
	Label string  `json:"label"`
	V     float64 `json:"v"`
}

func label(r run) (string, error) {
	if r.Label == "" {
		return "", errors.New("no label")
	}
	return r.Label, nil
}

func TestRead(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		wantOrder []string
		wantRuns  map[string][]float64
		wantErr   string
	}{
		{"grouped in first-seen order",
			`{"label":"b","v":1}` + "\n\n" + `{"label":"a","v":2}` + "\n  \n" + `{"label":"b","v":3}` + "\n",
			[]string{"b", "a"}, map[string][]float64{"b": {1, 3}, "a": {2}}, ""},
		{"empty", "", nil, nil, "no results"},
		{"blank lines only", "\n \n", nil, nil, "no results"},
		{"bad json", `{"label":"a"}` + "\n{\n", nil, nil, "line 2: "},
		{"label error", `{"label":"a"}` + "\n\n" + `{"v":1}`, nil, nil, "line 3: no label"},
		{"line over 64 KiB", `{"label":"a","pad":"` + strings.Repeat("x", 100<<10) + `"}`,
			[]string{"a"}, map[string][]float64{"a": {0}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			order, runs, err := Read(strings.NewReader(tt.in), label)
			if (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			} else if err != nil {
				return
			}
			if !slices.Equal(order, tt.wantOrder) {
				t.Errorf("order %q, want %q", order, tt.wantOrder)
			}
			if len(runs) != len(tt.wantRuns) {
				t.Errorf("%d labels, want %d", len(runs), len(tt.wantRuns))
			}
			for l, want := range tt.wantRuns {
				var got []float64
				for _, r := range runs[l] {
					got = append(got, r.V)
				}
				if !slices.Equal(got, want) {
					t.Errorf("runs[%q] = %v, want %v", l, got, want)
				}
			}
		})
	}
}

func TestMedianOf(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			in := slices.Clone(tt.in)
			if got := MedianOf(in); got != tt.want {
				t.Errorf("MedianOf(%v) = %v, want %v", tt.in, got, tt.want)
			}
			if !slices.Equal(in, tt.in) {
				t.Errorf("MedianOf reordered its input to %v", in)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	rs := []run{{V: 9}, {V: 1}, {V: 4}}
	if got := Median(rs, func(r run) float64 { return r.V * 2 }); got != 8 {
		t.Errorf("Median = %v, want 8", got)
	}
}

func TestRatio(t *testing.T) {
	v := func(r run) float64 { return r.V }
	runs := func(vs ...float64) []run {
		var rs []run
		for _, x := range vs {
			rs = append(rs, run{V: x})
		}
		return rs
	}
	tests := []struct {
		name     string
		rs, peer []run
		want     string
	}{
		// Round 2 ran on a busier machine: pairing by round keeps 2.
		{"paired by round", runs(200, 60, 220), runs(100, 30, 110), "2.00"},
		{"extra runs ignored", runs(3, 3, 100), runs(1, 1), "3.00"},
		{"zero peer rounds skipped", runs(5, 4), runs(0, 2), "2.00"},
		{"no peer runs", runs(1, 2), nil, "–"},
		{"only zero peer rounds", runs(1), runs(0), "–"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Ratio(tt.rs, tt.peer, v); got != tt.want {
				t.Errorf("Ratio = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMs(t *testing.T) {
	if got := Ms(1500); got != "1.50 ms" {
		t.Errorf("Ms(1500) = %q, want \"1.50 ms\"", got)
	}
}
