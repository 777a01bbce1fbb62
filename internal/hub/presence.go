package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"outpost/internal/identity"
)

// Presence is kept apart from the registry records: connectionState,
// connectionStateUpdatedTime and lastActivityTime live in their own
// bucket, keyed like devices and modules, and are laid over the record
// when it is read. A presence write therefore never changes a device's
// etag (the devices bucket's revision) and never races an operator's
// compare-and-set, as in Azure, where connection state does not change
// the etag either.
//
// A Connected record names the hub instance and the session that holds
// the connection. Every hub instance keeps a heartbeat in the hubs
// bucket; a Connected record whose instance's heartbeat has expired
// (the hub crashed) is rewritten as Disconnected by any live hub's
// sweep, so several hubs may share one NATS server and a crash leaves
// no identity Connected for long.
//
// An identity connected through an edge is recorded from the edge's
// reports (package dataplane): its record also names the edge (Via), and
// its session is the edge link's session followed by "/" and the
// identity's client id, so the end of the edge's link ends it.

// Bucket names. Changing them orphans the data of existing hubs.
const (
	bucketPresence = "presence"
	bucketHubs     = "hubs"
)

// Defaults for the presence settings of Config.
const (
	// DefaultActivityResolution is how stale lastActivityTime may be:
	// activity is written at most once per identity per this interval.
	DefaultActivityResolution = 10 * time.Second
	// DefaultHubLiveness is how long a hub instance counts as alive
	// after its last heartbeat; it beats every third of that.
	DefaultHubLiveness = 30 * time.Second
)

// presence is what the presence bucket stores for one identity.
type presence struct {
	State        string    `json:"state"`
	Since        time.Time `json:"since"`
	LastActivity time.Time `json:"lastActivity"`
	// Hub and Session name the connection of a Connected identity.
	Hub     string `json:"hub,omitempty"`
	Session string `json:"session,omitempty"`
	// Via is the edge through which a Connected identity is connected;
	// empty for one connected to the hub itself.
	Via string `json:"via,omitempty"`
}

// heartbeat is what the hubs bucket stores for one hub instance.
type heartbeat struct {
	Expires time.Time `json:"expires"`
}

func decodePresence(_ string, _ uint64, raw []byte) (any, error) {
	p := new(presence)
	if err := json.Unmarshal(raw, p); err != nil {
		return nil, fmt.Errorf("decode presence: %w", err)
	}
	return p, nil
}

func newInstanceID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// Instance is this hub process's id, unique among the hubs sharing a
// NATS server. Session ids given to SetConnected should start with it.
func (h *Hub) Instance() string { return h.instance }

// presenceOf returns the presence of the identity at key, if recorded.
func (h *Hub) presenceOf(key string) (*presence, bool) {
	r, ok := h.presTab.get(key)
	if !ok {
		return nil, false
	}
	return r.val.(*presence), true
}

// withPresence returns d with its connection fields from the presence
// bucket; d itself when none is recorded.
func (h *Hub) withPresence(d *identity.Device) *identity.Device {
	p, ok := h.presenceOf(deviceKey(d.DeviceID))
	if !ok {
		return d
	}
	c := d.Clone()
	c.ConnectionState, c.ConnectionStateUpdatedTime, c.LastActivityTime = p.State, p.Since, p.LastActivity
	return c
}

// withModulePresence is withPresence for a module.
func (h *Hub) withModulePresence(m *identity.Module) *identity.Module {
	p, ok := h.presenceOf(moduleKey(m.DeviceID, m.ModuleID))
	if !ok {
		return m
	}
	c := *m
	c.ConnectionState, c.ConnectionStateUpdatedTime, c.LastActivityTime = p.State, p.Since, p.LastActivity
	return &c
}

func presenceKey(deviceID, moduleID string) string { return twinKey(deviceID, moduleID) }

