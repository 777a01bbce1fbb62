package demo

import (
	"reflect"
	"testing"
)

func TestTally(t *testing.T) {
	type ev struct {
		kind string // "sent", "ack", "fail", "hub"
		dev  string
		seq  int64
	}
	// run sends seqs 1..n for dev, acking each.
	run := func(dev string, n int64) []ev {
		var evs []ev
		for s := int64(1); s <= n; s++ {
			evs = append(evs, ev{"sent", dev, s}, ev{"ack", dev, s})
		}
		return evs
	}
	hub := func(dev string, seqs ...int64) []ev {
		var evs []ev
		for _, s := range seqs {
			evs = append(evs, ev{"hub", dev, s})
		}
		return evs
	}
	cat := func(parts ...[]ev) []ev {
		var out []ev
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name string
		evs  []ev
		want Totals
		lost map[string][]int64
	}{
		{"all in order", cat(run("a", 3), run("b", 2), hub("a", 1, 2, 3), hub("b", 1, 2)),
			Totals{Sent: 5, Acked: 5, Delivered: 5, InOrder: 5}, map[string][]int64{}},
		{"interleaved devices keep per-device order", cat(run("a", 2), run("b", 2), hub("b", 1), hub("a", 1), hub("b", 2), hub("a", 2)),
			Totals{Sent: 4, Acked: 4, Delivered: 4, InOrder: 4}, map[string][]int64{}},
		{"replay is a duplicate", cat(run("a", 3), hub("a", 1, 2, 3, 2, 3)),
			Totals{Sent: 3, Acked: 3, Delivered: 3, InOrder: 3, Duplicates: 2}, map[string][]int64{}},
		{"swap is out of order", cat(run("a", 3), hub("a", 1, 3, 2)),
			Totals{Sent: 3, Acked: 3, Delivered: 3, InOrder: 2, OutOfOrder: 1}, map[string][]int64{}},
		{"missing is lost", cat(run("a", 4), hub("a", 1, 3)),
			Totals{Sent: 4, Acked: 4, Delivered: 2, InOrder: 2, Lost: 2}, map[string][]int64{"a": {2, 4}}},
		{"failed send is not lost", cat([]ev{{"sent", "a", 1}, {"ack", "a", 1}, {"sent", "a", 2}, {"fail", "a", 2}}, hub("a", 1)),
			Totals{Sent: 2, Acked: 1, SendFailed: 1, Delivered: 1, InOrder: 1}, map[string][]int64{}},
		{"unknown devices are ignored", cat(run("x", 2), hub("x", 1, 2), run("a", 1), hub("a", 1)),
			Totals{Sent: 1, Acked: 1, Delivered: 1, InOrder: 1}, map[string][]int64{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ta := newTally([]string{"a", "b"})
			for _, e := range tc.evs {
				switch e.kind {
				case "sent":
					ta.sent(e.dev)
				case "ack":
					ta.acked(e.dev, e.seq)
				case "fail":
					ta.failed(e.dev)
				case "hub":
					ta.delivered(e.dev, e.seq)
				}
			}
			if got := ta.totals(); got != tc.want {
				t.Errorf("totals = %+v, want %+v", got, tc.want)
			}
			if got := ta.lostSeqs(); !reflect.DeepEqual(got, tc.lost) {
				t.Errorf("lost = %v, want %v", got, tc.lost)
			}
		})
	}
}

func TestTallyDrainMarks(t *testing.T) {
	ta := newTally([]string{"a", "b"})
	for s := int64(1); s <= 5; s++ {
		ta.acked("a", s)
	}
	ta.acked("b", 1)
	ta.delivered("a", 1)
	marks := ta.marks()
	if want := map[string]int64{"a": 5, "b": 1}; !reflect.DeepEqual(marks, want) {
		t.Fatalf("marks = %v, want %v", marks, want)
	}
	// Messages acknowledged after the marks do not hold the drain.
	ta.acked("a", 6)
	steps := []struct {
		deliver []int64
		dev     string
		want    int64
	}{
		{nil, "", 5},
		{[]int64{2, 3}, "a", 3},
		{[]int64{1}, "b", 2},
		{[]int64{4, 5}, "a", 0},
	}
	for _, st := range steps {
		for _, s := range st.deliver {
			ta.delivered(st.dev, s)
		}
		if got := ta.undelivered(marks); got != st.want {
			t.Errorf("after delivering %v of %s: undelivered = %d, want %d", st.deliver, st.dev, got, st.want)
		}
		if acked, _ := ta.upTo(marks); acked != 6 {
			t.Errorf("acked up to the marks = %d, want 6", acked)
		}
	}
}
