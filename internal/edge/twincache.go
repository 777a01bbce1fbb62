package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"outpost/internal/edge/store"
	"outpost/internal/twin"
)

// twinCache keeps, per client, the body a device sees on GET
// ({"desired":{…,"$version"},"reported":{…,"$version"}}), and the
// reported patches accepted while offline, merged, until they reach the
// hub. It never calls the link: the Edge does (twins.go), and tells the
// cache what the hub said.
//
// Lock order: a client's reported lock (lockReported), then mu. repMu is
// never held with another.
type twinCache struct {
	st  *store.Store
	log *slog.Logger

	// mu serializes every read-modify-write of the twin and held-patch
	// keys in st.
	mu sync.Mutex

	repMu sync.Mutex
	// repMu guards repLocks, the per-client locks of reported patches on
	// their way to the hub (see lockReported).
	repLocks map[string]*refMutex
}

// emptyTwin is served to a client whose twin was never fetched.
const emptyTwin = `{"desired":{"$version":1},"reported":{"$version":1}}`

func twinKey(cid string) []byte    { return []byte(kvTwinPrefix + cid) }
func pendingKey(cid string) []byte { return []byte(kvPendPrefix + cid) }

// get returns cid's cached twin body, or the empty twin.
func (c *twinCache) get(cid string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	doc, err := c.docLocked(cid)
	if err != nil {
		return nil, err
	}
	return json.Marshal(doc)
}

// has reports whether a twin was ever cached for cid.
func (c *twinCache) has(cid string) bool {
	_, err := c.st.Get(twinKey(cid))
	return err == nil
}

