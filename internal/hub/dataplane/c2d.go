package dataplane

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/gateway"
	"outpost/internal/message"
	"outpost/internal/status"
)

var (
	errQueueFull = func(d string, n int) error {
		return &status.Error{Status: http.StatusForbidden, Code: "DeviceMaximumQueueDepthExceeded",
			Message: fmt.Sprintf("device %s has %d messages pending: the queue is full", d, n)}
	}
	errLockLost = &status.Error{Status: http.StatusPreconditionFailed, Code: status.CodeDeviceMessageLockLost,
		Message: "the lock token is not valid, or the lock expired"}
)

// SendC2D queues msg for deviceID and returns once it is stored. The
// message lives until System.Expiry (RFC 3339) when set, else for the
// configured C2DTTL. Its id is System.MessageID, made up when empty.
// Errors are *status.Error where the caller is at fault: 404 for
// an unknown device, 400 for a bad expiry or size, 403 when the device
// already has MaxC2DPending messages queued.
func (p *Plane) SendC2D(ctx context.Context, deviceID string, msg *message.Message) error {
	if _, err := p.h.GetDevice(deviceID); err != nil {
		return err
	}
	if len(msg.Body) > MaxC2DSize {
		return &status.Error{Status: http.StatusRequestEntityTooLarge, Code: status.CodeMessageTooLarge,
			Message: fmt.Sprintf("c2d message body is %d bytes: the limit is %d", len(msg.Body), MaxC2DSize)}
	}
	now := p.now().UTC()
	ttl := p.cfg.C2DTTL
	if msg.System.Expiry != "" {
		exp, err := time.Parse(time.RFC3339Nano, msg.System.Expiry)
		if err != nil {
			return badArgument("expiry %q is not an RFC 3339 time", msg.System.Expiry)
		}
		if ttl = exp.Sub(now); ttl <= 0 {
			return badArgument("expiry %s is in the past", msg.System.Expiry)
		}
		if ttl > MaxC2DTTL {
			return badArgument("expiry %s is more than %v away", msg.System.Expiry, MaxC2DTTL)
		}
	} else {
		msg.System.Expiry = now.Add(ttl).Format(time.RFC3339Nano)
	}
	// JetStream counts TTLs in whole seconds, at least one.
	ttl = time.Duration(math.Ceil(ttl.Seconds())) * time.Second
	msg.DeviceID, msg.ModuleID = deviceID, ""
	if msg.System.MessageID == "" {
		msg.System.MessageID = message.NewID()
	}
	msg.System.To = "/devices/" + deviceID + "/messages/deviceBound"
	msg.System.EnqueuedTime = now
	msg.System.ConnDeviceID, msg.System.ConnModuleID = "", ""
	nm, err := encodeMsg(c2dSubject(deviceID), msg)
	if err != nil {
		return err
	}
	_, err = p.js.PublishMsg(ctx, nm, jetstream.WithExpectStream(StreamC2D), jetstream.WithMsgTTL(ttl))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum messages per subject") {
		return errQueueFull(deviceID, p.cfg.MaxC2DPending)
	}
	if err != nil {
		return fmt.Errorf("queue c2d message: %w", err)
	}
	// Stored: tell the replica holding the device's connection. The
	// stream's own subject is no signal, since a core subscriber may see
	// the message before the stream has stored it.
	if err := p.nc.Publish(c2dWakeSubject(deviceID), nil); err != nil {
		p.log.Warn("c2d: wake delivery", "device", deviceID, "err", err)
	}
	return nil
}

