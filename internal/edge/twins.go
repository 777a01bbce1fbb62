package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/gateway"
	"outpost/internal/message"
	"outpost/internal/status"
	"outpost/internal/twin"
)

// The twin cache keeps, per client, the body a device sees on GET
// ({"desired":{…,"$version"},"reported":{…,"$version"}}), and the
// reported patches accepted while offline, merged, until they reach the
// hub.

// emptyTwin is served to a client whose twin was never fetched.
const emptyTwin = `{"desired":{"$version":1},"reported":{"$version":1}}`

func twinKey(cid string) []byte    { return []byte(kvTwinPrefix + cid) }
func pendingKey(cid string) []byte { return []byte(kvPendPrefix + cid) }

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
		if e.hasCachedTwin(cid) {
			uctx, cancel = e.upstreamCtx(ctx)
		}
		body, err := e.up.TwinGet(uctx, deviceID, moduleID)
		cancel()
		if err == nil {
			return e.cacheFetchedTwin(cid, body)
		}
		if !upstreamFailed(err) {
			return nil, err
		}
		e.log.Info("twin get: answering from the cache", "client", cid, "error", err)
	}
	e.twinMu.Lock()
	defer e.twinMu.Unlock()
	doc, err := e.cachedTwinLocked(cid)
	if err != nil {
		return nil, err
	}
	return json.Marshal(doc)
}

