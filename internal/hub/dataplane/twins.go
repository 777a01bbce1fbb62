package dataplane

import (
	"context"
	"errors"

	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/twin"
)

// TwinGet answers a device's twin GET with its desired and reported
// sections, as the SDK expects them.
func (p *Plane) TwinGet(ctx context.Context, id gateway.Identity) ([]byte, error) {
	t, err := p.h.GetTwin(id.DeviceID, id.ModuleID)
	if err != nil {
		return nil, err
	}
	p.pres.activity(id.DeviceID, id.ModuleID)
	return t.SectionsForDevice(), nil
}

// TwinReported merges a device's reported patch and returns the new
// reported $version. A patch an edge sends for an identity of its scope
// (the gateway checked the scope) may carry the "$version" the edge
// answered while offline, and the new version is at least that; from
// anyone else "$version" is refused like any other '$' key.
func (p *Plane) TwinReported(ctx context.Context, id gateway.Identity, patch []byte) (int64, error) {
	var (
		m       map[string]any
		atLeast int64
		err     error
	)
	if id.AuthMethod == gateway.AuthOnBehalfOf && id.Via != "" {
		m, atLeast, err = twin.ParseVersionedPatch(patch)
	} else {
		m, err = twin.ParsePatch(patch)
	}
	if err != nil {
		return 0, err
	}
	v, err := p.h.PatchReportedAtLeast(ctx, id.DeviceID, id.ModuleID, m, atLeast)
	if err != nil {
		return 0, err
	}
	p.pres.activity(id.DeviceID, id.ModuleID)
	return v, nil
}

// pushDesired sends every desired change, made on any replica, to the
// session this replica holds for its device or module, if any.
func (p *Plane) pushDesired(changes <-chan hub.TwinChange) {
	for c := range changes {
		if c.Deleted || c.DesiredPatch == nil {
			continue
		}
		gw := p.gw.Load()
		if gw == nil {
			continue
		}
		s := gw.Sessions(c.DeviceID, c.ModuleID)
		if s == nil {
			continue
		}
		body := twin.DesiredPatchBody(c.DesiredPatch, c.DesiredVersion)
		if body == nil {
			p.log.Error("desired patch does not encode", "device", c.DeviceID, "module", c.ModuleID)
			continue
		}
		err := s.SendDesired(c.DesiredVersion, body)
		if err != nil && !errors.Is(err, gateway.ErrNotSubscribed) && !errors.Is(err, gateway.ErrNotConnected) {
			p.log.Warn("desired patch not delivered", "device", c.DeviceID, "module", c.ModuleID, "version", c.DesiredVersion, "err", err)
		}
	}
}
