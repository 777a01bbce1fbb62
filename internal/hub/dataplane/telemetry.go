package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/edgeproto"
	"outpost/internal/gateway"
	"outpost/internal/message"
)

// HeaderEnvelope carries a stored message's ids and properties as JSON;
// the NATS payload is the body, unchanged.
const HeaderEnvelope = "Outpost-Msg"

// envelope is everything of a message but its body.
type envelope struct {
	DeviceID   string            `json:"deviceId"`
	ModuleID   string            `json:"moduleId,omitempty"`
	Properties map[string]string `json:"properties,omitempty"`
	System     message.System    `json:"systemProperties"`
}

// encodeMsg builds the NATS message that stores msg on subject.
func encodeMsg(subject string, msg *message.Message) (*nats.Msg, error) {
	// json.Marshal escapes control characters, so the header value never
	// holds CR or LF.
	env, err := json.Marshal(envelope{DeviceID: msg.DeviceID, ModuleID: msg.ModuleID, Properties: msg.Properties, System: msg.System})
	if err != nil {
		return nil, fmt.Errorf("encode message: %w", err)
	}
	nm := nats.NewMsg(subject)
	nm.Header.Set(HeaderEnvelope, string(env))
	nm.Data = msg.Body
	return nm, nil
}

// decodeMsg reverses encodeMsg.
func decodeMsg(h nats.Header, data []byte) (*message.Message, error) {
	raw := h.Get(HeaderEnvelope)
	if raw == "" {
		return nil, errors.New("decode message: no " + HeaderEnvelope + " header")
	}
	var env envelope
	if err := json.Unmarshal([]byte(raw), &env); err != nil {
		return nil, fmt.Errorf("decode message: %w", err)
	}
	return &message.Message{DeviceID: env.DeviceID, ModuleID: env.ModuleID, Body: data, Properties: env.Properties, System: env.System}, nil
}

// Telemetry writes msgs to the telemetry stream and returns once all of
// them are acknowledged by JetStream. Publishing is asynchronous, so a
// batch costs one round of acknowledgements, not one per message.
//
// An edge's messages carry replay keys (edgeproto): JetStream drops a
// message whose key it stored within the duplicate window, and each drop
// is counted for the edge. Before the batch is acknowledged, the edge's
// store records cover its sequences, so a restored copy of the store is
// told to move past them (storePosition).
func (p *Plane) Telemetry(ctx context.Context, via gateway.Identity, msgs []*message.Message) error {
	now := p.now().UTC()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	var high map[string]uint64 // store id -> highest sequence in msgs
	for _, m := range msgs {
		m.System.EnqueuedTime = now
		var msgID string
		if via.Edge {
			k, ok := p.takeReplayKey(via, m)
			if ok {
				msgID = k.MsgID(via.DeviceID)
				if high == nil {
					high = map[string]uint64{}
				}
				high[k.StoreID] = max(high[k.StoreID], k.Seq)
			}
		}
		nm, err := encodeMsg(telemetrySubject(m.DeviceID, m.ModuleID), m)
		if err != nil {
			return err
		}
		opts := []jetstream.PublishOpt{jetstream.WithExpectStream(StreamTelemetry), jetstream.WithStallWait(5 * time.Second)}
		if msgID != "" {
			opts = append(opts, jetstream.WithMsgID(msgID))
		}
		f, err := p.js.PublishMsgAsync(nm, opts...)
		if err != nil {
			return fmt.Errorf("store telemetry: %w", err)
		}
		futures = append(futures, f)
	}
	if high != nil {
		if err := p.positions.stored(ctx, via.DeviceID, high); err != nil {
			return fmt.Errorf("store telemetry: %w", err)
		}
	}
	dups := 0
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				dups++
			}
		case err := <-f.Err():
			return fmt.Errorf("store telemetry: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("store telemetry: %w", ctx.Err())
		}
	}
	if dups > 0 {
		p.edgeStats.duplicates(via.DeviceID, dups)
	}
	// Batches hold one identity's messages, or an edge's for a few.
	last := -1
	for i, m := range msgs {
		if last < 0 || m.DeviceID != msgs[last].DeviceID || m.ModuleID != msgs[last].ModuleID {
			p.pres.activity(m.DeviceID, m.ModuleID)
			last = i
		}
	}
	return nil
}