// exists reports whether the identity is in this replica's index, so
// presence is not recorded for one deleted meanwhile.
func (h *Hub) exists(deviceID, moduleID string) bool {
	if moduleID == "" {
		_, ok := h.devTab.get(deviceKey(deviceID))
		return ok
	}
	_, ok := h.modTab.get(moduleKey(deviceID, moduleID))
	return ok
}

// SetConnected records that session, a connection held by this hub
// instance, is the identity's connection now; it counts as activity.
func (h *Hub) SetConnected(ctx context.Context, deviceID, moduleID, session string) error {
	if !h.exists(deviceID, moduleID) {
		return nil
	}
	now := h.now()
	return h.changePresence(ctx, presenceKey(deviceID, moduleID), func(*presence) *presence {
		return &presence{State: identity.Connected, Since: now, LastActivity: now, Hub: h.instance, Session: session}
	})
}

// SetConnectedVia records that the identity is connected to edge, whose
// link to this hub instance reports it as session. Unlike SetConnected,
// it leaves connectionStateUpdatedTime and lastActivityTime alone when
// the identity is Connected already: an edge reports its children again
// after every reconnect of its own link, which changes no child's state.
func (h *Hub) SetConnectedVia(ctx context.Context, deviceID, moduleID, edge, session string) error {
	if !h.exists(deviceID, moduleID) {
		return nil
	}
	now := h.now()
	return h.changePresence(ctx, presenceKey(deviceID, moduleID), func(cur *presence) *presence {
		next := &presence{State: identity.Connected, Since: now, LastActivity: now, Hub: h.instance, Session: session, Via: edge}
		if cur != nil && cur.State == identity.Connected {
			if cur.Session == session && cur.Hub == h.instance && cur.Via == edge {
				return nil
			}
			next.Since, next.LastActivity = cur.Since, cur.LastActivity
		}
		return next
	})
}

// DisconnectVia marks Disconnected the identities recorded as Connected
// through edge, on any hub instance, whose session stale accepts: those
// of an edge link that ended, or those a full report of the edge's new
// link no longer names.
func (h *Hub) DisconnectVia(ctx context.Context, edge string, stale func(session string) bool) error {
	return h.disconnectWhere(ctx, func(p *presence) (bool, error) {
		return p.Via == edge && stale(p.Session), nil
	})
}

// SetDisconnected records that session ended, unless the identity's
// record names another session by now (a takeover, here or on another
// hub, whose Connected was written first).
func (h *Hub) SetDisconnected(ctx context.Context, deviceID, moduleID, session string) error {
	return h.endSession(ctx, presenceKey(deviceID, moduleID), session)
}

// endSession marks the identity at key Disconnected if its record still
// names session as its connection.
func (h *Hub) endSession(ctx context.Context, key, session string) error {
	return h.changePresence(ctx, key, func(cur *presence) *presence {
		if cur == nil || cur.State != identity.Connected || cur.Session != session {
			return nil
		}
		return &presence{State: identity.Disconnected, Since: h.now(), LastActivity: cur.LastActivity}
	})
}

// ActivityDue reports whether TouchActivity would write now: the
// identity's recorded activity is older than the activity resolution.
// It reads only memory, so the data plane asks it on every message.
func (h *Hub) ActivityDue(deviceID, moduleID string) bool {
	p, ok := h.presenceOf(presenceKey(deviceID, moduleID))
	return !ok || h.now().Sub(p.LastActivity) >= h.cfg.ActivityResolution
}

// TouchActivity records activity of the identity (telemetry, a twin
// request, a method response, a C2D settlement), at most once per
// activity resolution, leaving its connection state as it is.
func (h *Hub) TouchActivity(ctx context.Context, deviceID, moduleID string) error {
	if !h.exists(deviceID, moduleID) {
		return nil
	}
	now := h.now()
	return h.changePresence(ctx, presenceKey(deviceID, moduleID), func(cur *presence) *presence {
		if cur == nil {
			return &presence{State: identity.Disconnected, LastActivity: now}
		}
		if now.Sub(cur.LastActivity) < h.cfg.ActivityResolution {
			return nil
		}
		next := *cur
		next.LastActivity = now
		return &next
	})
}

