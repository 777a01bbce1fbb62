package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"outpost/internal/client"
	"outpost/internal/message"
)

// The filter module's names, as the routes use them.
const (
	FilterModule = "filter"
	FilterInput  = "input1"
	FilterOutput = "output1"
)

// Message kinds, in the "kind" property that routes select on.
const (
	KindTelemetry = "telemetry"
	KindAlert     = "alert"
	KindFiltered  = "filtered"
)

// Property names the demo's messages carry.
const (
	PropKind = "kind"
	PropSeq  = "seq"
	PropFrom = "from"
)

// Routes are the edge's routes for the demo: telemetry of every device to
// the hub; alerts of alertFrom to the filter module; what the filter lets
// through to alertTo, as a cloud-to-device message that never leaves the
// edge.
func Routes(alertFrom, alertTo string) map[string]any {
	return map[string]any{
		"telemetry": "FROM /messages/* WHERE kind = '" + KindTelemetry + "' INTO $upstream",
		"alerts": "FROM /messages/* WHERE kind = '" + KindAlert + "' AND $connectionDeviceId = '" + alertFrom +
			"' INTO BrokeredEndpoint(\"/modules/" + FilterModule + "/inputs/" + FilterInput + "\")",
		"filtered": "FROM /messages/modules/" + FilterModule + "/outputs/" + FilterOutput +
			" INTO BrokeredEndpoint(\"/devices/" + alertTo + "/messages/devicebound\")",
	}
}

// reading is the JSON body of the demo's telemetry and alerts.
type reading struct {
	DeviceID    string  `json:"deviceId"`
	Seq         int64   `json:"seq,omitempty"`
	Temperature float64 `json:"temperature"`
}

// filterAlert decides what the filter module does with an alert: pass it
// on, tagged, when its temperature is above threshold; drop it
// otherwise (and when it cannot be read).
func filterAlert(msg *message.Message, threshold float64) (*message.Message, bool) {
	var r reading
	if err := json.Unmarshal(msg.Body, &r); err != nil || r.Temperature <= threshold {
		return nil, false
	}
	from := msg.System.ConnDeviceID
	if from == "" {
		from = msg.DeviceID
	}
	return &message.Message{
		Body: msg.Body,
		Properties: map[string]string{
			PropKind:    KindFiltered,
			PropFrom:    from,
			"threshold": strconv.FormatFloat(threshold, 'f', -1, 64),
		},
		System: message.System{
			MessageID:     message.NewID(),
			CorrelationID: msg.System.MessageID,
			ContentType:   "application/json",
		},
	}, true
}

// filter is the demo's module: an in-process module client connected to
// the edge, forwarding hot alerts from its input to its output.
type filter struct {
	c         *client.Client
	threshold float64
	log       *slog.Logger
	// seen and forwarded count alerts in and out.
	seen, forwarded atomic.Int64
}

func startFilter(ctx context.Context, cfg client.Config, threshold float64, log *slog.Logger) (*filter, error) {
	c, err := client.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("filter module: %w", err)
	}
	f := &filter{c: c, threshold: threshold, log: log}
	c.OnInput(func(input string, msg *message.Message) {
		if input != FilterInput {
			return
		}
		f.seen.Add(1)
		out, ok := filterAlert(msg, f.threshold)
		if !ok {
			return
		}
		// The handler holds the input's ack until the output is durable
		// at the edge, so an alert is never dropped between the two.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.SendOutput(sctx, FilterOutput, out); err != nil {
			f.log.Warn("filter: forward alert", "error", err)
			return
		}
		f.forwarded.Add(1)
	})
	if err := c.Connect(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("filter module: %w", err)
	}
	return f, nil
}

func (f *filter) close() error { return f.c.Close() }
