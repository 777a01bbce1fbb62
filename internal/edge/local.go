package edge

import (
	"context"
	"fmt"

	"outpost/internal/gateway"
	"outpost/internal/message"
)

// session returns the live session of a local client, or nil.
func (e *Edge) session(cid string) gateway.Session {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sessions[cid]
}

// DeliverC2D hands a cloud-to-device message to a connected child and
// returns once the child acknowledged it, so the link acknowledges it
// upstream only then.
func (e *Edge) DeliverC2D(ctx context.Context, deviceID string, msg *message.Message) error {
	s := e.session(deviceID)
	if s == nil {
		return fmt.Errorf("c2d to %s: %w", deviceID, gateway.ErrNotConnected)
	}
	select {
	case err := <-s.SendC2D(msg):
		if err != nil {
			return fmt.Errorf("c2d to %s: %w", deviceID, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("c2d to %s: %w", deviceID, ctx.Err())
	}
}

// InvokeMethod calls a direct method on a connected child or module.
func (e *Edge) InvokeMethod(ctx context.Context, deviceID, moduleID, name string, payload []byte) (int, []byte, error) {
	cid := message.ClientID(deviceID, moduleID)
	s := e.session(cid)
	if s == nil {
		return 0, nil, fmt.Errorf("method %s on %s: %w", name, cid, gateway.ErrNotConnected)
	}
	return s.InvokeMethod(ctx, name, payload)
}

var _ Local = (*Edge)(nil)
