package edge

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"outpost/internal/edge/store"
	"outpost/internal/edge/upstream"
	"outpost/internal/gateway"
	"outpost/internal/message"
	"outpost/internal/route"
	"outpost/internal/status"
)

// backend is the edge's gateway.Backend. It is a type of its own so the
// gateway's callbacks stay out of Edge's exported API.
type backend struct{ e *Edge }

var _ gateway.Backend = backend{}

func (b backend) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	return b.e.authenticate(ctx, c)
}

// errDiskFull is what a device sees when the storage folder is full.
var errDiskFull = &status.Error{Status: http.StatusServiceUnavailable, Code: status.CodeQuotaExceeded,
	Message: "edge storage folder is out of disk space; retry later"}

// Telemetry routes msgs and stores them, all in one synced commit, so the
// gateway acknowledges them only once they are durable.
func (b backend) Telemetry(ctx context.Context, via gateway.Identity, msgs []*message.Message) error {
	e := b.e
	tbl := e.routeTable()
	now := e.now()
	var recs []store.Record
	for _, m := range msgs {
		if len(m.Body) > message.MaxSize {
			return gateway.ErrMessageTooLarge
		}
		m.System.EnqueuedTime = now
		// Match yields one route per sink, however many lead there.
		routes := tbl.Match(m)
		if len(routes) == 0 {
			e.noRoute.Add(1)
			continue
		}
		for _, r := range routes {
			if r.Sink.Kind == route.Upstream {
				// Acknowledged, it would sit at the head of the upstream
				// queue for good, and everything stored after it too.
				if err := upstream.CheckForwardable(e.cfg.DeviceID, e.st.ID(), m); err != nil {
					e.log.Warn("refusing telemetry: it cannot be forwarded upstream", "client", via.ClientID(), "error", err)
					return fmt.Errorf("%v: %w", err, gateway.ErrMessageTooLarge)
				}
			}
			recs = append(recs, store.Record{Endpoint: e.storeEndpoint(r), Msg: m, TTL: r.TTL})
		}
	}
	if len(recs) == 0 {
		return nil
	}
	if _, err := e.st.AppendRecords(ctx, recs); err != nil {
		switch {
		case errors.Is(err, store.ErrQuotaExceeded):
			e.quotaRefusals.Add(1)
			e.log.Warn("refusing telemetry: edge storage quota reached; intake resumes as the backlog drains or expires",
				"client", via.ClientID(), "messages", len(msgs), "error", err)
			return fmt.Errorf("store: %v: %w", err, gateway.ErrQuotaExceeded)
		case errors.Is(err, store.ErrTooLarge):
			return gateway.ErrMessageTooLarge
		case errors.Is(err, store.ErrDiskFull):
			e.diskFullRefusals.Add(1)
			e.log.Error("refusing telemetry: storage folder is out of disk space", "client", via.ClientID(), "error", err)
			return fmt.Errorf("store: %v: %w", err, errDiskFull)
		}
		return fmt.Errorf("store telemetry: %w", err)
	}
	// No Kick: the drain wakes on every store commit by itself, and it
	// lists its queues again only when routes or the TTL change.
	return nil
}

func (b backend) TwinGet(ctx context.Context, id gateway.Identity) ([]byte, error) {
	return b.e.twinGet(ctx, id.DeviceID, id.ModuleID)
}

func (b backend) TwinReported(ctx context.Context, id gateway.Identity, patch []byte) (int64, error) {
	v, err := b.e.twinReported(ctx, id.DeviceID, id.ModuleID, patch)
	if errors.Is(err, store.ErrDiskFull) {
		return 0, fmt.Errorf("%v: %w", err, errDiskFull)
	}
	return v, err
}

// Connected registers a local client: the hub is told to route its C2D,
// methods and desired updates through the edge, and its local endpoints
// start delivering.
func (b backend) Connected(s gateway.Session) {
	e := b.e
	id := s.Identity()
	// A sync may have revoked the identity while it authenticated.
	if c := e.ids.current(); c != nil {
		if _, err := c.lookup(id.DeviceID, id.ModuleID); err != nil {
			s.Disconnect("identity removed or disabled at the hub")
			return
		}
	}
	e.mu.Lock()
	e.sessions[id.ClientID()] = s
	e.wakeConnWaitersLocked()
	e.mu.Unlock()
	e.up.Attach(id.DeviceID, id.ModuleID)
	e.startDeliveries()
}

// Disconnected forgets a client unless a newer session took its place
// (session takeover delivers the old Disconnected after the new
// Connected).
func (b backend) Disconnected(s gateway.Session) {
	e := b.e
	id := s.Identity()
	e.mu.Lock()
	current := e.sessions[id.ClientID()] == s
	if current {
		delete(e.sessions, id.ClientID())
	}
	e.stopWorkersLocked(s)
	e.mu.Unlock()
	if current {
		e.up.Detach(id.DeviceID, id.ModuleID)
	}
}

// InScope: nothing connects to an edge as an edge (only non-edge devices
// can be children), so nobody acts on behalf of others here.
func (b backend) InScope(ctx context.Context, edge gateway.Identity, deviceID, moduleID string) (bool, error) {
	return false, nil
}

// C2DReceive: the edge relays C2D to MQTT clients only (DeliverC2D);
// HTTPS-polling children see an empty queue.
func (b backend) C2DReceive(ctx context.Context, id gateway.Identity) (*message.Message, string, error) {
	return nil, "", nil
}

func (b backend) C2DSettle(ctx context.Context, id gateway.Identity, lock string, action gateway.Settle) error {
	return &status.Error{Status: http.StatusNotFound, Code: status.CodeDeviceMessageLockLost, Message: "no such message lock"}
}
