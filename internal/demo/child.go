package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"outpost/internal/client"
	"outpost/internal/message"
	"outpost/internal/twin"
)

// child is a simulated device behind the edge: it sends numbered
// telemetry at a steady rate, reports properties, follows its desired
// properties and receives cloud-to-device messages (which, in the demo,
// come from the filter module without leaving the edge).
type child struct {
	id    string
	cfg   client.Config
	rate  float64
	tally *tally
	log   *slog.Logger

	mu sync.Mutex
	// mu guards the following fields.
	c          *client.Client
	seq        int64          // last telemetry seq used
	reported   map[string]any // everything this device reported, merged
	desired    map[string]any // desired properties as the device knows them
	desiredVer int64
	c2d        []*message.Message
	sender     *sender // nil while not sending
}

func newChild(id string, cfg client.Config, rate float64, t *tally, log *slog.Logger) *child {
	return &child{id: id, cfg: cfg, rate: rate, tally: t, log: log, reported: map[string]any{}, desired: map[string]any{}}
}

// connect opens the device's connection and reads its twin, as a device
// does at start.
func (ch *child) connect(ctx context.Context) error {
	c, err := client.New(ch.cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", ch.id, err)
	}
	c.OnDesired(ch.onDesired)
	c.OnC2D(ch.onC2D)
	c.OnMethod("ping", func(_ context.Context, _ string, payload []byte) (int, []byte) {
		b, _ := json.Marshal(map[string]any{"pong": ch.id, "at": time.Now().UTC().Format(time.RFC3339Nano)})
		return 200, b
	})
	if err := c.Connect(ctx); err != nil {
		c.Close()
		return fmt.Errorf("%s: %w", ch.id, err)
	}
	desired, _, err := c.GetTwin(ctx)
	if err != nil {
		c.Close()
		return fmt.Errorf("%s: %w", ch.id, err)
	}
	ch.mu.Lock()
	ch.c = c
	if v := versionOf(desired); v >= ch.desiredVer {
		ch.desired, ch.desiredVer = stripMeta(desired), v
	}
	ch.mu.Unlock()
	return nil
}

func (ch *child) client() *client.Client {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.c
}

// onDesired applies a desired patch newer than what the device knows.
func (ch *child) onDesired(patch map[string]any, version int64) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if version != 0 && version <= ch.desiredVer {
		return
	}
	twin.Merge(ch.desired, stripMeta(patch))
	if version != 0 {
		ch.desiredVer = version
	}
}

func (ch *child) onC2D(m *message.Message) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.c2d = append(ch.c2d, m)
}

// received returns the cloud-to-device messages of a kind received so far.
func (ch *child) received(kind string) int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	n := 0
	for _, m := range ch.c2d {
		if m.Properties[PropKind] == kind {
			n++
		}
	}
	return n
}

// desiredView is a copy of the desired properties as the device knows
// them.
func (ch *child) desiredView() map[string]any {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	out := map[string]any{}
	twin.Merge(out, ch.desired)
	return out
}

// reportedView is a copy of everything the device reported.
func (ch *child) reportedView() map[string]any {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	out := map[string]any{}
	twin.Merge(out, ch.reported)
	return out
}

// report sends a reported-properties patch and remembers it once the
// edge accepted it.
func (ch *child) report(ctx context.Context, patch map[string]any) error {
	if _, err := ch.client().UpdateReported(ctx, patch); err != nil {
		return fmt.Errorf("%s: %w", ch.id, err)
	}
	ch.mu.Lock()
	// Through JSON, so that the remembered values have the types the
	// hub's copy will have when read back.
	var norm map[string]any
	b, _ := json.Marshal(patch)
	_ = json.Unmarshal(b, &norm)
	twin.Merge(ch.reported, norm)
	ch.mu.Unlock()
	return nil
}