// deliverC2D sends a connected device its queue over MQTT, in order, one
// message at a time, and deletes each once the device acknowledged it.
// It runs until the session ends; unacknowledged messages are sent again
// at the next connection, up to MaxDeliveryCount deliveries in all.
func (p *Plane) deliverC2D(ctx context.Context, s gateway.Session) {
	d := s.Identity().DeviceID
	subj := c2dSubject(d)
	// SendC2D, on any replica, announces each message it stored.
	wake := make(chan struct{}, 1)
	sub, err := p.nc.Subscribe(c2dWakeSubject(d), func(*nats.Msg) {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	if err != nil {
		p.log.Error("c2d delivery: subscribe", "device", d, "err", err)
		return
	}
	defer sub.Unsubscribe()
	log := p.log.With("device", d, "via", s.Identity().Via)
	next := uint64(1)
	var retry time.Duration
	for {
		raw, err := p.c2d.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			if !waitWake(ctx, wake, 0) {
				return
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("c2d delivery: read queue", "err", err)
			if !waitWake(ctx, nil, time.Second) {
				return
			}
			continue
		}
		msg, err := decodeMsg(raw.Header, raw.Data)
		if err != nil {
			log.Error("c2d delivery: dropping undecodable message", "seq", raw.Sequence, "err", err)
			p.deleteC2D(raw.Sequence)
			next = raw.Sequence + 1
			continue
		}
		// Counted before it is sent, so that no crash loses a count; an
		// attempt that sent nothing is taken back.
		key := deliveryKey(raw.Sequence, raw.Time)
		n, err := p.countDelivery(ctx, key, 1)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("c2d delivery: count delivery", "err", err)
			if !waitWake(ctx, nil, time.Second) {
				return
			}
			continue
		}
		if n > p.cfg.MaxDeliveryCount {
			log.Info("c2d message reached the max delivery count: dropped", "seq", raw.Sequence, "deliveries", n-1)
			p.deleteC2D(raw.Sequence)
			next = raw.Sequence + 1
			continue
		}
		select {
		case err = <-s.SendC2D(msg):
		case <-ctx.Done():
			return
		}
		switch {
		case err == nil:
			p.deleteC2D(raw.Sequence)
			next, retry = raw.Sequence+1, 0
			p.pres.activity(d, "")
		case errors.Is(err, gateway.ErrNotSubscribed):
			p.uncountDelivery(key)
			// A device subscribes after CONNACK, and the gateway does not
			// announce subscriptions: look again, less and less often.
			retry = min(max(2*retry, 50*time.Millisecond), 5*time.Second)
			if !waitWake(ctx, wake, retry) {
				return
			}
		case errors.Is(err, gateway.ErrNotConnected):
			p.uncountDelivery(key)
			return
		case errors.Is(err, gateway.ErrConnectionLost):
			return // sent and not acknowledged: a delivery, counted
		default:
			log.Warn("c2d delivery: dropping message the device cannot take", "seq", raw.Sequence, "err", err)
			p.deleteC2D(raw.Sequence)
			next = raw.Sequence + 1
		}
	}
}

// deliveryKey names a C2D message's delivery count: its stream sequence
// and the time the stream stored it (both in a JetStream ack subject),
// so a count never outlives a recreated stream's reused sequence.
func deliveryKey(seq uint64, stored time.Time) string {
	return strconv.FormatUint(seq, 10) + "." + strconv.FormatInt(stored.UnixNano(), 10)
}

// countDelivery adds delta to a message's delivery count and returns the
// new count; delta 0 only reads it. The count lives in JetStream, so
// MQTT and HTTPS deliveries on any replica, before and after a restart,
// add up to the one count that MaxDeliveryCount bounds.
func (p *Plane) countDelivery(ctx context.Context, key string, delta int) (int, error) {
	for {
		n := 0
		e, err := p.deliveries.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return 0, fmt.Errorf("c2d delivery count: %w", err)
		default:
			if n, err = strconv.Atoi(string(e.Value())); err != nil {
				return 0, fmt.Errorf("c2d delivery count %q: %w", e.Value(), err)
			}
		}
		if delta == 0 || n+delta < 0 {
			return n, nil
		}
		val := []byte(strconv.Itoa(n + delta))
		if e == nil {
			_, err = p.deliveries.Create(ctx, key, val)
		} else {
			_, err = p.deliveries.Update(ctx, key, val, e.Revision())
		}
		if err == nil {
			return n + delta, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("c2d delivery count: %w", err)
		}
		// Another delivery or settlement wrote it meanwhile: again.
	}
}

// uncountDelivery takes back the count of an attempt that sent nothing.
func (p *Plane) uncountDelivery(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.countDelivery(ctx, key, -1); err != nil {
		p.log.Warn("c2d: take back a delivery count", "key", key, "err", err)
	}
}

// waitWake waits for a wake-up, or d when d > 0, or ctx; it reports
// false when ctx ended.
func waitWake(ctx context.Context, wake <-chan struct{}, d time.Duration) bool {
	var timer <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-wake:
		return true
	case <-timer:
		return true
	case <-ctx.Done():
		return false
	}
}

// deleteC2D removes a delivered or dropped message from the queue. One
// not found expired or was settled by another path meanwhile: nothing
// is left to do.
func (p *Plane) deleteC2D(seq uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.c2d.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		p.log.Debug("c2d: delete message", "seq", seq, "err", err)
	}
}

// httpsConsumer names the durable consumer an HTTPS device polls through.
func httpsConsumer(deviceID string) string { return "https-" + enc(deviceID) }

func (p *Plane) consumerFor(ctx context.Context, deviceID string) (jetstream.Consumer, error) {
	if c, ok := p.consumers.Load(deviceID); ok {
		return c.(jetstream.Consumer), nil
	}
	c, err := p.c2d.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       httpsConsumer(deviceID),
		FilterSubject: c2dSubject(deviceID),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.cfg.LockTimeout,
		MaxDeliver:    p.cfg.MaxDeliveryCount,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: p.cfg.MaxC2DPending,
		// Devices are told to poll every 25 minutes; a consumer unused
		// for a day is removed, and made again on the next poll.
		InactiveThreshold: 24 * time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("c2d consumer: %w", err)
	}
	p.consumers.Store(deviceID, c)
	return c, nil
}