// cacheFetchedTwin stores the hub's twin, with reported patches still
// held offline laid over it so the client sees its own writes.
func (e *Edge) cacheFetchedTwin(cid string, body []byte) ([]byte, error) {
	doc, err := twin.DecodeObject(body)
	if err != nil {
		return nil, fmt.Errorf("twin from hub: %w", err)
	}
	e.twinMu.Lock()
	defer e.twinMu.Unlock()
	if p, err := e.st.Get(pendingKey(cid)); err == nil {
		if patch, err := twin.DecodeObject(p); err == nil {
			rep := section(doc, "reported")
			hubV := twin.SectionVersion(rep)
			heldV := twin.SectionVersion(patch)
			delete(patch, "$version")
			twin.Merge(rep, patch)
			// The client was told heldV for its held changes.
			rep["$version"] = max(hubV, heldV)
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	if err := e.st.Put(twinKey(cid), out); err != nil {
		e.log.Warn("twin cache write", "client", cid, "error", err)
	}
	return out, nil
}

// hasCachedTwin reports whether a twin was ever cached for cid.
func (e *Edge) hasCachedTwin(cid string) bool {
	_, err := e.st.Get(twinKey(cid))
	return err == nil
}

func (e *Edge) cachedTwinLocked(cid string) (map[string]any, error) {
	v, err := e.st.Get(twinKey(cid))
	if errors.Is(err, store.ErrNotFound) {
		v = []byte(emptyTwin)
	} else if err != nil {
		return nil, fmt.Errorf("twin cache: %w", err)
	}
	doc, err := twin.DecodeObject(v)
	if err != nil {
		return nil, fmt.Errorf("twin cache: %w", err)
	}
	return doc, nil
}

// section returns doc[name] as an object, creating it.
func section(doc map[string]any, name string) map[string]any {
	s, ok := doc[name].(map[string]any)
	if !ok {
		s = map[string]any{}
		doc[name] = s
	}
	return s
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
		unlock := e.lockReported(cid)
		send := body
		e.twinMu.Lock()
		held, herr := e.mergeHeldLocked(cid, patch)
		e.twinMu.Unlock()
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
			e.twinMu.Lock()
			if held != nil {
				e.dropHeldLocked(cid, held)
			}
			if doc, err := e.cachedTwinLocked(cid); err == nil {
				rep := section(doc, "reported")
				twin.Merge(rep, patch)
				rep["$version"] = v
				e.putTwinLocked(cid, doc)
			}
			e.twinMu.Unlock()
			unlock()
			return v, nil
		}
		if !upstreamFailed(err) {
			if held != nil {
				e.twinMu.Lock()
				e.dropHeldLocked(cid, held)
				e.twinMu.Unlock()
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
			return e.applyReportedLocally(cid, patch, false)
		}
	}
	return e.applyReportedLocally(cid, patch, true)
}

// applyReportedLocally merges patch into the cached twin, and into the
// held patch when hold is set, and returns the local reported version.
func (e *Edge) applyReportedLocally(cid string, patch map[string]any, hold bool) (int64, error) {
	e.twinMu.Lock()
	defer e.twinMu.Unlock()
	doc, err := e.cachedTwinLocked(cid)
	if err != nil {
		return 0, err
	}
	// The held patch and the cached twin go in one synced write: a power
	// cut keeps both or neither, so what the device was told it reported
	// is what the hub gets after the reconnect.
	var kvs []store.KV
	if hold {
		pb, err := e.mergedHeldLocked(cid, patch, true)
		if err != nil {
			return 0, err
		}
		kvs = append(kvs, store.KV{Key: pendingKey(cid), Value: pb})
	}
	rep := section(doc, "reported")
	twin.Merge(rep, patch)
	v := twin.SectionVersion(rep) + 1
	rep["$version"] = v
	b, err := json.Marshal(doc)
	if err != nil {
		return 0, err
	}
	if err := e.st.PutBatch(append(kvs, store.KV{Key: twinKey(cid), Value: b})...); err != nil {
		return 0, fmt.Errorf("hold reported patch: %w", err)
	}
	return v, nil
}

// mergeHeldLocked merges patch into cid's held patch, if one exists, and
// persists and returns the merged held patch; nil when none is held.
func (e *Edge) mergeHeldLocked(cid string, patch map[string]any) ([]byte, error) {
	pb, err := e.mergedHeldLocked(cid, patch, false)
	if err != nil || pb == nil {
		return pb, err
	}
	if err := e.st.Put(pendingKey(cid), pb); err != nil {
		return nil, fmt.Errorf("hold reported patch: %w", err)
	}
	return pb, nil
}

// mergedHeldLocked returns cid's held patch with
// patch merged in, or nil if none is held and create is not set. Its
// "$version" is the reported version the client is answered for it (the
// cached one + 1): the hub makes its own at least that
// (twin.ParseVersionedPatch), so the client never sees it go back.
func (e *Edge) mergedHeldLocked(cid string, patch map[string]any, create bool) ([]byte, error) {
	p, err := e.st.Get(pendingKey(cid))
	pending := map[string]any{}
	switch {
	case errors.Is(err, store.ErrNotFound):
		if !create {
			return nil, nil
		}
	case err != nil:
		return nil, fmt.Errorf("read held reported patch: %w", err)
	default:
		if m, err := twin.DecodeObject(p); err == nil {
			pending = m
		}
	}
	mergePending(pending, patch)
	doc, err := e.cachedTwinLocked(cid)
	if err != nil {
		return nil, err
	}
	pending["$version"] = twin.SectionVersion(section(doc, "reported")) + 1
	return json.Marshal(pending)
}

// dropHeldLocked deletes cid's held patch if it still is sent: a patch
// held meanwhile was merged into it, and goes next time.
func (e *Edge) dropHeldLocked(cid string, sent []byte) {
	cur, err := e.st.Get(pendingKey(cid))
	if err == nil && bytes.Equal(cur, sent) {
		if err := e.st.Delete(pendingKey(cid)); err != nil {
			e.log.Warn("delete held reported patch", "client", cid, "error", err)
		}
	}
}

// lockReported serializes the reported patches of one client on their
// way to the hub (a live patch and the replay of held ones), so they
// reach it in the order they were merged. It is held across the link
// call, which TwinTimeout bounds.
func (e *Edge) lockReported(cid string) (unlock func()) {
	e.repMu.Lock()
	l := e.repLocks[cid]
	if l == nil {
		l = &refMutex{}
		e.repLocks[cid] = l
	}
	l.refs++
	e.repMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		e.repMu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(e.repLocks, cid)
		}
		e.repMu.Unlock()
	}
}

