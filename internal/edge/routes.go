package edge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"outpost/internal/edge/store"
	"outpost/internal/message"
	"outpost/internal/route"
	"outpost/internal/twin"
)

// UpstreamEndpoint is the store endpoint the link drains to the hub: it
// holds what routes of priority 0 (and routes without a priority) send to
// $upstream. Routes of priority N > 0 queue in "$upstream/pN" (see
// UpstreamEndpoints), so a large backlog of low-priority data cannot hold
// back newer high-priority data.
const UpstreamEndpoint = "$upstream"

// Store endpoints are named after a route's sink (route.Sink.String);
// a priority other than 0 adds "/p{N}", so that each priority is a FIFO
// of its own and readers serve them highest first (store.NextByPriority).
// Per-device order holds within one priority.

// storeEndpoint is the store endpoint a route's messages queue in. Routes
// into $upstream share "$upstream" unless the link drains every upstream
// endpoint (EndpointDrainer): an endpoint the link does not read would
// strand its messages.
func (e *Edge) storeEndpoint(r route.Route) string {
	base := r.Sink.String()
	if r.Priority <= 0 || (r.Sink.Kind == route.Upstream && !e.upPriorities) {
		return base
	}
	return base + "/p" + strconv.Itoa(r.Priority)
}

// splitEndpoint reads a store endpoint name back into its sink and
// priority. A sink name is tried whole first, so that a module input
// named like a suffix ("/modules/m/inputs/p3") stays itself.
func splitEndpoint(ep string) (route.Sink, int, bool) {
	if s, ok := route.ParseSink(ep); ok {
		return s, 0, true
	}
	i := strings.LastIndex(ep, "/p")
	if i < 0 {
		return route.Sink{}, 0, false
	}
	p, err := strconv.Atoi(ep[i+2:])
	if err != nil || p < 1 || p > route.MaxPriority || ep[i+2:] != strconv.Itoa(p) {
		return route.Sink{}, 0, false
	}
	s, ok := route.ParseSink(ep[:i])
	return s, p, ok
}

// isUpstream reports whether a store endpoint holds messages for the hub.
func isUpstream(ep string) bool {
	s, _, ok := splitEndpoint(ep)
	return ok && s.Kind == route.Upstream
}

// UpstreamEndpoints lists the store endpoints the link must drain to the
// hub, highest priority first: "$upstream" always, "$upstream/pN" for
// each priority the routes use, and any such endpoint still holding
// messages from earlier routes. Each endpoint's store priority is set,
// so store.NextByPriority over readers of all of them serves newer
// high-priority data ahead of an older low-priority backlog.
func (e *Edge) UpstreamEndpoints() []string {
	prio := map[string]int{UpstreamEndpoint: 0}
	for _, r := range e.routeTable().Routes {
		if r.Sink.Kind == route.Upstream {
			ep := e.storeEndpoint(r)
			_, p, _ := splitEndpoint(ep)
			prio[ep] = p
		}
	}
	for ep, st := range e.st.Stats() {
		if _, p, ok := splitEndpoint(ep); ok && isUpstream(ep) && (st.Len > 0 || p == 0) {
			prio[ep] = p
		}
	}
	out := make([]string, 0, len(prio))
	for ep := range prio {
		out = append(out, ep)
	}
	slices.SortFunc(out, func(a, b string) int {
		if prio[a] != prio[b] {
			return prio[a] - prio[b]
		}
		return strings.Compare(a, b)
	})
	return out
}

// upstreamStats sums the upstream endpoints' queues, for status logs.
func (e *Edge) upstreamStats() store.EndpointStats {
	var sum store.EndpointStats
	for ep, st := range e.st.Stats() {
		if !isUpstream(ep) {
			continue
		}
		sum.Len += st.Len
		sum.Bytes += st.Bytes
		if !st.Oldest.IsZero() && (sum.Oldest.IsZero() || st.Oldest.Before(sum.Oldest)) {
			sum.Oldest = st.Oldest
		}
	}
	return sum
}

// parseRoutes parses the "routes" object of the $edgeHub desired
// properties; absent or null means the default route. Errors name the
// route at fault.
func parseRoutes(raw json.RawMessage) (route.Table, error) {
	var routes map[string]any
	if t := bytes.TrimSpace(raw); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		m, err := twin.DecodeObject(t)
		if err != nil {
			return route.Table{}, fmt.Errorf("routes: not a JSON object: %w", err)
		}
		routes = m
	}
	return route.ParseRoutes(routes)
}

// consumer is the local client an endpoint delivers to.
type consumer struct {
	deviceID string
	moduleID string
	input    string // set for a module input
}

func (c consumer) clientID() string { return message.ClientID(c.deviceID, c.moduleID) }

// consumerOf reads a local store endpoint name (route.Sink.String, with
// or without a priority suffix); module inputs belong to modules of this
// edge. ok is false for $upstream and names that are not endpoints.
func (e *Edge) consumerOf(ep string) (consumer, bool) {
	s, _, ok := splitEndpoint(ep)
	if !ok {
		return consumer{}, false
	}
	switch s.Kind {
	case route.ModuleInput:
		return consumer{deviceID: e.cfg.DeviceID, moduleID: s.Module, input: s.Input}, true
	case route.DeviceBound:
		return consumer{deviceID: s.Device}, true
	}
	return consumer{}, false
}
