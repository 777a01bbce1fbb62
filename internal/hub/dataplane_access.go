package hub

import (
	"context"
	"errors"
	"fmt"

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
	ctx, cancel := context.WithCancel(ctx)
	dw, err := h.devices.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch devices: %w", err)
	}
	mw, err := h.modules.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		dw.Stop()
		cancel()
		return nil, fmt.Errorf("watch modules: %w", err)
	}
	out := make(chan IdentityChange, 64)
	if !h.goStart() {
		dw.Stop()
		mw.Stop()
		cancel()
		return nil, errors.New("watch identities: hub closed")
	}
	go func() {
		defer h.wg.Done()
		defer close(out)
		defer cancel()
		defer dw.Stop()
		defer mw.Stop()
		for {
			var e jetstream.KeyValueEntry
			var ok bool
			select {
			case <-ctx.Done():
				return
			case <-h.done:
				return
			case e, ok = <-dw.Updates():
			case e, ok = <-mw.Updates():
			}
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			c, err := identityChange(e)
			if err != nil {
				h.log.Error("skip identity change", "bucket", e.Bucket(), "key", e.Key(), "err", err)
				continue
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return
			case <-h.done:
				return
			}
		}
	}()
	return out, nil
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
