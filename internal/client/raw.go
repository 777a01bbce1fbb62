package client

import (
	"context"
	"errors"
	"fmt"

	"outpost/internal/topic"
)

// The raw API lets a caller use topics this package does not model, such
// as the on-behalf-of twin and method topics an edge uses on its link to
// its parent, over the same connection, reconnects and in-flight window.

type rawSub struct {
	filter string
	qos    byte
	fn     func(topic string, payload []byte)
}

// Publish sends payload on topic with QoS 0 or 1; QoS 1 waits for the
// PUBACK and shares the in-flight window with telemetry.
func (c *Client) Publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	if qos > 1 {
		return errors.New("publish: QoS 2 is not supported")
	}
	s, err := c.session(ctx)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if qos == 0 {
		return s.publish0(topic, payload)
	}
	if err := s.acquire(ctx); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	ch, err := s.publish1(topic, payload)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	select {
	case err := <-ch:
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PublishAsync sends payload on topic with QoS 1 without waiting; the
// channel yields the outcome once, as for SendAsync.
func (c *Client) PublishAsync(topic string, payload []byte) <-chan error {
	fail := func(err error) <-chan error {
		ch := make(chan error, 1)
		ch <- fmt.Errorf("publish: %w", err)
		return ch
	}
	s, err := c.session(c.ctx)
	if err != nil {
		return fail(err)
	}
	if err := s.acquire(c.ctx); err != nil {
		return fail(err)
	}
	ch, err := s.publish1(topic, payload)
	if err != nil {
		return fail(err)
	}
	return ch
}

// Subscribe makes (and re-makes after every reconnect) a subscription
// and routes what matches filter to fn, ahead of the built-in handlers.
// fn runs on the client's dispatcher, in order; QoS 1 messages are
// acknowledged when it returns.
func (c *Client) Subscribe(filter string, qos byte, fn func(topic string, payload []byte)) error {
	if filter == "" || qos > 1 || fn == nil {
		return errors.New("subscribe: need a filter, QoS 0 or 1 and a handler")
	}
	c.mu.Lock()
	c.raw = append(c.raw, rawSub{filter: filter, qos: qos, fn: fn})
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		if _, err := s.subscribe([]string{filter}, []byte{qos}); err != nil {
			c.log.Debug("subscribe on a dying session", "err", err)
		}
	}
	return nil
}

// rawHandler returns the handler of the first raw subscription matching t.
func (c *Client) rawHandler(t string) func(string, []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.raw {
		if topic.Match(r.filter, t) {
			return r.fn
		}
	}
	return nil
}