// sendAlert sends one alert with a temperature; routes take alerts to
// the filter module, never to the hub.
func (ch *child) sendAlert(ctx context.Context, temperature float64) error {
	body, _ := json.Marshal(reading{DeviceID: ch.id, Temperature: temperature})
	msg := &message.Message{
		Body:       body,
		Properties: map[string]string{PropKind: KindAlert},
		System:     message.System{MessageID: message.NewID(), ContentType: "application/json", ContentEncoding: "utf-8"},
	}
	if err := ch.client().Send(ctx, msg); err != nil {
		return fmt.Errorf("%s: alert: %w", ch.id, err)
	}
	return nil
}

// restart closes the device's connection and opens a new one, as a
// device that reboots does, and returns how long the new connection took.
// Telemetry pauses meanwhile and resumes after.
func (ch *child) restart(ctx context.Context) (time.Duration, error) {
	sending := ch.stopSending()
	if err := ch.client().Close(); err != nil {
		ch.log.Debug("close before restart", "device", ch.id, "error", err)
	}
	begin := time.Now()
	if err := ch.connect(ctx); err != nil {
		return 0, err
	}
	took := time.Since(begin)
	if sending {
		ch.startSending()
	}
	return took, nil
}

// close stops telemetry and the connection.
func (ch *child) close() error {
	ch.stopSending()
	if c := ch.client(); c != nil {
		return c.Close()
	}
	return nil
}

// sender is one run of a device's telemetry loop: a goroutine that sends
// on a ticker and another that collects the acknowledgements, in order.
type sender struct {
	stop chan struct{}
	done chan struct{}
}

// startSending starts the telemetry loop unless it runs.
func (ch *child) startSending() {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.sender != nil || ch.rate <= 0 {
		return
	}
	s := &sender{stop: make(chan struct{}), done: make(chan struct{})}
	ch.sender = s
	go ch.send(s, ch.c)
}

// stopSending stops the telemetry loop and waits until every message it
// sent was acknowledged or failed. It reports whether the loop ran.
func (ch *child) stopSending() bool {
	ch.mu.Lock()
	s := ch.sender
	ch.sender = nil
	ch.mu.Unlock()
	if s == nil {
		return false
	}
	close(s.stop)
	<-s.done
	return true
}

type pending struct {
	seq int64
	ack <-chan error
}

func (ch *child) send(s *sender, c *client.Client) {
	defer close(s.done)
	acks := make(chan pending, 1024)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for p := range acks {
			if err := <-p.ack; err != nil {
				ch.tally.failed(ch.id)
				ch.log.Warn("telemetry not acknowledged", "device", ch.id, "seq", p.seq, "error", err)
				continue
			}
			ch.tally.acked(ch.id, p.seq)
		}
	}()
	defer func() {
		close(acks)
		<-collected
	}()

	period := time.Duration(float64(time.Second) / ch.rate)
	tick := time.NewTicker(period)
	defer tick.Stop()
	// The first message goes at once, so that even a slow rate shows
	// traffic in every phase.
	for first := true; ; first = false {
		if !first {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
		ch.mu.Lock()
		ch.seq++
		seq := ch.seq
		ch.mu.Unlock()
		// A slow sine: temperatures that look like a sensor's.
		temp := 22 + 6*math.Sin(float64(seq)/20+float64(len(ch.id)))
		body, _ := json.Marshal(reading{DeviceID: ch.id, Seq: seq, Temperature: math.Round(temp*10) / 10})
		msg := &message.Message{
			Body:       body,
			Properties: map[string]string{PropKind: KindTelemetry, PropSeq: strconv.FormatInt(seq, 10)},
			System:     message.System{MessageID: message.NewID(), ContentType: "application/json", ContentEncoding: "utf-8"},
		}
		ch.tally.sent(ch.id)
		acks <- pending{seq: seq, ack: c.SendAsync(msg)}
	}
}

// versionOf reads a twin section's "$version".
func versionOf(section map[string]any) int64 {
	if v, ok := section["$version"].(float64); ok {
		return int64(v)
	}
	return 0
}

// stripMeta drops the top-level "$version", "$metadata" and any other
// "$" key, which describe a twin section rather than belong to it.
func stripMeta(section map[string]any) map[string]any {
	out := make(map[string]any, len(section))
	for k, v := range section {
		if !strings.HasPrefix(k, "$") {
			out[k] = v
		}
	}
	return out
}
