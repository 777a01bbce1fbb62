package client

import (
	"context"
	"errors"
	"fmt"

	"outpost/internal/message"
	"outpost/internal/topic"
)

// Send publishes msg as telemetry and waits for the server's PUBACK, which
// an Outpost edge sends only once the message is on disk. If the
// connection drops first the error wraps ErrConnectionLost and the
// message may or may not have arrived: sending it again is safe for a hub
// that de-duplicates by message id.
func (c *Client) Send(ctx context.Context, msg *message.Message) error {
	return c.send(ctx, "", msg)
}

// SendOutput publishes msg on a module output ($.on), which the edge's
// routes read.
func (c *Client) SendOutput(ctx context.Context, output string, msg *message.Message) error {
	if output == "" {
		return errors.New("send output: empty output name")
	}
	return c.send(ctx, output, msg)
}

func (c *Client) send(ctx context.Context, output string, msg *message.Message) error {
	ch, err := c.start(ctx, output, msg)
	if err != nil {
		return err
	}
	select {
	case err := <-ch:
		if err != nil {
			return fmt.Errorf("send: %w", err)
		}
		return nil
	case <-ctx.Done():
		// The message stays in flight and keeps its window slot until
		// its PUBACK or the end of the connection.
		return ctx.Err()
	}
}

// SendAsync publishes msg as telemetry without waiting for the PUBACK;
// the channel yields the outcome once (nil when acknowledged). Up to
// Config.MaxInFlight messages are outstanding; beyond that SendAsync
// blocks until one is acknowledged or the connection ends. Messages sent
// from one goroutine go out, and are acknowledged, in order.
func (c *Client) SendAsync(msg *message.Message) <-chan error {
	return c.SendOutputAsync("", msg)
}

// SendOutputAsync is SendAsync for a module output; "" means plain
// telemetry.
func (c *Client) SendOutputAsync(output string, msg *message.Message) <-chan error {
	ch, err := c.start(c.ctx, output, msg)
	if err != nil {
		done := make(chan error, 1)
		done <- err
		return done
	}
	return ch
}

// start validates msg, takes a window slot and queues the publish.
func (c *Client) start(ctx context.Context, output string, msg *message.Message) (<-chan error, error) {
	if len(msg.Body) > message.MaxSize {
		return nil, fmt.Errorf("send: body of %d bytes exceeds %d", len(msg.Body), message.MaxSize)
	}
	bag := topic.FromMessage(msg)
	// The server stamps the connection ids from the authenticated
	// identity; sending them only wastes bytes.
	delete(bag, message.KeyConnDeviceID)
	delete(bag, message.KeyConnModuleID)
	if output != "" {
		bag[message.KeyOutputName] = output
	}
	t := topic.Telemetry(c.ep.cs.DeviceID, c.ep.cs.ModuleID, bag)
	s, err := c.session(ctx)
	if err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	// A cancelled context sends nothing; otherwise a free window slot could
	// win the race against ctx.Done in acquire and publish it anyway.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	if err := s.acquire(ctx); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	ch, err := s.publish1(t, msg.Body)
	if err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	return ch, nil
}
