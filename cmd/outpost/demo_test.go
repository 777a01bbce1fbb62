package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"outpost/internal/demo"
)

func TestDemoFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    demoOptions
		wantErr string
	}{
		{"defaults", nil, demoOptions{devices: 3, rate: demo.DefaultRate, offlineFor: demo.DefaultOfflineFor}, ""},
		{"all", []string{"--devices", "5", "--rate", "2.5", "--offline-for", "1m", "--keep"},
			demoOptions{devices: 5, rate: 2.5, offlineFor: time.Minute, keep: true}, ""},
		{"no devices", []string{"--devices", "0"}, demoOptions{}, "--devices 0"},
		{"too many devices", []string{"--devices", "1000"}, demoOptions{}, "--devices 1000"},
		{"negative rate", []string{"--rate", "-1"}, demoOptions{}, "--rate -1"},
		{"zero offline", []string{"--offline-for", "0s"}, demoOptions{}, "--offline-for 0s"},
		{"stray argument", []string{"now"}, demoOptions{}, `unexpected argument "now"`},
		{"unknown flag", []string{"--fast"}, demoOptions{}, "usage"},
		{"bad duration", []string{"--offline-for", "soon"}, demoOptions{}, "usage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDemoFlags(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("options %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDemo plays a short demo in-process, as `outpost demo` does, and
// checks both the summary it returns and the table it prints.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a hub and an edge; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	const devices = 2
	s, err := playDemo(ctx, demoOptions{
		devices:    devices,
		rate:       20,
		onlineFor:  time.Second,
		offlineFor: 2 * time.Second,
		timeout:    60 * time.Second,
		dir:        t.TempDir(),
	}, &out, false)
	text := out.String()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, text)
	}
	if !s.OK() {
		t.Fatalf("failed checks %+v\n%s", s.FailedChecks(), text)
	}

	t.Run("summary", func(t *testing.T) {
		checks := []struct {
			name string
			ok   bool
		}{
			{"something was sent", s.Sent > 0},
			{"every message acked", s.Acked == s.Sent && s.SendFailed == 0},
			{"every acked message delivered", s.Delivered == s.Acked},
			{"all in order", s.InOrder == s.Delivered && s.OutOfOrder == 0},
			{"no duplicates", s.Duplicates == 0},
			{"none lost", s.Lost == 0},
			{"none expired", s.Expired == 0},
			{"a backlog built up", s.QueuedPeak > 0},
			{"the backlog drained", s.DrainTime > 0 && s.LinkReturn > 0 && s.DrainTime >= s.LinkReturn},
			{"twins match", s.ReportedMatch == devices && s.DesiredMatch == devices},
			{"alerts went child → module → child", s.AlertsExpected > 0 && s.AlertsReceived == s.AlertsExpected && s.AlertsFiltered == s.AlertsSent},
			{"the child restarted", s.RestartAuth > 0},
		}
		for _, c := range checks {
			if !c.ok {
				t.Errorf("%s: summary %+v", c.name, s)
			}
		}
	})

	t.Run("story", func(t *testing.T) {
		for _, want := range []string{
			"==> Setup:",
			"==> 1. Online",
			"==> 2. Link cut",
			"==> 3. Link restored",
			"restarted: the edge authenticated it from its offline cache",
			"module filter passed the",
			"twins reconciled",
			fmt.Sprintf("All %d checks passed.", len(s.Checks)),
		} {
			if !strings.Contains(text, want) {
				t.Errorf("output lacks %q:\n%s", want, text)
			}
		}
		if strings.Contains(text, "\033[") {
			t.Errorf("plain output carries terminal escapes")
		}
	})

	t.Run("table", func(t *testing.T) {
		rows := []struct {
			label string
			want  int64
		}{
			{"messages sent", s.Sent},
			{"acked by the edge", s.Acked},
			{"delivered to the hub", s.Delivered},
			{"in order", s.InOrder},
			{"duplicates", 0},
			{"lost", 0},
			{"expired", 0},
			{"queued during the cut", s.QueuedPeak},
		}
		for _, r := range rows {
			m := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(r.label) + `\s+(\d+)`).FindStringSubmatch(text)
			if m == nil {
				t.Errorf("no %q row:\n%s", r.label, text)
				continue
			}
			if n, _ := strconv.ParseInt(m[1], 10, 64); n != r.want {
				t.Errorf("%s = %d in the table, want %d", r.label, n, r.want)
			}
		}
		for _, want := range []string{
			fmt.Sprintf("reported twins match     yes  (%d/%d devices)", devices, devices),
			fmt.Sprintf("desired twins match      yes  (%d/%d devices)", devices, devices),
		} {
			if !strings.Contains(text, want) {
				t.Errorf("table lacks %q", want)
			}
		}
		if strings.Contains(text, "FAIL") {
			t.Errorf("a check printed FAIL:\n%s", text)
		}
	})
}

