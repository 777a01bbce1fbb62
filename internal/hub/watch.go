package hub

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/twin"
)

// TwinChange is one change of a twin, seen by every hub replica.
type TwinChange struct {
	DeviceID string
	ModuleID string // empty for a device twin
	Revision uint64
	// Twin is the stored twin after the change (registry fields not
	// filled); nil when Deleted.
	Twin    *twin.Twin
	Deleted bool
	// DesiredPatch, when not nil, is the desired change to push to the
	// device, with DesiredVersion the $version it produced: the body is
	// twin.DesiredPatchBody(DesiredPatch, DesiredVersion).
	DesiredPatch   map[string]any
	DesiredVersion int64
}

// WatchTwins streams twin changes made from now on, by any replica, until
// ctx ends or the hub closes; then the channel closes. The data plane uses
// it to push desired patches to the devices connected to this replica. A
// slow reader slows the watcher, not the writers.
func (h *Hub) WatchTwins(ctx context.Context) (<-chan TwinChange, error) {
	w, err := h.twins.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("watch twins: %w", err)
	}
	out := make(chan TwinChange, 64)
	if !h.goStart() {
		w.Stop()
		return nil, errors.New("watch twins: hub closed")
	}
	go func() {
		defer h.wg.Done()
		defer close(out)
		defer w.Stop()
		for {
			var e jetstream.KeyValueEntry
			var ok bool
			select {
			case <-ctx.Done():
				return
			case <-h.done:
				return
			case e, ok = <-w.Updates():
				if !ok {
					return
				}
			}
			if e == nil {
				continue
			}
			d, m, err := splitKey(e.Key())
			if err != nil {
				h.log.Error("skip twin change with a bad key", "key", e.Key(), "err", err)
				continue
			}
			c := TwinChange{DeviceID: d, ModuleID: m, Revision: e.Revision()}
			if e.Operation() != jetstream.KeyValuePut {
				c.Deleted = true
			} else {
				v, err := decodeTwin(e.Key(), e.Revision(), e.Value())
				if err != nil {
					h.log.Error("skip undecodable twin change", "key", e.Key(), "err", err)
					continue
				}
				rec := v.(*twinRecord)
				c.Twin, c.DesiredPatch, c.DesiredVersion = rec.Twin, rec.DesiredPatch, rec.DesiredVersion
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
