package edge

import (
	"bytes"
	"encoding/json"
	"fmt"

	"outpost/internal/message"
	"outpost/internal/route"
)

// UpstreamEndpoint is the store endpoint the link drains to the hub.
const UpstreamEndpoint = "$upstream"

// parseRoutes parses the "routes" object of the $edgeHub desired
// properties; absent or null means the default route. Errors name the
// route at fault.
func parseRoutes(raw json.RawMessage) (route.Table, error) {
	var routes map[string]any
	if t := bytes.TrimSpace(raw); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		m, err := decodeObject(t)
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

// consumerOf reads a local endpoint name (route.Sink.String); module
// inputs belong to modules of this edge. ok is false for $upstream and
// names that are not endpoints.
func (e *Edge) consumerOf(ep string) (consumer, bool) {
	s, ok := route.ParseSink(ep)
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
