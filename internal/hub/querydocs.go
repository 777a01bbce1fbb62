package hub

import (
	"slices"
	"strings"
	"sync"

	"outpost/internal/identity"
	"outpost/internal/query"
	"outpost/internal/twin"
)

// queryCache keeps each table's keys in id order, rebuilt only when the
// table's membership changes, since paging needs a stable order and
// sorting 100k ids per query would dominate its cost.
//
// It also keeps, per source, the documents of the last query while no
// device, module or twin has changed since, so repeated queries over a
// quiet registry skip the index lookups.
type queryCache struct {
	mu     sync.Mutex // guards the following fields
	sorted map[*table]sortedKeys
	snaps  map[string]docSnap
}

type docSnap struct {
	changes [4]uint64 // of the devices, modules, twins and presence tables
	docs    []query.Doc
}

// snapshot returns the cached documents of source if built at changes.
func (c *queryCache) snapshot(source string, changes [4]uint64) ([]query.Doc, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.snaps[source]
	if !ok || s.changes != changes {
		return nil, false
	}
	return s.docs, true
}

func (c *queryCache) store(source string, changes [4]uint64, docs []query.Doc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snaps == nil {
		c.snaps = map[string]docSnap{}
	}
	c.snaps[source] = docSnap{changes: changes, docs: docs}
}

type sortedKeys struct {
	gen  uint64
	keys []string
}