// fetchC2D takes the next message of the device's HTTPS consumer, nil
// when there is none.
func (p *Plane) fetchC2D(ctx context.Context, deviceID string) (jetstream.Msg, error) {
	for attempt := 0; ; attempt++ {
		c, err := p.consumerFor(ctx, deviceID)
		if err != nil {
			return nil, err
		}
		var m jetstream.Msg
		batch, err := c.FetchNoWait(1)
		if err == nil {
			for got := range batch.Messages() {
				m = got
			}
			err = batch.Error()
		}
		if err == nil || errors.Is(err, jetstream.ErrNoMessages) {
			return m, nil
		}
		// The consumer may have been removed for inactivity: make it
		// again, once.
		p.consumers.Delete(deviceID)
		if attempt > 0 {
			return nil, fmt.Errorf("c2d receive: %w", err)
		}
	}
}

// C2DReceive locks the device's next C2D message for LockTimeout. The
// lock token (sealLock) is the JetStream acknowledgement subject and the
// time of the lock, signed for the device. A message delivered
// MaxDeliveryCount times already, over either protocol, is dropped
// instead.
func (p *Plane) C2DReceive(ctx context.Context, id gateway.Identity) (*message.Message, string, error) {
	if id.ModuleID != "" {
		return nil, "", badArgument("modules receive no cloud-to-device messages")
	}
	var m jetstream.Msg
	for {
		var err error
		if m, err = p.fetchC2D(ctx, id.DeviceID); err != nil || m == nil {
			if err == nil {
				// A poll is activity, as in IoT Hub, though it connects nothing.
				p.pres.activity(id.DeviceID, "")
			}
			return nil, "", err
		}
		meta, err := m.Metadata()
		if err != nil {
			_ = m.Nak()
			return nil, "", fmt.Errorf("c2d receive: %w", err)
		}
		n, err := p.countDelivery(ctx, deliveryKey(meta.Sequence.Stream, meta.Timestamp), 1)
		if err != nil {
			_ = m.Nak()
			return nil, "", err
		}
		if n <= p.cfg.MaxDeliveryCount {
			break
		}
		p.log.Info("c2d message reached the max delivery count: dropped", "device", id.DeviceID, "seq", meta.Sequence.Stream, "deliveries", n-1)
		_ = m.Term()
		p.deleteC2D(meta.Sequence.Stream)
	}
	p.pres.activity(id.DeviceID, "")
	msg, err := decodeMsg(m.Headers(), m.Data())
	if err != nil {
		_ = m.Term()
		return nil, "", err
	}
	// The ack subject's time is when the stream stored the message, not
	// when it was locked; the token carries the lock's own time.
	return msg, sealLock(p.lockKey, id.DeviceID, m.Reply(), p.now()), nil
}

// C2DSettle completes (deletes), rejects (deletes) or abandons (offers
// again) a locked message. An abandon of the last allowed delivery drops
// the message. A token that is not one C2DReceive gave this device, or
// whose message is gone, settles nothing: 412 DeviceMessageLockLost.
func (p *Plane) C2DSettle(ctx context.Context, id gateway.Identity, lock string, action gateway.Settle) error {
	a, ok := openLock(p.lockKey, id.DeviceID, lock)
	if !ok || a.stream != StreamC2D || a.consumer != httpsConsumer(id.DeviceID) {
		return errLockLost
	}
	if p.now().Sub(a.locked) > p.cfg.LockTimeout {
		return errLockLost
	}
	// Settle only a message that is still the device's own, in case the
	// key leaked: a sequence is never reused within a stream, and the
	// stored time tells a recreated stream's message apart.
	stored, err := p.c2d.GetMsg(ctx, a.seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return errLockLost
	}
	if err != nil {
		return fmt.Errorf("c2d %s: %w", action, err)
	}
	if stored.Subject != c2dSubject(id.DeviceID) || !stored.Time.Equal(a.at) {
		return errLockLost
	}
	ack := func(verb string) error {
		if err := p.nc.Publish(a.reply, []byte(verb)); err != nil {
			return fmt.Errorf("c2d %s: %w", action, err)
		}
		return nil
	}
	switch action {
	case gateway.Complete:
		err = ack("+ACK")
	case gateway.Reject:
		err = ack("+TERM")
	case gateway.Abandon:
		// Deliveries over MQTT count too.
		var n int
		if n, err = p.countDelivery(ctx, deliveryKey(a.seq, a.at), 0); err != nil {
			return err
		}
		if n = max(n, int(a.delivered)); n < p.cfg.MaxDeliveryCount {
			return ack("-NAK")
		}
		p.log.Info("c2d message abandoned at its last delivery: dropped", "device", id.DeviceID, "seq", a.seq, "deliveries", n)
		err = ack("+TERM")
	default:
		return badArgument("unknown settle action %v", action)
	}
	if err != nil {
		return err
	}
	p.deleteC2D(a.seq)
	p.pres.activity(id.DeviceID, "")
	return nil
}
