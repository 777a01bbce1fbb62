package edge

import (
	"context"
	"errors"
	"strings"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/message"
	"outpost/internal/status"
	"outpost/internal/twin"
)

// upstreamFailed reports whether err means "the hub could not be asked"
// (so the cache answers) rather than "the hub said no".
func upstreamFailed(err error) bool {
	var se *status.Error
	return !errors.As(err, &se)
}

// upstreamCtx bounds a twin call through the link when the cache can
// answer instead: a link that is cut but not yet known to be (TCP gives
// no sign until the keepalive) must not hold a device's request.
func (e *Edge) upstreamCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.cfg.TwinTimeout)
}

func (e *Edge) twinGet(ctx context.Context, deviceID, moduleID string) ([]byte, error) {
	cid := message.ClientID(deviceID, moduleID)
	if e.up.State().Connected {
		uctx, cancel := ctx, context.CancelFunc(func() {})
		if e.twins.has(cid) {
			uctx, cancel = e.upstreamCtx(ctx)
		}
		body, err := e.up.TwinGet(uctx, deviceID, moduleID)
		cancel()
		if err == nil {
			return e.twins.storeFetched(cid, body)
		}
		if !upstreamFailed(err) {
			return nil, err
		}
		e.log.Info("twin get: answering from the cache", "client", cid, "error", err)
	}
	return e.twins.get(cid)
}

// twinReported applies a reported patch: through the link when it is up,
// else (or when the link does not answer within TwinTimeout, or is down)
// in the cache, answered at once and held for the hub. While a held
// patch exists for the client, a new one is merged into it and the whole
// goes up, so the hub never sees an older held value after a newer one.
func (e *Edge) twinReported(ctx context.Context, deviceID, moduleID string, body []byte) (int64, error) {
	cid := message.ClientID(deviceID, moduleID)
	patch, err := twin.ParsePatch(body)
	if err != nil {
		return 0, err
	}
	if e.up.State().Connected {
		unlock := e.twins.lockReported(cid)
		send := body
		held, herr := e.twins.mergeHeld(cid, patch)
		if herr != nil {
			unlock()
			return 0, herr
		}
		if held != nil {
			send = held
		}
		uctx, cancel := e.upstreamCtx(ctx)
		v, err := e.up.TwinReported(uctx, deviceID, moduleID, send)
		cancel()
		if err == nil {
			e.twins.reached(cid, held, patch, v)
			unlock()
			return v, nil
		}
		if !upstreamFailed(err) {
			if held != nil {
				e.twins.dropHeld(cid, held)
				e.log.Error("hub refused reported properties held offline; dropping them", "client", cid, "error", err)
			}
			unlock()
			return 0, err
		}
		unlock()
		e.log.Info("twin reported: holding the patch offline", "client", cid, "error", err)
		// The link looked up: have the patch replayed without waiting
		// for a reconnect that may never be noticed as one.
		e.pokeReplay()
		if held != nil {
			// Already merged into the held patch.
			return e.twins.applyLocal(cid, patch, false)
		}
	}
	return e.twins.applyLocal(cid, patch, true)
}

// pokeReplay asks maintain to replay held patches.
func (e *Edge) pokeReplay() {
	select {
	case e.replayCh <- struct{}{}:
	default:
	}
}

// replayReported sends the reported patches held offline to the hub,
// one merged patch per client. A patch the hub refuses is dropped
// (logged): it would be refused forever. It reports whether every held
// patch was dealt with. Each patch may take up to perCall.
func (e *Edge) replayReported(ctx context.Context, perCall time.Duration) bool {
	for _, cid := range e.twins.heldClients() {
		if !e.replayOne(ctx, cid, perCall) {
			return false
		}
	}
	return true
}

// replayOne sends cid's held patch; false when the link failed.
func (e *Edge) replayOne(ctx context.Context, cid string, perCall time.Duration) bool {
	unlock := e.twins.lockReported(cid)
	defer unlock()
	held, err := e.twins.held(cid)
	if err != nil {
		return true // sent meanwhile by a live patch
	}
	d, m, _ := strings.Cut(cid, "/")
	rctx, cancel := context.WithTimeout(ctx, perCall)
	v, err := e.up.TwinReported(rctx, d, m, held)
	cancel()
	if err != nil && upstreamFailed(err) {
		e.log.Info("twin replay paused: link down", "client", cid, "error", err)
		return false
	}
	if err != nil {
		e.log.Error("hub refused reported properties held offline; dropping them", "client", cid, "error", err)
		e.twins.dropHeld(cid, held)
		return true
	}
	e.twins.reached(cid, held, nil, v)
	e.log.Info("reported properties held offline reached the hub", "client", cid, "version", v)
	return true
}

// replayTimeout bounds one replayed patch, or twin fetch, after a
// reconnect.
const replayTimeout = 10 * time.Second

// reconcileDesired runs on reconnect: for each connected client, it gets
// the twin through the link and, when the hub's desired $version moved
// past the one the client was last given (desired changes made while the
// edge was offline), sends the client one patch with the differences and
// the hub's version.
func (e *Edge) reconcileDesired(ctx context.Context) {
	e.mu.Lock()
	sessions := make([]gateway.Session, 0, len(e.sessions))
	for _, s := range e.sessions {
		sessions = append(sessions, s)
	}
	e.mu.Unlock()
	for _, s := range sessions {
		if ctx.Err() != nil {
			return
		}
		id := s.Identity()
		cid := id.ClientID()
		rctx, cancel := context.WithTimeout(ctx, replayTimeout)
		body, err := e.up.TwinGet(rctx, id.DeviceID, id.ModuleID)
		cancel()
		if err != nil {
			if upstreamFailed(err) {
				e.log.Info("desired reconciliation paused: link down", "client", cid, "error", err)
				return
			}
			e.log.Warn("desired reconciliation: twin get refused", "client", cid, "error", err)
			continue
		}
		fresh, err := twin.DecodeObject(body)
		if err != nil {
			e.log.Warn("desired reconciliation: twin from hub", "client", cid, "error", err)
			continue
		}
		newDes := section(fresh, "desired")
		newV := twin.SectionVersion(newDes)
		patch, oldV, ok := e.twins.setDesired(cid, newDes)
		if !ok {
			continue
		}
		b := twin.DesiredPatchBody(patch, newV)
		if b == nil {
			e.log.Warn("desired reconciliation: patch does not encode", "client", cid)
			continue
		}
		if err := s.SendDesired(newV, b); err != nil {
			e.log.Debug("desired reconciliation: patch not delivered", "client", cid, "error", err)
			continue
		}
		e.log.Info("desired changes made while offline sent", "client", cid, "from", oldV, "to", newV)
	}
}

// DesiredPatch relays a desired-properties update from the hub to a
// connected client and keeps the cached twin current.
func (e *Edge) DesiredPatch(deviceID, moduleID string, version int64, patch []byte) {
	cid := message.ClientID(deviceID, moduleID)
	if p, err := twin.DecodeObject(patch); err == nil {
		delete(p, "$version")
		if cur, ok := e.twins.mergeDesired(cid, version, p); !ok {
			// Already covered, e.g. by the reconciliation after a
			// reconnect: versions a client sees only move forward.
			e.log.Debug("stale desired patch dropped", "client", cid, "version", version, "cached", cur)
			return
		}
	}
	if s := e.session(cid); s != nil {
		if err := s.SendDesired(version, patch); err != nil {
			e.log.Debug("desired patch not delivered", "client", cid, "error", err)
		}
	}
}