func TestPrintSummaryFailures(t *testing.T) {
	s := demo.Summary{Devices: 3, Rate: 10, OfflineFor: time.Second, ReportedMatch: 2, DesiredMatch: 3,
		Checks: []demo.Check{{Name: "nothing lost", OK: false, Detail: "4 lost"}, {Name: "all in order", OK: true, Detail: "fine"}}}
	s.Lost = 4
	var b bytes.Buffer
	printSummary(&b, s, 20*time.Second)
	for _, want := range []string{
		"  FAIL  nothing lost: 4 lost",
		"  ok    all in order: fine",
		"1 of 2 checks FAILED.",
		"reported twins match     NO  (2/3 devices)",
		"lost                     4",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

func TestTermReporter(t *testing.T) {
	tests := []struct {
		name string
		p    demo.Progress
		want []string
	}{
		{"timed phase", demo.Progress{Phase: 2, Elapsed: 5 * time.Second, Duration: 10 * time.Second, Sent: 7, Queued: 3},
			[]string{"sent 7", "edge queue 3", "link DOWN", "[" + strings.Repeat("█", 5) + strings.Repeat("░", 5) + "]", "5s/10s"}},
		{"drain", demo.Progress{Phase: 3, DrainTotal: 4, DrainDone: 1, LinkUp: true},
			[]string{"link up", "drain [" + strings.Repeat("█", 3) + strings.Repeat("░", 7) + "] 1/4"}},
		{"open phase", demo.Progress{Phase: 3, LinkUp: true}, []string{"hub 0"}},
		{"large numbers are cut to the width", demo.Progress{Phase: 3, Sent: 1e12, Acked: 1e12, Delivered: 1e12, Queued: 1e12, DrainTotal: 1e12, DrainDone: 1e11},
			[]string{"sent 1000000000000"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			r := &termReporter{w: &b}
			r.Progress(tc.p)
			r.Step("a step")
			r.finish()
			out := b.String()
			status, _, _ := strings.Cut(strings.TrimPrefix(out, termClear+termDim), termReset)
			if n := len([]rune(status)); n > termWidth {
				t.Errorf("status line of %d columns: %q", n, status)
			}
			for _, want := range tc.want {
				if !strings.Contains(out, want) {
					t.Errorf("output %q lacks %q", out, want)
				}
			}
			// The step clears the status line, prints itself, and draws the
			// status line again; finish clears it.
			if !strings.Contains(out, termClear+"  • a step\n") || !strings.HasSuffix(out, termClear) {
				t.Errorf("status line not cleared around the step: %q", out)
			}
		})
	}
}

func TestBar(t *testing.T) {
	tests := []struct {
		f    float64
		full int
	}{{-1, 0}, {0, 0}, {0.5, 10}, {0.99, 20}, {1, 20}, {3, 20}}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.f), func(t *testing.T) {
			b := bar(tc.f, 20)
			if got := strings.Count(b, "█"); got != tc.full {
				t.Errorf("bar(%v) has %d full cells, want %d", tc.f, got, tc.full)
			}
			if n := len([]rune(b)); n != 22 {
				t.Errorf("bar(%v) is %d wide, want 22", tc.f, n)
			}
		})
	}
}
