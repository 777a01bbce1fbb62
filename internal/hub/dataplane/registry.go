package dataplane

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/hub"
	"outpost/internal/identity"
)

// followRegistry drops the connections of identities that are deleted or
// disabled. When an identity leaves an edge's scope (deleted,
// re-parented) or is disabled, the edge's connection is dropped too: the
// gateway caches scope answers for the life of a connection, and the
// edge reconnects within a second and re-syncs its identities, after
// which it refuses a disabled child itself.
func (p *Plane) followRegistry(changes <-chan hub.IdentityChange) {
	for c := range changes {
		p.identityChanged(c)
	}
}

func (p *Plane) identityChanged(c hub.IdentityChange) {
	gw := p.gw.Load()
	disconnect := func(d, m, reason string) {
		if gw != nil && gw.DisconnectIdentity(d, m, reason) {
			p.log.Info("dropped connection", "device", d, "module", m, "reason", reason)
		}
	}
	// An edge's own modules are in its scope as its children are.
	edgeOf := func(deviceID string) string {
		p.mu.Lock()
		scope := p.parents[deviceID]
		p.mu.Unlock()
		if id, ok := identity.ScopeDeviceID(scope); ok {
			return id
		}
		return ""
	}
	switch {
	case c.ModuleID != "":
		if c.Deleted {
			disconnect(c.DeviceID, c.ModuleID, "module deleted")
			if e := edgeOf(c.DeviceID); e != "" {
				disconnect(e, "", "identity left the edge's scope")
			} else if d, err := p.h.GetDevice(c.DeviceID); err == nil && d.IsEdge() {
				disconnect(c.DeviceID, "", "identity left the edge's scope")
			}
		}
	case c.Deleted:
		disconnect(c.DeviceID, "", "device deleted")
		if e := edgeOf(c.DeviceID); e != "" {
			disconnect(e, "", "identity left the edge's scope")
		}
		p.mu.Lock()
		delete(p.parents, c.DeviceID)
		p.mu.Unlock()
		p.dropQueue(c.DeviceID)
	default:
		d := c.Device
		newParent := identity.ParentScope(d)
		p.mu.Lock()
		oldParent := p.parents[d.DeviceID]
		if newParent == "" {
			delete(p.parents, d.DeviceID)
		} else {
			p.parents[d.DeviceID] = newParent
		}
		p.mu.Unlock()
		if oldParent != "" && (oldParent != newParent || !d.Enabled()) {
			if e, ok := identity.ScopeDeviceID(oldParent); ok {
				disconnect(e, "", "identity left the edge's scope")
			}
		}
		if !d.Enabled() {
			disconnect(d.DeviceID, "", "device disabled")
			if ms, err := p.h.ListModules(d.DeviceID); err == nil {
				for _, m := range ms {
					disconnect(d.DeviceID, m.ModuleID, "device disabled")
				}
			}
		}
	}
}

// dropQueue removes a deleted device's C2D messages and its HTTPS
// consumer, so a device created again with the same id starts empty.
func (p *Plane) dropQueue(deviceID string) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	if err := p.c2d.Purge(ctx, jetstream.WithPurgeSubject(c2dSubject(deviceID))); err != nil && ctx.Err() == nil {
		p.log.Warn("purge c2d queue of deleted device", "device", deviceID, "err", err)
	}
	p.consumers.Delete(deviceID)
	if err := p.c2d.DeleteConsumer(ctx, httpsConsumer(deviceID)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) && ctx.Err() == nil {
		p.log.Warn("delete c2d consumer of deleted device", "device", deviceID, "err", err)
	}
}
