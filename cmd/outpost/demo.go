package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"outpost/internal/demo"
)

// demoOptions are the flags of `outpost demo`; onlineFor and timeout are
// for tests, which play a shorter story.
type demoOptions struct {
	devices    int
	rate       float64
	onlineFor  time.Duration
	offlineFor time.Duration
	keep       bool
	timeout    time.Duration
	dir        string
}

func parseDemoFlags(args []string, stderr io.Writer) (demoOptions, error) {
	o := demoOptions{}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.devices, "devices", demo.DefaultDevices, "number of simulated child devices behind the edge")
	fs.Float64Var(&o.rate, "rate", demo.DefaultRate, "telemetry messages per second, per device")
	fs.DurationVar(&o.offlineFor, "offline-for", demo.DefaultOfflineFor, "how long the edge's upstream link stays cut")
	fs.BoolVar(&o.keep, "keep", false, "leave everything running after the story, with the commands to explore it, until Ctrl-C")
	if err := parseServerFlags(fs, args); err != nil {
		return o, err
	}
	switch {
	case o.devices < 1 || o.devices > demo.MaxDevices:
		return o, fmt.Errorf("demo: --devices %d: want 1 to %d", o.devices, demo.MaxDevices)
	case o.rate <= 0 || o.rate > demo.MaxRate:
		return o, fmt.Errorf("demo: --rate %g: want more than 0 and at most %g", o.rate, demo.MaxRate)
	case o.offlineFor <= 0:
		return o, fmt.Errorf("demo: --offline-for %v: want a positive duration", o.offlineFor)
	}
	return o, nil
}

// runDemo is `outpost demo`: the whole offline story in one process.
func runDemo(ctx context.Context, args []string) error {
	o, err := parseDemoFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	_, err = playDemo(ctx, o, os.Stdout, isTerminal(os.Stdout))
	return err
}

// isTerminal reports whether f is a terminal, where the demo draws live
// counters; elsewhere it prints plain lines.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// playDemo sets the demo up, plays it, prints the summary and, with
// keep, leaves it running until ctx ends. It fails when a check failed,
// and then keeps the demo's directory (with its log) for a look.
func playDemo(ctx context.Context, o demoOptions, w io.Writer, term bool) (demo.Summary, error) {
	var rep interface {
		demo.Reporter
		finish()
	}
	if term {
		rep = &termReporter{w: w}
	} else {
		rep = &plainReporter{w: w}
	}
	begin := time.Now()
	d, err := demo.New(ctx, demo.Config{
		Devices:    o.devices,
		Rate:       o.rate,
		OnlineFor:  o.onlineFor,
		OfflineFor: o.offlineFor,
		Timeout:    o.timeout,
		Dir:        o.dir,
		Reporter:   rep,
	})
	if err != nil {
		rep.finish()
		return demo.Summary{}, err
	}
	keepFiles := false
	defer func() {
		if err := d.Close(); err != nil {
			fmt.Fprintf(w, "demo: stopping: %v\n", err)
		}
		if !keepFiles {
			os.RemoveAll(d.Dir())
		}
	}()
	s, err := d.Run(ctx)
	rep.finish()
	if err != nil {
		if ctx.Err() != nil {
			return s, errors.New("demo: interrupted")
		}
		keepFiles = true
		return s, fmt.Errorf("%w (logs: %s)", err, filepath.Join(d.Dir(), "demo.log"))
	}
	printSummary(w, s, time.Since(begin))
	if !s.OK() {
		keepFiles = true
		return s, fmt.Errorf("demo: %d of %d checks failed; logs: %s", len(s.FailedChecks()), len(s.Checks), filepath.Join(d.Dir(), "demo.log"))
	}
	if o.keep {
		printExplore(w, d.Explore())
		if err := d.Serve(ctx); err != nil {
			return s, err
		}
		fmt.Fprintln(w, "\nstopping the demo")
	}
	return s, nil
}

