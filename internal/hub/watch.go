package hub

import (
	"context"
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
	return watchUpdates(ctx, h, "twins", func(e jetstream.KeyValueEntry) (TwinChange, bool) {
		d, m, err := splitKey(e.Key())
		if err != nil {
			h.log.Error("skip twin change with a bad key", "key", e.Key(), "err", err)
			return TwinChange{}, false
		}
		c := TwinChange{DeviceID: d, ModuleID: m, Revision: e.Revision()}
		if e.Operation() != jetstream.KeyValuePut {
			c.Deleted = true
			return c, true
		}
		v, err := decodeTwin(e.Key(), e.Revision(), e.Value())
		if err != nil {
			h.log.Error("skip undecodable twin change", "key", e.Key(), "err", err)
			return TwinChange{}, false
		}
		rec := v.(*twinRecord)
		c.Twin, c.DesiredPatch, c.DesiredVersion = rec.Twin, rec.DesiredPatch, rec.DesiredVersion
		return c, true
	}, h.twins)
}

// watchUpdates streams the changes made from now on to one or two buckets,
// by any replica, each turned into a T by conv (false skips it), until ctx
// ends, the hub closes or a watcher stops; then the channel closes. A slow
// reader slows the watcher, not the writers. what names the watch in
// errors.
func watchUpdates[T any](ctx context.Context, h *Hub, what string, conv func(jetstream.KeyValueEntry) (T, bool), buckets ...*bucket) (<-chan T, error) {
	ctx, cancel := context.WithCancel(ctx)
	var ws []jetstream.KeyWatcher
	stop := func() {
		for _, w := range ws {
			w.Stop()
		}
		cancel()
	}
	// A missing second watcher is a nil channel, which select never picks.
	var updates [2]<-chan jetstream.KeyValueEntry
	for i, b := range buckets {
		w, err := b.kv.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			stop()
			return nil, fmt.Errorf("watch %s: %w", b.name, err)
		}
		ws = append(ws, w)
		updates[i] = w.Updates()
	}
	out := make(chan T, 64)
	if !h.goStart() {
		stop()
		return nil, fmt.Errorf("watch %s: hub closed", what)
	}
	go func() {
		defer h.wg.Done()
		defer close(out)
		defer stop()
		for {
			var e jetstream.KeyValueEntry
			var ok bool
			select {
			case <-ctx.Done():
				return
			case <-h.done:
				return
			case e, ok = <-updates[0]:
			case e, ok = <-updates[1]:
			}
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			c, ok := conv(e)
			if !ok {
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
