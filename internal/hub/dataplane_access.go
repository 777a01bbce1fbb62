package hub

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/identity"
)

// IdentityChange is one change of a device or module record, seen by every
// hub replica.
type IdentityChange struct {
	DeviceID string
	ModuleID string // empty for a device
	Deleted  bool
	// Device or Module is the record after the change; nil when Deleted.
	Device *identity.Device
	Module *identity.Module
}

// WatchIdentities streams device and module changes made from now on, by
// any replica, until ctx ends or the hub closes; then the channel closes.
// The data plane uses it to drop the live connections of identities that
// were deleted or disabled, on whichever replica holds them.
func (h *Hub) WatchIdentities(ctx context.Context) (<-chan IdentityChange, error) {
	return watchUpdates(ctx, h, "identities", func(e jetstream.KeyValueEntry) (IdentityChange, bool) {
		c, err := identityChange(e)
		if err != nil {
			h.log.Error("skip identity change", "bucket", e.Bucket(), "key", e.Key(), "err", err)
			return IdentityChange{}, false
		}
		return c, true
	}, h.devices, h.modules)
}

func identityChange(e jetstream.KeyValueEntry) (IdentityChange, error) {
	d, m, err := splitKey(e.Key())
	if err != nil {
		return IdentityChange{}, err
	}
	c := IdentityChange{DeviceID: d, ModuleID: m}
	if e.Operation() != jetstream.KeyValuePut {
		c.Deleted = true
		return c, nil
	}
	if m == "" {
		v, err := decodeDevice(e.Key(), e.Revision(), e.Value())
		if err != nil {
			return IdentityChange{}, err
		}
		c.Device = v.(*identity.Device)
		return c, nil
	}
	v, err := decodeModule(e.Key(), e.Revision(), e.Value())
	if err != nil {
		return IdentityChange{}, err
	}
	c.Module = v.(*identity.Module)
	return c, nil
}