// takeReplayKey moves an edge's replay key out of m's application
// properties into its system properties. The edge id is the
// authenticated connection's: an edge cannot speak for another edge's
// stores. A malformed key is logged, and the message stored without
// de-duplication: a duplicate is better than a loss.
func (p *Plane) takeReplayKey(via gateway.Identity, m *message.Message) (edgeproto.ReplayKey, bool) {
	if m.Properties == nil {
		return edgeproto.ReplayKey{}, false
	}
	k, eid, err := edgeproto.TakeReplayKey(m.Properties)
	if len(m.Properties) == 0 {
		m.Properties = nil
	}
	if errors.Is(err, edgeproto.ErrNoReplayKey) {
		return k, false
	}
	if err != nil {
		p.log.Warn("edge message with a bad replay key; stored without de-duplication", "edge", via.DeviceID, "error", err)
		return k, false
	}
	if eid != via.DeviceID {
		p.log.Warn("edge message names another edge; using the connection's id", "edge", via.DeviceID, "eid", clipID(eid))
	}
	m.System.EdgeID, m.System.EdgeStore, m.System.EdgeSeq = via.DeviceID, k.StoreID, k.Seq
	return k, true
}

// clipID bounds an untrusted id in a log line.
func clipID(s string) string { return s[:min(len(s), 260)] }

// Event is one stored telemetry message as the events API serves it: the
// message (body base64 in JSON) and its stream sequence number.
type Event struct {
	message.Message
	SequenceNumber uint64 `json:"sequenceNumber"`
}

// DefaultConsumerGroup reads from now on, with a consumer of its own per
// reader, as IoT Hub's $Default group does for a new reader.
const DefaultConsumerGroup = "$Default"

// EventsOptions selects what Events reads.
type EventsOptions struct {
	// DeviceID limits the stream to one device and its modules.
	DeviceID string
	// FromStart reads from the oldest retained message instead of now.
	FromStart bool
	// ConsumerGroup other than "" or $Default names a durable reader:
	// each group keeps its own position, and readers sharing a group
	// share its messages; a new group starts as FromStart says.
	ConsumerGroup string
}

// Events reads the telemetry stream and calls fn for every message, in
// order, until ctx ends (then it returns nil) or fn or the stream fails.
// ready, when not nil, is called once the reader is in place: messages
// stored after it returns are seen.
func (p *Plane) Events(ctx context.Context, opts EventsOptions, ready func(), fn func(Event) error) error {
	filters := []string{subjTelemetry + ">"}
	if opts.DeviceID != "" {
		filters = []string{telemetrySubject(opts.DeviceID, ""), telemetrySubject(opts.DeviceID, "") + ".>"}
	}
	policy := jetstream.DeliverNewPolicy
	if opts.FromStart {
		policy = jetstream.DeliverAllPolicy
	}
	var (
		cons    jetstream.Consumer
		err     error
		durable = opts.ConsumerGroup != "" && opts.ConsumerGroup != DefaultConsumerGroup
	)
	if durable {
		cons, err = p.groupConsumer(ctx, opts, filters, policy)
	} else {
		// An ephemeral consumer of our own, made now: an ordered consumer
		// is made at its first fetch and re-made at each, and from "new"
		// each time until it has read something, which loses what
		// arrives in between.
		cons, err = p.tel.CreateConsumer(ctx, jetstream.ConsumerConfig{
			FilterSubjects:    filters,
			DeliverPolicy:     policy,
			AckPolicy:         jetstream.AckNonePolicy,
			MemoryStorage:     true,
			InactiveThreshold: time.Minute,
		})
		if err == nil {
			name := cons.CachedInfo().Name
			defer func() {
				dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = p.tel.DeleteConsumer(dctx, name)
			}()
		}
	}
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	if ready != nil {
		ready()
	}
	return p.consume(ctx, cons, durable, fn)
}