// refMutex is a per-client lock, dropped when nobody holds or waits.
type refMutex struct {
	mu   sync.Mutex
	refs int
}

// pokeReplay asks maintain to replay held patches.
func (e *Edge) pokeReplay() {
	select {
	case e.replayCh <- struct{}{}:
	default:
	}
}

// mergePending merges patch into the held patch, keeping nulls: a
// deletion made offline must still reach the hub.
func mergePending(dst, patch map[string]any) {
	for k, v := range patch {
		pm, ok := v.(map[string]any)
		if !ok {
			dst[k] = v
			continue
		}
		cur, ok := dst[k].(map[string]any)
		if !ok {
			cur = map[string]any{}
			dst[k] = cur
		}
		mergePending(cur, pm)
	}
}

func (e *Edge) putTwinLocked(cid string, doc map[string]any) {
	b, err := json.Marshal(doc)
	if err == nil {
		err = e.st.Put(twinKey(cid), b)
	}
	if err != nil {
		e.log.Warn("twin cache write", "client", cid, "error", err)
	}
}

// replayReported sends the reported patches held offline to the hub,
// one merged patch per client. A patch the hub refuses is dropped
// (logged): it would be refused forever. It reports whether every held
// patch was dealt with. Each patch may take up to perCall.
func (e *Edge) replayReported(ctx context.Context, perCall time.Duration) bool {
	var cids []string
	_ = e.st.Scan([]byte(kvPendPrefix), func(k, v []byte) error {
		cids = append(cids, strings.TrimPrefix(string(k), kvPendPrefix))
		return nil
	})
	for _, cid := range cids {
		if !e.replayOne(ctx, cid, perCall) {
			return false
		}
	}
	return true
}

// replayOne sends cid's held patch; false when the link failed.
func (e *Edge) replayOne(ctx context.Context, cid string, perCall time.Duration) bool {
	unlock := e.lockReported(cid)
	defer unlock()
	held, err := e.st.Get(pendingKey(cid))
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
	}
	e.twinMu.Lock()
	e.dropHeldLocked(cid, held)
	if err == nil {
		if doc, cerr := e.cachedTwinLocked(cid); cerr == nil {
			section(doc, "reported")["$version"] = v
			e.putTwinLocked(cid, doc)
		}
	}
	e.twinMu.Unlock()
	if err == nil {
		e.log.Info("reported properties held offline reached the hub", "client", cid, "version", v)
	}
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
		e.twinMu.Lock()
		doc, err := e.cachedTwinLocked(cid)
		if err != nil {
			e.twinMu.Unlock()
			continue
		}
		oldDes := section(doc, "desired")
		oldV := twin.SectionVersion(oldDes)
		if newV <= oldV {
			e.twinMu.Unlock()
			continue
		}
		patch := twin.Diff(oldDes, newDes)
		doc["desired"] = newDes
		e.putTwinLocked(cid, doc)
		e.twinMu.Unlock()
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
		e.twinMu.Lock()
		if doc, err := e.cachedTwinLocked(cid); err == nil {
			des := section(doc, "desired")
			if cur := twin.SectionVersion(des); version <= cur {
				// Already covered, e.g. by the reconciliation after a
				// reconnect: versions a client sees only move forward.
				e.twinMu.Unlock()
				e.log.Debug("stale desired patch dropped", "client", cid, "version", version, "cached", cur)
				return
			}
			twin.Merge(des, p)
			des["$version"] = version
			e.putTwinLocked(cid, doc)
		}
		e.twinMu.Unlock()
	}
	if s := e.session(cid); s != nil {
		if err := s.SendDesired(version, patch); err != nil {
			e.log.Debug("desired patch not delivered", "client", cid, "error", err)
		}
	}
}
