package client

import (
	"encoding/json"
	"fmt"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"outpost/internal/message"
	"outpost/internal/topic"
)

// OnMethod registers h for the direct method name, or for every method
// without a handler of its own when name is "". Each call runs in its own
// goroutine. A method with no handler is answered with status 501.
func (c *Client) OnMethod(name string, h MethodHandler) {
	c.mu.Lock()
	if h == nil {
		delete(c.methods, name)
	} else {
		c.methods[name] = h
	}
	c.mu.Unlock()
	c.want(featMethods)
}

// OnC2D registers fn for cloud-to-device messages (devices only; modules
// receive messages on inputs). Messages arrive one at a time, in order,
// and are acknowledged when fn returns.
func (c *Client) OnC2D(fn func(msg *message.Message)) {
	c.mu.Lock()
	c.onC2D = fn
	c.mu.Unlock()
	if c.ep.cs.ModuleID == "" {
		c.want(featC2D)
	}
}

// OnInput registers fn for messages routed to this module's inputs. They
// arrive one at a time, in order, with System.InputName set, and are
// acknowledged when fn returns.
func (c *Client) OnInput(fn func(input string, msg *message.Message)) {
	c.mu.Lock()
	c.onInput = fn
	c.mu.Unlock()
	if c.ep.cs.ModuleID != "" {
		c.want(featInput)
	}
}

// dispatch runs on the session's dispatcher for every inbound publish
// that is not a twin response. It returns whether to acknowledge p.
func (c *Client) dispatch(s *session, p *packets.PublishPacket) bool {
	ack, err := c.route(s, p)
	if err != nil {
		c.log.Warn("inbound message dropped", "topic", p.TopicName, "err", err)
	}
	return ack
}

func (c *Client) route(s *session, p *packets.PublishPacket) (ack bool, err error) {
	if fn := c.rawHandler(p.TopicName); fn != nil {
		fn(p.TopicName, p.Payload)
		return true, nil
	}
	t, err := topic.Parse(p.TopicName)
	if err != nil {
		return true, err
	}
	d, m := c.ep.cs.DeviceID, c.ep.cs.ModuleID
	c.mu.Lock()
	onDesired, onC2D, onInput := c.onDesired, c.onC2D, c.onInput
	c.mu.Unlock()
	switch {
	case t.Kind == topic.KindTwinDesired && t.OnBehalfOf == "":
		if onDesired == nil {
			return true, nil
		}
		var patch map[string]any
		if err := json.Unmarshal(p.Payload, &patch); err != nil {
			return true, fmt.Errorf("desired patch: %w", err)
		}
		onDesired(patch, t.Version)
		return true, nil

	case t.Kind == topic.KindMethodRequest && t.OnBehalfOf == "":
		c.callMethod(s, t.MethodName, t.RID, p.Payload)
		return true, nil

	case t.Kind == topic.KindC2D && t.DeviceID == d && m == "":
		if onC2D == nil {
			return false, fmt.Errorf("no C2D handler; left for a later connection")
		}
		msg := &message.Message{DeviceID: d, Body: p.Payload}
		topic.ServerToMessage(t.Bag, msg)
		onC2D(msg)
		return true, nil

	case t.Kind == topic.KindModuleInput && t.DeviceID == d && t.ModuleID == m && m != "":
		if onInput == nil {
			return false, fmt.Errorf("no input handler; left for a later connection")
		}
		msg := &message.Message{DeviceID: d, ModuleID: m, Body: p.Payload}
		topic.ServerToMessage(t.Bag, msg)
		msg.System.InputName = t.Input
		onInput(t.Input, msg)
		return true, nil
	}
	return true, fmt.Errorf("unexpected %s topic", t.Kind)
}

// callMethod runs the handler in a goroutine owned by the session, which
// waits for it when the connection ends; the handler's ctx ends then.
func (c *Client) callMethod(s *session, name, rid string, payload []byte) {
	c.mu.Lock()
	h := c.methods[name]
	if h == nil {
		h = c.methods[""]
	}
	c.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		status, resp := 501, []byte(`{"message":"method not implemented"}`)
		if h != nil {
			status, resp = h(s.ctx, name, payload)
		}
		if resp == nil {
			resp = []byte{}
		}
		if err := s.publish0(topic.MethodResponse(status, rid), resp); err != nil {
			c.log.Warn("method response lost", "method", name, "err", err)
		}
	}()
}
