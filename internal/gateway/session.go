package gateway

import (
	"context"
	"fmt"
	"sync"

	"outpost/internal/message"
	"outpost/internal/topic"
)

// session implements Session for an identity on its own connection, or
// (obo) for one an edge's connection subscribed on behalf of, in which
// case pushes use the on-behalf-of topics.
type session struct {
	c    *conn
	id   Identity
	obo  bool
	once sync.Once
	done chan struct{} // closed when the session ends
}

func newSession(c *conn, id Identity, obo bool) *session {
	return &session{c: c, id: id, obo: obo, done: make(chan struct{})}
}

// end marks the session over; pending method calls return at once.
func (ss *session) end() { ss.once.Do(func() { close(ss.done) }) }

func (ss *session) Identity() Identity { return ss.id }

func (ss *session) live() error {
	select {
	case <-ss.done:
		return ErrNotConnected
	default:
	}
	if ss.c.ctx.Err() != nil {
		return ErrNotConnected
	}
	return nil
}

func (ss *session) SendDesired(version int64, patch []byte) error {
	if err := ss.live(); err != nil {
		return err
	}
	t := topic.TwinDesiredPatch(version)
	if ss.obo {
		t = topic.OBOTwinDesired(ss.id.ClientID(), version)
	}
	_, err := ss.c.send(t, patch, 0)
	return err
}

func (ss *session) InvokeMethod(ctx context.Context, name string, payload []byte) (int, []byte, error) {
	if err := ss.live(); err != nil {
		return 0, nil, err
	}
	if !topic.ValidName(name) {
		return 0, nil, fmt.Errorf("method name %q: empty, or has / ? # +", truncate(name))
	}
	cid := ss.id.ClientID()
	rid, cl, err := ss.c.newCall(cid)
	if err != nil {
		return 0, nil, err
	}
	defer ss.c.endCall(rid)
	t := topic.MethodRequest(name, rid)
	if ss.obo {
		t = topic.OBOMethodRequest(cid, name, rid)
	}
	if _, err := ss.c.send(t, payload, 0); err != nil {
		return 0, nil, err
	}
	select {
	case res := <-cl.ch:
		return res.status, res.payload, nil
	case <-ctx.Done():
		return 0, nil, fmt.Errorf("method %s on %s: %w", name, cid, ctx.Err())
	case <-ss.c.ctx.Done():
		return 0, nil, fmt.Errorf("method %s on %s: %w", name, cid, ErrConnectionLost)
	case <-ss.done:
		return 0, nil, fmt.Errorf("method %s on %s: %w", name, cid, ErrConnectionLost)
	}
}

func (ss *session) SendC2D(msg *message.Message) <-chan error {
	if err := ss.live(); err != nil {
		return failed(err)
	}
	if ss.id.ModuleID != "" {
		return failed(fmt.Errorf("c2d to a module: %w", ErrNotSupported))
	}
	return ss.push(topic.C2D(ss.id.DeviceID, topic.FromMessage(msg)), msg)
}

func (ss *session) SendInput(input string, msg *message.Message) <-chan error {
	if err := ss.live(); err != nil {
		return failed(err)
	}
	if ss.id.ModuleID == "" || ss.obo {
		return failed(fmt.Errorf("module input: %w", ErrNotSupported))
	}
	if !topic.ValidName(input) {
		return failed(fmt.Errorf("input name %q: empty, or has / ? # +", truncate(input)))
	}
	return ss.push(topic.ModuleInput(ss.id.DeviceID, ss.id.ModuleID, input, topic.FromMessage(msg)), msg)
}

func (ss *session) push(t string, msg *message.Message) <-chan error {
	// The properties travel in the topic, which a packet bounds: a message
	// with more is as undeliverable as one with too large a body.
	if len(msg.Body) > ss.c.s.cfg.MaxMessageSize || len(t) > topic.MaxNameLen {
		return failed(ErrMessageTooLarge)
	}
	ch, err := ss.c.send(t, msg.Body, 1)
	if err != nil {
		return failed(err)
	}
	return ch
}

func (ss *session) Disconnect(reason string) {
	if ss.obo {
		ss.c.removeChild(ss, reason)
		return
	}
	ss.c.kill(reason)
}

func failed(err error) <-chan error {
	ch := make(chan error, 1)
	ch <- err
	return ch
}

var _ Session = (*session)(nil)