// changePresence is the compare-and-set loop of presence writes. fn gets
// the current record (nil when none) and returns the next one, or nil to
// write nothing.
func (h *Hub) changePresence(ctx context.Context, key string, fn func(cur *presence) *presence) error {
	cur, ok, err := h.lookup(ctx, h.pres, h.presTab, key)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		var old *presence
		if ok {
			old = cur.val.(*presence)
		} else {
			cur = nil
		}
		next := fn(old)
		if next == nil {
			return nil
		}
		_, err := h.write(ctx, h.pres, h.presTab, key, cur, next)
		if !errors.Is(err, errConflict) && !errors.Is(err, errExists) {
			return err
		}
		if attempt >= maxCASRetries {
			return errTooBusy
		}
		if cur, ok, err = h.reload(ctx, h.pres, h.presTab, key); err != nil {
			return err
		}
	}
}

// removePresence drops the presence of the identity at key (deleted).
func (h *Hub) removePresence(ctx context.Context, key string) error {
	if _, ok := h.presTab.get(key); !ok {
		return nil
	}
	return h.remove(ctx, h.pres, h.presTab, key, 0)
}

// beat writes this instance's heartbeat.
func (h *Hub) beat(ctx context.Context) error {
	raw, err := json.Marshal(heartbeat{Expires: h.now().Add(h.cfg.HubLiveness)})
	if err != nil {
		return err
	}
	_, err = h.hubs.put(ctx, h.instance, raw)
	return err
}

// runHeartbeat beats and sweeps the records of dead hubs until ctx ends.
func (h *Hub) runHeartbeat(ctx context.Context) {
	t := time.NewTicker(h.cfg.HubLiveness / 3)
	defer t.Stop()
	for {
		if err := h.beat(ctx); err != nil && ctx.Err() == nil {
			h.log.Warn("hub heartbeat", "err", err)
		}
		if err := h.sweepPresence(ctx, false); err != nil && ctx.Err() == nil {
			h.log.Warn("sweep presence of dead hubs", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweepPresence marks Disconnected the identities recorded as Connected
// through a hub instance that is no longer alive, or, with own, through
// this instance (which is closing).
func (h *Hub) sweepPresence(ctx context.Context, own bool) error {
	alive := map[string]bool{}
	isDead := func(inst string) (bool, error) {
		if own {
			return inst == h.instance, nil
		}
		if inst == h.instance {
			return false, nil
		}
		if a, ok := alive[inst]; ok {
			return !a, nil
		}
		raw, _, err := h.hubs.get(ctx, inst)
		if err != nil && !errors.Is(err, errNotFound) {
			return false, err
		}
		var hb heartbeat
		a := err == nil && json.Unmarshal(raw, &hb) == nil && h.now().Before(hb.Expires)
		alive[inst] = a
		return !a, nil
	}
	errs := []error{h.disconnectWhere(ctx, func(p *presence) (bool, error) { return isDead(p.Hub) })}
	if own {
		if _, err := h.hubs.remove(ctx, h.instance, 0); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// disconnectWhere marks Disconnected the Connected records that match
// accepts. A record rewritten meanwhile (another session's Connected) is
// left as it is. An error of match stops the sweep.
func (h *Hub) disconnectWhere(ctx context.Context, match func(*presence) (bool, error)) error {
	type stale struct{ key, session string }
	var found []stale
	h.presTab.each(func(k string, r *row) bool {
		if p := r.val.(*presence); p.State == identity.Connected {
			found = append(found, stale{k, p.Session})
		}
		return true
	})
	var errs []error
	for _, s := range found {
		r, ok := h.presTab.get(s.key)
		if !ok {
			continue
		}
		p := r.val.(*presence)
		if p.State != identity.Connected || p.Session != s.session {
			continue
		}
		if hit, err := match(p); err != nil {
			return err
		} else if !hit {
			continue
		}
		if err := h.endSession(ctx, s.key, s.session); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
