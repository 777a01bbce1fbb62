package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/route"
	"outpost/internal/twin"
)

// storedConfig is the $edgeHub configuration last put in force.
type storedConfig struct {
	// Desired is the merged $edgeHub desired document, to which later
	// patches apply.
	Desired json.RawMessage `json:"desired,omitempty"`
	// Routes is the last "routes" object that parsed.
	Routes json.RawMessage `json:"routes,omitempty"`
}

// loadConfig restores the routes last in force (the TTL is the store's
// own, persisted by SetTTL).
func (e *Edge) loadConfig() error {
	e.cfgMu.Lock()
	defer e.cfgMu.Unlock()
	e.desired = map[string]any{}
	v, err := e.st.Get([]byte(kvConfig))
	if errors.Is(err, store.ErrNotFound) {
		tbl, err := parseRoutes(nil)
		if err != nil {
			return fmt.Errorf("default route: %w", err)
		}
		e.routes = tbl
		e.configureEndpointsLocked()
		return nil
	}
	if err != nil {
		return fmt.Errorf("read edge config: %w", err)
	}
	var sc storedConfig
	if err := json.Unmarshal(v, &sc); err != nil {
		return fmt.Errorf("stored edge config is corrupt: %w", err)
	}
	if len(sc.Desired) > 0 {
		d, err := twin.DecodeObject(sc.Desired)
		if err != nil {
			return fmt.Errorf("stored edge config is corrupt: %w", err)
		}
		e.desired = d
	}
	tbl, err := parseRoutes(sc.Routes)
	if err != nil {
		return fmt.Errorf("stored edge routes: %w", err)
	}
	e.routes, e.routesRaw = tbl, sc.Routes
	e.configureEndpointsLocked()
	return nil
}

// EdgeHubDesired applies the $edgeHub module twin's desired properties
// (the full document on GET, a patch on update; both merge): routes and
// storeAndForwardConfiguration.timeToLiveSecs. A part that is invalid is
// refused with a logged error and what was in force stays in force.
func (e *Edge) EdgeHubDesired(doc []byte) {
	patch, err := twin.DecodeObject(doc)
	if err != nil {
		e.log.Error("refusing $edgeHub desired properties: not a JSON object", "error", err)
		return
	}
	delete(patch, "$version")
	delete(patch, "$metadata")

	e.applyDesired(patch)
	// New routes may name endpoints whose consumers are connected, and
	// upstream endpoints the link must list again.
	e.startDeliveries()
	e.up.Kick()
}

func (e *Edge) applyDesired(patch map[string]any) {
	e.cfgMu.Lock()
	defer e.cfgMu.Unlock()
	twin.Merge(e.desired, patch)

	if _, touched := patch["routes"]; touched {
		var raw json.RawMessage
		if r, ok := e.desired["routes"]; ok {
			raw, _ = json.Marshal(r)
		}
		tbl, err := parseRoutes(raw)
		if err != nil {
			e.log.Error("refusing $edgeHub routes; the previous routes stay in force", "error", err)
		} else {
			e.routes, e.routesRaw = tbl, raw
			e.configureEndpointsLocked()
			e.log.Info("routes in force", "routes", len(tbl.Routes))
		}
	}

	if saf, ok := e.desired["storeAndForwardConfiguration"].(map[string]any); ok {
		if v, present := saf["timeToLiveSecs"]; present {
			if ttl, err := parseTTL(v); err != nil {
				e.log.Error("refusing $edgeHub storeAndForwardConfiguration; the previous TTL stays in force", "error", err)
			} else if ttl != e.st.TTL() {
				if err := e.st.SetTTL(ttl); err != nil {
					e.log.Error("setting store TTL", "error", err)
				} else {
					e.routes.GlobalTTL = ttl
					e.log.Info("store-and-forward TTL in force", "ttlSeconds", int64(ttl/time.Second))
				}
			}
		}
	}

	desired, _ := json.Marshal(e.desired)
	b, _ := json.Marshal(storedConfig{Desired: desired, Routes: e.routesRaw})
	if err := e.st.Put([]byte(kvConfig), b); err != nil {
		e.log.Error("persisting edge config", "error", err)
	}
}

// parseTTL reads timeToLiveSecs: a whole number of seconds in
// [1, MaxInt32], as IoT Edge allows.
func parseTTL(v any) (time.Duration, error) {
	var n int64
	switch x := v.(type) {
	case json.Number:
		i, err := x.Int64()
		if err != nil {
			return 0, fmt.Errorf("timeToLiveSecs %q is not a whole number", x.String())
		}
		n = i
	case float64:
		if x != math.Trunc(x) {
			return 0, fmt.Errorf("timeToLiveSecs %v is not a whole number", x)
		}
		n = int64(x)
	default:
		return 0, fmt.Errorf("timeToLiveSecs is %T, not a number", v)
	}
	if n <= 0 || n > math.MaxInt32 {
		return 0, fmt.Errorf("timeToLiveSecs %d out of range [1, %d]", n, math.MaxInt32)
	}
	return time.Duration(n) * time.Second, nil
}

// configureEndpointsLocked gives each route's store endpoint its
// priority; when several routes share an endpoint (routes into $upstream
// while the link drains only UpstreamEndpoint), the highest wins.
// UpstreamEndpoint is always configured, at 0 as its name says: the link
// drains it whatever the routes, and an endpoint nobody configured has
// store.DefaultPriority, which would rank it below "$upstream/pN".
// TTLs travel with each message (store.Record.TTL, from Table.Match), so
// endpoints keep the store's TTL.
func (e *Edge) configureEndpointsLocked() {
	e.routes.GlobalTTL = e.st.TTL()
	best := map[string]int{UpstreamEndpoint: 0}
	for _, r := range e.routes.Routes {
		ep := e.storeEndpoint(r)
		if p, ok := best[ep]; !ok || r.Priority < p {
			best[ep] = r.Priority
		}
	}
	stats := e.st.Stats()
	for ep, p := range best {
		if cur, ok := stats[ep]; ok && cur.Priority == p && cur.TTL == e.st.TTL() {
			continue
		}
		if err := e.st.SetEndpoint(ep, store.EndpointConfig{Priority: p}); err != nil {
			e.log.Error("configuring endpoint", "endpoint", ep, "error", err)
		}
	}
}

func (e *Edge) routeTable() route.Table {
	e.cfgMu.Lock()
	defer e.cfgMu.Unlock()
	return e.routes
}