// keys returns t's keys in order, as a slice the caller must not modify.
func (c *queryCache) keys(t *table) []string {
	gen := t.generation()
	c.mu.Lock()
	if s, ok := c.sorted[t]; ok && s.gen == gen {
		c.mu.Unlock()
		return s.keys
	}
	c.mu.Unlock()
	type entry struct{ key, d, m string }
	entries := make([]entry, 0, t.len())
	t.each(func(k string, _ *row) bool {
		if d, m, err := splitKey(k); err == nil {
			entries = append(entries, entry{k, d, m})
		}
		return true
	})
	// By id, not by key: base64 does not keep the ids' order.
	slices.SortFunc(entries, func(a, b entry) int {
		if c := strings.Compare(a.d, b.d); c != 0 {
			return c
		}
		return strings.Compare(a.m, b.m)
	})
	keys := make([]string, len(entries))
	for i, e := range entries {
		keys[i] = e.key
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sorted == nil {
		c.sorted = map[*table]sortedKeys{}
	}
	c.sorted[t] = sortedKeys{gen: gen, keys: keys}
	return keys
}

// twinDoc renders a served twin as the query language sees it: the JSON
// shape of the twin, with the values encoding/json would decode (numbers
// in tags and properties stay json.Number, which the evaluator reads).
// The document shares t's maps.
func twinDoc(t *twin.Twin, isModule bool) map[string]any {
	doc := map[string]any{
		"deviceId":                  t.DeviceID,
		"etag":                      t.ETag,
		"deviceEtag":                t.DeviceETag,
		"status":                    t.Status,
		"statusReason":              t.StatusReason,
		"connectionState":           t.ConnectionState,
		"cloudToDeviceMessageCount": float64(t.CloudToDeviceMessageCount),
		"authenticationType":        t.AuthenticationType,
		"version":                   float64(t.Version),
		"tags":                      t.Tags,
		"properties": map[string]any{
			"desired":  t.Properties.Desired,
			"reported": t.Properties.Reported,
		},
	}
	if !t.LastActivityTime.IsZero() {
		doc["lastActivityTime"] = t.LastActivityTime.UTC().Format("2006-01-02T15:04:05.9999999Z")
	}
	if t.X509Thumbprint != nil {
		doc["x509Thumbprint"] = map[string]any{
			"primaryThumbprint":   t.X509Thumbprint.PrimaryThumbprint,
			"secondaryThumbprint": t.X509Thumbprint.SecondaryThumbprint,
		}
	}
	if isModule {
		doc["moduleId"] = t.ModuleID
		return doc
	}
	edge := t.Capabilities != nil && t.Capabilities.IoTEdge
	doc["capabilities"] = map[string]any{"iotEdge": edge}
	doc["deviceScope"] = t.DeviceScope
	parents := make([]any, len(t.ParentScopes))
	for i, p := range t.ParentScopes {
		parents[i] = p
	}
	doc["parentScopes"] = parents
	return doc
}

// queryDoc is the query language's view of a device or module twin. It
// reads the stored device, module and twin in place (they are never
// mutated once stored), answering the common paths (tags, properties,
// ids, status, scopes, capabilities) without building a document; any
// other path, and SELECT *, use the whole document, built on first need.
type queryDoc struct {
	d *identity.Device
	m *identity.Module // nil for a device twin
	t *twin.Twin       // stored twin, registry fields not filled

	once  sync.Once // documents are shared by concurrent queries
	whole map[string]any
}

// Lookup implements query.Doc.
func (q *queryDoc) Lookup(path []string) (any, bool) {
	if len(path) == 0 {
		return q.document(), true
	}
	rest := path[1:]
	switch path[0] {
	case "deviceId":
		return leaf(q.d.DeviceID, rest)
	case "moduleId":
		if q.m == nil {
			return nil, false
		}
		return leaf(q.m.ModuleID, rest)
	case "status":
		return leaf(q.d.Status, rest)
	case "tags":
		return query.MapDoc(q.t.Tags).Lookup(rest)
	case "properties":
		if len(rest) > 0 {
			switch rest[0] {
			case "desired":
				return query.MapDoc(q.t.Properties.Desired).Lookup(rest[1:])
			case "reported":
				return query.MapDoc(q.t.Properties.Reported).Lookup(rest[1:])
			}
		}
	case "capabilities":
		if q.m == nil && len(rest) == 1 && rest[0] == "iotEdge" {
			return q.d.IsEdge(), true
		}
	case "deviceScope":
		if q.m == nil {
			return leaf(q.d.DeviceScope, rest)
		}
	case "connectionState":
		if q.m != nil {
			return leaf(q.m.ConnectionState, rest)
		}
		return leaf(q.d.ConnectionState, rest)
	}
	return query.MapDoc(q.document()).Lookup(path)
}

// leaf answers a path that ends at a string field.
func leaf(v string, rest []string) (any, bool) {
	if len(rest) > 0 {
		return nil, false
	}
	return v, true
}

func (q *queryDoc) document() map[string]any {
	q.once.Do(func() { q.whole = twinDoc(compose(q.t, q.d, q.m), q.m != nil) })
	return q.whole
}

// deviceQueryDoc returns the query document of the device at key, or nil
// if it vanished.
func (h *Hub) deviceQueryDoc(key string) query.Doc {
	dr, ok := h.devTab.get(key)
	if !ok {
		return nil
	}
	d := h.withPresence(dr.val.(*identity.Device))
	return &queryDoc{d: d, t: h.storedTwin(key, d.DeviceID, "")}
}

// moduleQueryDoc is deviceQueryDoc for the module at key.
func (h *Hub) moduleQueryDoc(key string) query.Doc {
	mr, ok := h.modTab.get(key)
	if !ok {
		return nil
	}
	m := h.withModulePresence(mr.val.(*identity.Module))
	dr, ok := h.devTab.get(deviceKey(m.DeviceID))
	if !ok {
		return nil
	}
	return &queryDoc{d: dr.val.(*identity.Device), m: m, t: h.storedTwin(key, m.DeviceID, m.ModuleID)}
}

// storedTwin returns the stored twin at key, or a fresh one if a crash
// left the entity without one. The result must not be modified.
func (h *Hub) storedTwin(key, deviceID, moduleID string) *twin.Twin {
	if tr, ok := h.twinTab.get(key); ok {
		return tr.val.(*twinRecord).Twin
	}
	return h.newTwinRecord(deviceID, moduleID).Twin
}