// printSummary writes the summary table and the checks.
func printSummary(w io.Writer, s demo.Summary, total time.Duration) {
	inOrder := fmt.Sprintf("%d", s.InOrder)
	if s.OutOfOrder == 0 && s.Delivered > 0 {
		inOrder += "  (all)"
	}
	rows := [][2]string{
		{"messages sent", fmt.Sprint(s.Sent)},
		{"acked by the edge", fmt.Sprint(s.Acked)},
		{"delivered to the hub", fmt.Sprint(s.Delivered)},
		{"in order", inOrder},
		{"duplicates", fmt.Sprint(s.Duplicates)},
		{"lost", fmt.Sprint(s.Lost)},
		{"expired", fmt.Sprint(s.Expired)},
		{"queued during the cut", fmt.Sprint(s.QueuedPeak)},
		{"drain time", fmt.Sprintf("%s  (link back after %s)", short(s.DrainTime), short(s.LinkReturn))},
		{"twins reconciled after", short(s.ReconcileTime)},
		{"reported twins match", fmt.Sprintf("%s  (%d/%d devices)", matchWord(s.ReportedMatch == s.Devices), s.ReportedMatch, s.Devices)},
		{"desired twins match", fmt.Sprintf("%s  (%d/%d devices)", matchWord(s.DesiredMatch == s.Devices), s.DesiredMatch, s.Devices)},
		{"child → module → child", fmt.Sprintf("%d of %d alerts  (%d filtered out)", s.AlertsReceived, s.AlertsExpected, s.AlertsSent-s.AlertsExpected)},
	}
	fmt.Fprintf(w, "\nSummary: %d devices × %g msg/s, %s offline, %s in all\n", s.Devices, s.Rate, short(s.OfflineFor), short(total))
	for _, r := range rows {
		fmt.Fprintf(w, "  %-24s %s\n", r[0], r[1])
	}
	fmt.Fprintln(w)
	for _, c := range s.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s  %s: %s\n", mark, c.Name, c.Detail)
	}
	if s.OK() {
		fmt.Fprintf(w, "\nAll %d checks passed.\n", len(s.Checks))
	} else {
		fmt.Fprintf(w, "\n%d of %d checks FAILED.\n", len(s.FailedChecks()), len(s.Checks))
	}
}

// printExplore tells how to look around the running demo.
func printExplore(w io.Writer, x demo.Explore) {
	bin := "outpost"
	if strings.Contains(os.Args[0], "go-build") {
		bin = "go run ./cmd/outpost"
	}
	first := x.Children[0]
	fmt.Fprintf(w, "\nEverything keeps running (telemetry too) until Ctrl-C. In another shell:\n\n")
	fmt.Fprintf(w, "  export %s='%s'\n", envHubConnectionString, x.HubConnectionString)
	fmt.Fprintf(w, "  export %s='%s'\n\n", envCA, x.CAFile)
	for _, c := range []string{
		"device-identity list",
		"device-identity list-children --device-id " + x.EdgeID,
		"monitor-events --device-id " + first,
		"device-twin show --device-id " + first,
		"device-twin update --device-id " + first + ` --desired '{"alertThreshold":25}'`,
		"invoke-device-method --device-id " + first + " --method-name ping",
		"c2d-message send --device-id " + first + " --data hello",
		`query -q "SELECT deviceId, properties.reported.firmware FROM devices WHERE capabilities.iotEdge = false"`,
	} {
		fmt.Fprintf(w, "  %s %s\n", bin, c)
	}
	fmt.Fprintf(w, "\n  edge status:   curl --cacert %s https://localhost:%s/status\n", x.CAFile, port(x.EdgeHTTPSAddr))
	fmt.Fprintf(w, "  hub:           https://%s (service API), mqtts://%s\n", x.HubHTTPSAddr, x.HubMQTTAddr)
	fmt.Fprintf(w, "  edge:          mqtts://%s, its link to the hub through %s\n", x.EdgeMQTTAddr, x.UpstreamProxyAddr)
	fmt.Fprintf(w, "  device %s through the edge:\n    %s\n", first, x.ChildConnectionStrings[first])
	if x.LogFile != "" {
		fmt.Fprintf(w, "  logs:          %s\n", x.LogFile)
	}
}

