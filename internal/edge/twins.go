package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"outpost/internal/edge/store"
	"outpost/internal/gateway"
	"outpost/internal/message"
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
	var se *gateway.StatusError
	return !errors.As(err, &se)
}

func (e *Edge) twinGet(ctx context.Context, deviceID, moduleID string) ([]byte, error) {
	cid := message.ClientID(deviceID, moduleID)
	if e.up.State().Connected {
		body, err := e.up.TwinGet(ctx, deviceID, moduleID)
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
	doc, err := decodeObject(body)
	if err != nil {
		return nil, fmt.Errorf("twin from hub: %w", err)
	}
	e.twinMu.Lock()
	defer e.twinMu.Unlock()
	if p, err := e.st.Get(pendingKey(cid)); err == nil {
		if patch, err := decodeObject(p); err == nil {
			rep := section(doc, "reported")
			twin.Merge(rep, patch)
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

func (e *Edge) cachedTwinLocked(cid string) (map[string]any, error) {
	v, err := e.st.Get(twinKey(cid))
	if errors.Is(err, store.ErrNotFound) {
		v = []byte(emptyTwin)
	} else if err != nil {
		return nil, fmt.Errorf("twin cache: %w", err)
	}
	doc, err := decodeObject(v)
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

func (e *Edge) twinReported(ctx context.Context, deviceID, moduleID string, body []byte) (int64, error) {
	cid := message.ClientID(deviceID, moduleID)
	patch, err := twin.ParsePatch(body)
	if err != nil {
		var te *twin.Error
		if errors.As(err, &te) {
			return 0, &gateway.StatusError{Status: te.Status, Code: te.Code, Message: te.Message}
		}
		return 0, err
	}
	if e.up.State().Connected {
		v, err := e.up.TwinReported(ctx, deviceID, moduleID, body)
		if err == nil {
			e.twinMu.Lock()
			defer e.twinMu.Unlock()
			if doc, err := e.cachedTwinLocked(cid); err == nil {
				rep := section(doc, "reported")
				twin.Merge(rep, patch)
				rep["$version"] = v
				e.putTwinLocked(cid, doc)
			}
			return v, nil
		}
		if !upstreamFailed(err) {
			return 0, err
		}
		e.log.Info("twin reported: holding the patch offline", "client", cid, "error", err)
	}

	e.twinMu.Lock()
	defer e.twinMu.Unlock()
	doc, err := e.cachedTwinLocked(cid)
	if err != nil {
		return 0, err
	}
	rep := section(doc, "reported")
	twin.Merge(rep, patch)
	v := twin.SectionVersion(rep) + 1
	rep["$version"] = v
	pending := map[string]any{}
	if p, err := e.st.Get(pendingKey(cid)); err == nil {
		if m, err := decodeObject(p); err == nil {
			pending = m
		}
	}
	mergePending(pending, patch)
	pb, err := json.Marshal(pending)
	if err != nil {
		return 0, err
	}
	if err := e.st.Put(pendingKey(cid), pb); err != nil {
		return 0, fmt.Errorf("hold reported patch: %w", err)
	}
	e.putTwinLocked(cid, doc)
	return v, nil
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

// replayReported sends the reported patches held offline to the hub, on
// reconnect. A patch the hub refuses is dropped (logged): it would be
// refused forever.
func (e *Edge) replayReported(ctx context.Context) {
	type held struct {
		cid   string
		patch []byte
	}
	var all []held
	_ = e.st.Scan([]byte(kvPendPrefix), func(k, v []byte) error {
		all = append(all, held{cid: strings.TrimPrefix(string(k), kvPendPrefix), patch: v})
		return nil
	})
	for _, h := range all {
		d, m, _ := strings.Cut(h.cid, "/")
		v, err := e.up.TwinReported(ctx, d, m, h.patch)
		if err != nil && upstreamFailed(err) {
			e.log.Info("twin replay paused: link down", "client", h.cid, "error", err)
			return
		}
		if err != nil {
			e.log.Error("hub refused reported properties held offline; dropping them", "client", h.cid, "error", err)
		}
		e.twinMu.Lock()
		cur, gerr := e.st.Get(pendingKey(h.cid))
		// Only delete what was sent: a patch held meanwhile goes next time.
		if gerr == nil && bytes.Equal(cur, h.patch) {
			if derr := e.st.Delete(pendingKey(h.cid)); derr != nil {
				e.log.Warn("twin replay: delete held patch", "client", h.cid, "error", derr)
			}
		}
		if err == nil {
			if doc, cerr := e.cachedTwinLocked(h.cid); cerr == nil {
				section(doc, "reported")["$version"] = v
				e.putTwinLocked(h.cid, doc)
			}
		}
		e.twinMu.Unlock()
		if err == nil {
			e.log.Info("reported properties held offline reached the hub", "client", h.cid, "version", v)
		}
	}
}

// DesiredPatch relays a desired-properties update from the hub to a
// connected client and keeps the cached twin current.
func (e *Edge) DesiredPatch(deviceID, moduleID string, version int64, patch []byte) {
	cid := message.ClientID(deviceID, moduleID)
	if p, err := decodeObject(patch); err == nil {
		delete(p, "$version")
		e.twinMu.Lock()
		if doc, err := e.cachedTwinLocked(cid); err == nil {
			des := section(doc, "desired")
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
