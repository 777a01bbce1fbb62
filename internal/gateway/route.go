package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/status"
	"outpost/internal/topic"
)

type reqKind int

const (
	reqTelemetry reqKind = iota + 1
	reqTwinGet
	reqTwinReported
	reqMethodResponse
	reqExtension
)

// request is a classified, authorised publish.
type request struct {
	kind               reqKind
	deviceID, moduleID string // the identity acted for (own, or in an edge's scope)
	obo                bool   // $iothub/{clientId}/… form: answer in kind
	rid                string
	status             int
	name               string // extension name
	bag                map[string]string
}

var (
	errNotInScope = errors.New("identity not in this edge's scope")
	// errScopeUnavailable is a scope check the backend could not answer:
	// unlike errNotInScope, a retry may succeed.
	errScopeUnavailable = errors.New("scope check")
)

// classify parses a publish topic and checks the client may publish it:
// its own topics, or those of identities in its scope if it is an edge.
func (c *conn) classify(name string) (request, error) {
	a := c.auth.Load()
	if ext, rid, ok, err := edgeproto.ParseRequest(name); ok {
		if err != nil {
			return request{}, err
		}
		return request{kind: reqExtension, deviceID: a.id.DeviceID, moduleID: a.id.ModuleID, name: ext, rid: rid}, nil
	}
	tp, err := topic.Parse(name)
	if err != nil {
		return request{}, err
	}
	r := request{deviceID: tp.DeviceID, moduleID: tp.ModuleID, obo: tp.OnBehalfOf != "", rid: tp.RID, status: tp.Status, bag: tp.Bag}
	switch tp.Kind {
	case topic.KindTelemetry:
		r.kind = reqTelemetry
	case topic.KindTwinGet:
		r.kind = reqTwinGet
	case topic.KindTwinReported:
		r.kind = reqTwinReported
	case topic.KindMethodResponse:
		r.kind = reqMethodResponse
	default:
		return request{}, fmt.Errorf("clients may not publish %s topics", tp.Kind)
	}
	if r.deviceID == "" { // device-facing twin and method forms: the client itself
		r.deviceID, r.moduleID = a.id.DeviceID, a.id.ModuleID
	}
	ok, err := c.inScope(r.deviceID, r.moduleID)
	if err != nil {
		return request{}, err
	}
	if !ok {
		return request{}, fmt.Errorf("%s: %w", message.ClientID(r.deviceID, r.moduleID), errNotInScope)
	}
	return r, nil
}

// checkFilter checks a subscription filter and returns the client id it
// names when that is not the client itself (an edge's on-behalf-of
// filter), "" otherwise.
func (c *conn) checkFilter(filter string) (string, error) {
	a := c.auth.Load()
	if a == nil {
		return "", ErrNotConnected
	}
	if filter == edgeproto.ResFilter {
		return "", nil
	}
	if topic.AllowedSubscription(filter, a.id.DeviceID, a.id.ModuleID) {
		return "", nil
	}
	if !a.id.Edge {
		return "", fmt.Errorf("filter %q is not one of this client's", truncate(filter))
	}
	tp, err := topic.ParseFilter(filter)
	if err != nil {
		return "", err
	}
	// An edge may receive C2D, twin and method traffic for its scope.
	if tp.OnBehalfOf == "" && tp.Kind != topic.KindC2D {
		return "", fmt.Errorf("filter %q is not one of this client's", truncate(filter))
	}
	ok, err := c.inScope(tp.DeviceID, tp.ModuleID)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("%s: %w", tp.ClientID(), errNotInScope)
	}
	return tp.ClientID(), nil
}

func (c *conn) allowSubscribe(filter string) (bool, error) {
	_, err := c.checkFilter(filter)
	return err == nil, err
}

// toMessage copies a telemetry bag into msg (system keys decoded, the
// client's connection ids dropped).
func toMessage(bag map[string]string, msg *message.Message) { topic.ToMessage(bag, msg) }

// serveRequest answers a twin or extension request on the request
// goroutine, which keeps one connection's requests in order (a reported
// patch is applied before a later GET is answered).
func (c *conn) serveRequest(ctx context.Context, r request, payload []byte) {
	id := c.target(r)
	cid := id.ClientID()
	twinRes := func(status int, version int64) string {
		if r.obo {
			return topic.OBOTwinResponse(cid, status, r.rid, version)
		}
		return topic.TwinResponse(status, r.rid, version)
	}
	b := c.s.cfg.Backend
	switch r.kind {
	case reqTwinGet:
		body, err := b.TwinGet(ctx, id)
		if err != nil {
			se := c.requestFailed("twin get", cid, err)
			c.reply(twinRes(se.Status, 0), se.MQTTBody())
			return
		}
		c.reply(twinRes(http.StatusOK, 0), body)
	case reqTwinReported:
		if !json.Valid(payload) {
			se := status.BadRequest(status.CodeArgumentInvalid, "reported patch is not JSON")
			c.reply(twinRes(se.Status, 0), se.MQTTBody())
			return
		}
		v, err := b.TwinReported(ctx, id, payload)
		if err != nil {
			se := c.requestFailed("twin reported", cid, err)
			c.reply(twinRes(se.Status, 0), se.MQTTBody())
			return
		}
		// The SDK wants an empty body here; the version is in the topic.
		c.reply(twinRes(http.StatusNoContent, v), nil)
	case reqExtension:
		res := func(status int) string { return edgeproto.ResponseTopic(status, r.rid) }
		ext, ok := b.(Extender)
		if !ok {
			se := status.NotFound(status.CodeNotFound, "no extensions served here")
			c.reply(res(se.Status), se.MQTTBody())
			return
		}
		reply, err := ext.Extension(ctx, c.auth.Load().self, r.name, payload)
		if err != nil {
			se := c.requestFailed("extension "+r.name, cid, err)
			c.reply(res(se.Status), se.MQTTBody())
			return
		}
		c.reply(res(http.StatusOK), reply)
	}
}

func (c *conn) requestFailed(what, cid string, err error) *status.Error {
	se := status.From(err)
	c.log.Warn(what+" failed", "identity", cid, "status", se.Status, "error", err)
	return se
}

// reply publishes a response at QoS 0. A client that did not subscribe
// for responses gets none, as with IoT Hub.
func (c *conn) reply(topicName string, body []byte) {
	if _, err := c.send(topicName, body, 0); err != nil && !errors.Is(err, ErrNotConnected) {
		c.log.Debug("response not delivered", "topic", topicName, "error", err)
	}
}