// consume calls fn for each message of cons, in order, on the caller's
// goroutine. It uses Consume rather than the Messages iterator: the
// iterator's channel subscription drops what arrives while its channel is
// full, and a dropped message or pull status leaves it waiting, with
// nothing pulled, until two heartbeats are missed (seconds; and a dropped
// message of an ephemeral reader is lost). Consume's callback queue drops
// nothing and pulls again as the callback returns.
func (p *Plane) consume(ctx context.Context, cons jetstream.Consumer, durable bool, fn func(Event) error) error {
	msgs := make(chan jetstream.Msg)
	leaving := make(chan struct{})
	failed := make(chan error, 1)
	check := make(chan struct{}, 1)
	fail := func(err error) {
		select {
		case failed <- err:
		default:
		}
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-leaving:
			// Fetched but never read: the group's other readers get it
			// now rather than after the ack wait.
			if durable {
				_ = m.Nak()
			}
		}
	}, jetstream.PullMaxMessages(256), jetstream.PullHeartbeat(2*time.Second),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			switch {
			case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrBadRequest),
				errors.Is(err, jetstream.ErrConnectionClosed):
				fail(err) // Consume has stopped
			case errors.Is(err, jetstream.ErrNoHeartbeat):
				// Consume pulls again by itself. A consumer reaped as
				// inactive sends no status, so look it up.
				select {
				case check <- struct{}{}:
				default:
				}
			default:
				p.log.Debug("events reader", "err", err)
			}
		}))
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	// Taken now, while the subscription is live: it closes once the
	// callback can no longer run.
	closed := cc.Closed()
	defer func() {
		close(leaving)
		// Draining ends our pull requests, so a group's messages go to
		// its remaining readers rather than to this one's dead inbox, and
		// passes what was fetched through the callback, which naks it.
		cc.Drain()
		<-closed
	}()
	for {
		select {
		case m := <-msgs:
			ev, err := eventOf(m)
			if err != nil {
				p.log.Warn("skip undecodable telemetry", "subject", m.Subject(), "err", err)
			} else if err := fn(ev); err != nil {
				return err
			}
			if durable {
				if err := m.Ack(); err != nil && ctx.Err() == nil {
					return fmt.Errorf("read events: ack: %w", err)
				}
			}
		case err := <-failed:
			return fmt.Errorf("read events: %w", err)
		case <-check:
			if _, err := cons.Info(ctx); errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("read events: %w", err)
			}
			p.log.Debug("events reader missed a heartbeat; pulling again")
		case <-closed:
			select {
			case err := <-failed:
				return fmt.Errorf("read events: %w", err)
			default:
			}
			if ctx.Err() != nil {
				return nil
			}
			return errors.New("read events: the reader stopped")
		case <-ctx.Done():
			return nil
		}
	}
}

func eventOf(m jetstream.Msg) (Event, error) {
	msg, err := decodeMsg(m.Headers(), m.Data())
	if err != nil {
		return Event{}, err
	}
	ev := Event{Message: *msg}
	if md, err := m.Metadata(); err == nil {
		ev.SequenceNumber = md.Sequence.Stream
	}
	return ev, nil
}

// groupConsumer returns the durable consumer of a consumer group, made on
// first use. Its name encodes the group and the device filter, since a
// durable's filter cannot change.
func (p *Plane) groupConsumer(ctx context.Context, opts EventsOptions, filters []string, policy jetstream.DeliverPolicy) (jetstream.Consumer, error) {
	name := "cg-" + enc(opts.ConsumerGroup)
	if opts.DeviceID != "" {
		name += "-" + enc(opts.DeviceID)
	}
	if c, err := p.tel.Consumer(ctx, name); err == nil {
		return c, nil
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, err
	}
	c, err := p.tel.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        name,
		Description:    "consumer group " + strings.ReplaceAll(opts.ConsumerGroup, "\n", " "),
		FilterSubjects: filters,
		DeliverPolicy:  policy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		// A group nobody reads for as long as the stream keeps messages
		// has nothing left to resume.
		InactiveThreshold: p.cfg.Retention,
	})
	if errors.Is(err, jetstream.ErrConsumerExists) {
		return p.tel.Consumer(ctx, name)
	}
	return c, err
}