// storeFetched stores the hub's twin, with reported patches still held
// offline laid over it so the client sees its own writes, and returns
// what the client is served.
func (c *twinCache) storeFetched(cid string, body []byte) ([]byte, error) {
	doc, err := twin.DecodeObject(body)
	if err != nil {
		return nil, fmt.Errorf("twin from hub: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, err := c.st.Get(pendingKey(cid)); err == nil {
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
	// The hub's copy is served either way; a stale cache only matters
	// offline, and the next fetch rewrites it.
	if err := c.st.Put(twinKey(cid), out); err != nil {
		c.log.Warn("twin cache write", "client", cid, "error", err)
	}
	return out, nil
}

func (c *twinCache) docLocked(cid string) (map[string]any, error) {
	v, err := c.st.Get(twinKey(cid))
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

// applyLocal merges patch into the cached twin, and into the held patch
// when hold is set, and returns the local reported version.
func (c *twinCache) applyLocal(cid string, patch map[string]any, hold bool) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	doc, err := c.docLocked(cid)
	if err != nil {
		return 0, err
	}
	// The held patch and the cached twin go in one synced write: a power
	// cut keeps both or neither, so what the device was told it reported
	// is what the hub gets after the reconnect.
	var kvs []store.KV
	if hold {
		pb, err := c.mergedHeldLocked(cid, doc, patch, true)
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
	if err := c.st.PutBatch(append(kvs, store.KV{Key: twinKey(cid), Value: b})...); err != nil {
		return 0, fmt.Errorf("hold reported patch: %w", err)
	}
	return v, nil
}

// mergeHeld merges patch into cid's held patch, if one exists, and
// persists and returns the merged held patch; nil when none is held.
func (c *twinCache) mergeHeld(cid string, patch map[string]any) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	doc, err := c.docLocked(cid)
	if err != nil {
		return nil, err
	}
	pb, err := c.mergedHeldLocked(cid, doc, patch, false)
	if err != nil || pb == nil {
		return pb, err
	}
	if err := c.st.Put(pendingKey(cid), pb); err != nil {
		return nil, fmt.Errorf("hold reported patch: %w", err)
	}
	return pb, nil
}

// mergedHeldLocked returns cid's held patch with patch merged in, or nil
// if none is held and create is not set. doc is cid's cached twin. Its
// "$version" is the reported version the client is answered for it (the
// cached one + 1): the hub makes its own at least that
// (twin.ParseVersionedPatch), so the client never sees it go back.
func (c *twinCache) mergedHeldLocked(cid string, doc, patch map[string]any, create bool) ([]byte, error) {
	p, err := c.st.Get(pendingKey(cid))
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
	pending["$version"] = twin.SectionVersion(section(doc, "reported")) + 1
	return json.Marshal(pending)
}

// held returns cid's held patch, or store.ErrNotFound.
func (c *twinCache) held(cid string) ([]byte, error) {
	return c.st.Get(pendingKey(cid))
}

// heldClients lists the clients with a held patch.
func (c *twinCache) heldClients() []string {
	var cids []string
	_ = c.st.Scan([]byte(kvPendPrefix), func(k, v []byte) error {
		cids = append(cids, strings.TrimPrefix(string(k), kvPendPrefix))
		return nil
	})
	return cids
}

// dropHeld deletes cid's held patch if it still is sent (nil: none was
// sent): a patch held meanwhile was merged into it, and goes next time.
func (c *twinCache) dropHeld(cid string, sent []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropHeldLocked(cid, sent)
}

func (c *twinCache) dropHeldLocked(cid string, sent []byte) {
	if sent == nil {
		return
	}
	cur, err := c.st.Get(pendingKey(cid))
	if err == nil && bytes.Equal(cur, sent) {
		if err := c.st.Delete(pendingKey(cid)); err != nil {
			c.log.Warn("delete held reported patch", "client", cid, "error", err)
		}
	}
}

// reached records that the hub took a reported patch at version v: sent
// (the held patch that went, or nil) is dropped, and patch (nil for a
// replay, already in the cache) is merged into the cached twin. The hub
// has it, so a failed cache write is only logged: the next fetch rewrites
// the cache.
func (c *twinCache) reached(cid string, sent []byte, patch map[string]any, v int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropHeldLocked(cid, sent)
	doc, err := c.docLocked(cid)
	if err != nil {
		return
	}
	rep := section(doc, "reported")
	twin.Merge(rep, patch)
	rep["$version"] = v
	c.putLocked(cid, doc)
}

// setDesired replaces cid's cached desired section with des when its
// $version is past the cached one, and returns the patch from the old
// desired properties to des and the old version; ok is false when des is
// not newer.
func (c *twinCache) setDesired(cid string, des map[string]any) (patch map[string]any, oldV int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	doc, err := c.docLocked(cid)
	if err != nil {
		return nil, 0, false
	}
	oldDes := section(doc, "desired")
	oldV = twin.SectionVersion(oldDes)
	if twin.SectionVersion(des) <= oldV {
		return nil, oldV, false
	}
	patch = twin.Diff(oldDes, des)
	doc["desired"] = des
	c.putLocked(cid, doc)
	return patch, oldV, true
}

// mergeDesired merges a desired patch at version into cid's cached twin;
// false (with the cached version) when the cache already has version.
func (c *twinCache) mergeDesired(cid string, version int64, patch map[string]any) (cur int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	doc, err := c.docLocked(cid)
	if err != nil {
		return 0, true
	}
	des := section(doc, "desired")
	if cur := twin.SectionVersion(des); version <= cur {
		return cur, false
	}
	twin.Merge(des, patch)
	des["$version"] = version
	c.putLocked(cid, doc)
	return version, true
}

// putLocked writes a twin the hub already has: a failure only leaves the
// cache behind until the next fetch, so it is logged.
func (c *twinCache) putLocked(cid string, doc map[string]any) {
	b, err := json.Marshal(doc)
	if err == nil {
		err = c.st.Put(twinKey(cid), b)
	}
	if err != nil {
		c.log.Warn("twin cache write", "client", cid, "error", err)
	}
}

// lockReported serializes the reported patches of one client on their
// way to the hub (a live patch and the replay of held ones), so they
// reach it in the order they were merged. It is held across the link
// call, which TwinTimeout bounds.
func (c *twinCache) lockReported(cid string) (unlock func()) {
	c.repMu.Lock()
	if c.repLocks == nil {
		c.repLocks = map[string]*refMutex{}
	}
	l := c.repLocks[cid]
	if l == nil {
		l = &refMutex{}
		c.repLocks[cid] = l
	}
	l.refs++
	c.repMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		c.repMu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(c.repLocks, cid)
		}
		c.repMu.Unlock()
	}
}

// refMutex is a per-client lock, dropped when nobody holds or waits.
type refMutex struct {
	mu   sync.Mutex
	refs int
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