func port(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}

func matchWord(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

// short formats a duration as people read it: 850ms, 1.2s, 15s.
func short(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// plainReporter prints the story as plain lines, for logs and pipes:
// counters every few seconds rather than live.
type plainReporter struct {
	w         io.Writer
	lastPrint time.Time
	phase     int
}

func (r *plainReporter) Phase(n int, title string) {
	r.phase, r.lastPrint = n, time.Now()
	if n == 0 {
		fmt.Fprintf(r.w, "==> %s\n", title)
		return
	}
	fmt.Fprintf(r.w, "\n==> %d. %s\n", n, title)
}

func (r *plainReporter) Step(text string) { fmt.Fprintf(r.w, "    - %s\n", text) }

func (r *plainReporter) Progress(p demo.Progress) {
	if time.Since(r.lastPrint) < 5*time.Second {
		return
	}
	r.lastPrint = time.Now()
	fmt.Fprintf(r.w, "      %s\n", counters(p))
}

func (r *plainReporter) finish() {}

// termReporter draws a live status line under the story, with a spinner
// and a progress bar, redrawn in place.
type termReporter struct {
	w      io.Writer
	frame  int
	status string // the status line on screen, "" when none
}

const (
	// termWidth is the longest status line: one that wraps on a terminal
	// of 80 columns could not be redrawn in place.
	termWidth = 79
	termClear = "\r\033[K"
	termBold  = "\033[1m"
	termDim   = "\033[2m"
	termReset = "\033[0m"
)

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

func (r *termReporter) Phase(n int, title string) {
	r.clear()
	if n == 0 {
		fmt.Fprintf(r.w, "%s▶ %s%s\n", termBold, title, termReset)
	} else {
		fmt.Fprintf(r.w, "\n%s▶ %d. %s%s\n", termBold, n, title, termReset)
	}
	r.redraw()
}

func (r *termReporter) Step(text string) {
	r.clear()
	fmt.Fprintf(r.w, "  • %s\n", text)
	r.redraw()
}

func (r *termReporter) Progress(p demo.Progress) {
	r.frame++
	link := "up"
	if !p.LinkUp {
		link = "DOWN"
	}
	line := fmt.Sprintf("%s sent %d  acked %d  hub %d  edge queue %d  link %s",
		spinner[r.frame%len(spinner)], p.Sent, p.Acked, p.Delivered, p.Queued, link)
	switch {
	case p.DrainTotal > 0:
		line += fmt.Sprintf("  drain %s %d/%d", bar(float64(p.DrainDone)/float64(p.DrainTotal), 10), p.DrainDone, p.DrainTotal)
	case p.Duration > 0:
		line += fmt.Sprintf("  %s %s/%s", bar(p.Elapsed.Seconds()/p.Duration.Seconds(), 10), short(min(p.Elapsed, p.Duration)), short(p.Duration))
	}
	// A line that wraps could not be redrawn in place.
	if rs := []rune(line); len(rs) > termWidth {
		line = string(rs[:termWidth])
	}
	r.status = termDim + line + termReset
	fmt.Fprint(r.w, termClear+r.status)
}

func (r *termReporter) clear() {
	if r.status != "" {
		fmt.Fprint(r.w, termClear)
	}
}

func (r *termReporter) redraw() {
	if r.status != "" {
		fmt.Fprint(r.w, r.status)
	}
}

func (r *termReporter) finish() {
	r.clear()
	r.status = ""
}

// counters is the one-line view of the live counters.
func counters(p demo.Progress) string {
	link := "up"
	if !p.LinkUp {
		link = "DOWN"
	}
	return fmt.Sprintf("sent %d  acked %d  at hub %d  queued at edge %d  link %s", p.Sent, p.Acked, p.Delivered, p.Queued, link)
}

// bar draws a progress bar of width cells for a fraction in [0, 1].
func bar(f float64, width int) string {
	f = max(0, min(f, 1))
	n := int(f*float64(width) + 0.5)
	return "[" + strings.Repeat("█", n) + strings.Repeat("░", width-n) + "]"
}
