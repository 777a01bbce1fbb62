package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"outpost/internal/message"
	"outpost/internal/service"
)

// runMonitorEvents is `outpost monitor-events`, shaped like
// `az iot hub monitor-events`: it streams telemetry as it reaches the hub,
// through the hub's REST API (GET /outpost/events, NDJSON).
//
// -o json prints one object a line:
//
//	{"deviceId":…,"moduleId":…,"body":…,"properties":{…},"systemProperties":{"messageId":…,…,"enqueuedTime":…}}
//
// body is, as az shows it: the JSON value itself when the content type is
// JSON (application/json or …+json) and the body parses; else the text
// when the body is valid UTF-8; else its base64, with "bodyEncoding":
// "base64" added to the line. -o table prints one line a message: time,
// origin, body, properties.
func runMonitorEvents(ctx context.Context, args []string) error {
	c := newHubCommand("monitor-events", "[--device-id D] [--timeout S] [-o json|table] [--from-start] [--consumer-group G]")
	device := c.String("device-id", "", "only this device and its modules")
	timeout := c.Int("timeout", 300, "stop after this many seconds without a message (0: never), as az does")
	fromStart := c.Bool("from-start", false, "read the stream from its oldest retained message instead of from now")
	group := c.String("consumer-group", "", "a named reader that resumes where it stopped; default $Default reads from now")
	out := c.output("json", "json", "table") // events have no tsv form
	c.check(func() error {
		if *timeout < 0 {
			return fmt.Errorf("--timeout: want seconds >= 0, not %d", *timeout)
		}
		return nil
	})
	return c.run(args, func(s *service.Client) (any, error) {
		return nil, monitorEvents(ctx, s, service.EventsOptions{DeviceID: *device, FromStart: *fromStart, ConsumerGroup: *group},
			time.Duration(*timeout)*time.Second, *out, stdout, stderr)
	})
}

// monitorEvents streams events to w until ctx ends or no event came for
// idle (when idle > 0).
func monitorEvents(ctx context.Context, c *service.Client, opts service.EventsOptions, idle time.Duration, format string, w, progress io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		timer   *time.Timer
		expired bool
	)
	if idle > 0 {
		timer = time.AfterFunc(idle, func() {
			mu.Lock()
			expired = true
			mu.Unlock()
			cancel()
		})
		defer timer.Stop()
	}
	n := 0
	ready := func() {
		fmt.Fprintln(progress, "Starting event monitor, use ctrl-c to stop...")
	}
	err := c.MonitorEvents(ctx, opts, ready, func(ev service.Event) error {
		if timer != nil {
			timer.Reset(idle)
		}
		n++
		line, err := formatEvent(ev, format)
		if err != nil {
			return err
		}
		_, err = w.Write(line)
		return err
	})
	mu.Lock()
	defer mu.Unlock()
	if expired {
		fmt.Fprintf(progress, "Stopped after %v without a message (%d received).\n", idle, n)
	}
	if err != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// eventLine is the -o json shape of one message.
type eventLine struct {
	DeviceID         string            `json:"deviceId"`
	ModuleID         string            `json:"moduleId"`
	Body             any               `json:"body"`
	BodyEncoding     string            `json:"bodyEncoding,omitempty"`
	Properties       map[string]string `json:"properties"`
	SystemProperties message.System    `json:"systemProperties"`
}

// displayBody renders a body as az does; see runMonitorEvents.
func displayBody(body []byte, contentType string) (any, string) {
	if isJSONType(contentType) && json.Valid(body) {
		return json.RawMessage(body), ""
	}
	if utf8.Valid(body) {
		return string(body), ""
	}
	return base64.StdEncoding.EncodeToString(body), "base64"
}

func isJSONType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// formatEvent renders one event as a line in the chosen format.
func formatEvent(ev service.Event, format string) ([]byte, error) {
	body, encoding := displayBody(ev.Body, ev.System.ContentType)
	if format == "table" {
		origin := ev.DeviceID
		if ev.ModuleID != "" {
			origin += "/" + ev.ModuleID
		}
		b, _ := json.Marshal(body)
		if s, ok := body.(string); ok {
			b = []byte(s)
		}
		keys := make([]string, 0, len(ev.Properties))
		for k := range ev.Properties {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var props []string
		for _, k := range keys {
			props = append(props, k+"="+ev.Properties[k])
		}
		line := strings.Join([]string{ev.System.EnqueuedTime.UTC().Format(time.RFC3339Nano), tableSafe(origin),
			tableSafe(string(b)), tableSafe(strings.Join(props, ";"))}, "  ")
		return []byte(strings.TrimRight(line, " ") + "\n"), nil
	}
	props := ev.Properties
	if props == nil {
		props = map[string]string{}
	}
	var buf strings.Builder
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(eventLine{DeviceID: ev.DeviceID, ModuleID: ev.ModuleID, Body: body, BodyEncoding: encoding,
		Properties: props, SystemProperties: ev.System}); err != nil {
		return nil, fmt.Errorf("format event: %w", err)
	}
	return []byte(buf.String()), nil
}
