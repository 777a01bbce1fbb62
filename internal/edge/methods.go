package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"outpost/internal/edgeproto"
	"outpost/internal/gateway"
	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/status"
)

// Local direct methods: a module (or child) calls a method on a child
// device or on a module of this edge, online or offline. Two doors lead
// here:
//
//   - HTTPS, as IoT Edge serves ModuleClient.invokeMethod:
//     POST /twins/{d}[/modules/{m}]/methods on the edge's HTTPS listener,
//     with the caller in x-ms-edge-moduleId ({d}/{m}) and its SAS token in
//     Authorization;
//   - MQTT, for Outpost's Go client: the extension request
//     $outpost/req/invoke/?$rid= with an InvokeRequest body, answered on
//     $outpost/res/{status}/?$rid=.
//
// Both answer {status, payload}, and fail as IoT Hub does: 404
// DeviceNotOnline when the target is not connected (and subscribed to
// methods) within connectTimeoutInSeconds, 504 GatewayTimeout when it
// does not answer within responseTimeoutInSeconds, 404
// DeviceNotFound/ModuleNotFound for a target outside the edge's scope.

const (
	// maxMethodBody bounds an HTTPS method request (IoT Hub allows a
	// 128 KiB payload; the envelope adds a little).
	maxMethodBody = 256 << 10
	// methodSubscribeRetry is how soon a call is retried while the
	// target is connected but has not subscribed to methods yet.
	methodSubscribeRetry = 100 * time.Millisecond
)

// InvokeRequest is a local method call: the body of the $outpost/req/invoke
// extension, and (without DeviceID and ModuleID, which the path carries)
// of POST /twins/{d}[/modules/{m}]/methods.
type InvokeRequest struct {
	DeviceID string `json:"deviceId,omitempty"`
	ModuleID string `json:"moduleId,omitempty"`
	gateway.MethodCall
}

func badArgument(format string, args ...any) *status.Error {
	return status.BadRequest(status.CodeArgumentInvalid, format, args...)
}

// errUnauthorized refuses a caller of the edge's own HTTPS endpoints
// (/status, /metrics) that is neither local nor the edge device.
var errUnauthorized = status.Unauthorized("Unauthorized")

// Invoke calls a direct method on a child device or module connected to
// this edge on behalf of caller. Errors are *status.Error (see
// above), or ctx's error when the caller went away.
func (e *Edge) Invoke(ctx context.Context, caller gateway.Identity, req InvokeRequest) (gateway.MethodResult, error) {
	payload, respT, connT, err := req.Check()
	if err != nil {
		return gateway.MethodResult{}, err
	}
	if req.DeviceID == "" {
		return gateway.MethodResult{}, badArgument("no target deviceId")
	}
	cid := message.ClientID(req.DeviceID, req.ModuleID)
	if err := e.inScope(req.DeviceID, req.ModuleID); err != nil {
		return gateway.MethodResult{}, err
	}
	connectBy := e.now().Add(connT)
	for {
		s, wake := e.sessionOrWake(cid)
		if s != nil {
			rctx, cancel := context.WithTimeout(ctx, respT)
			code, resp, err := s.InvokeMethod(rctx, req.MethodName, payload)
			timedOut := rctx.Err() != nil
			cancel()
			switch {
			case err == nil:
				return gateway.MethodResult{Status: code, Payload: gateway.ResultPayload(resp)}, nil
			case errors.Is(err, gateway.ErrNotSubscribed), errors.Is(err, gateway.ErrNotConnected):
				// Between CONNACK and its SUBSCRIBE, or just gone: the
				// request was not sent; wait within the connect timeout.
			case errors.Is(err, gateway.ErrConnectionLost):
				// Sent, then the target dropped: it may have run the
				// method, which must run at most once.
				return gateway.MethodResult{}, &status.Error{Status: http.StatusNotFound, Code: status.CodeDeviceNotOnline,
					Message: fmt.Sprintf("%s disconnected before answering method %s", cid, req.MethodName)}
			case timedOut && errors.Is(ctx.Err(), context.Canceled):
				return gateway.MethodResult{}, ctx.Err()
			case timedOut:
				return gateway.MethodResult{}, &status.Error{Status: http.StatusGatewayTimeout, Code: status.CodeGatewayTimeout,
					Message: fmt.Sprintf("%s did not answer method %s within %v", cid, req.MethodName, respT)}
			default:
				return gateway.MethodResult{}, fmt.Errorf("method %s on %s: %w", req.MethodName, cid, err)
			}
		}
		left := connectBy.Sub(e.now())
		if left <= 0 {
			e.log.Debug("local method: target not online", "caller", caller.ClientID(), "target", cid, "method", req.MethodName)
			return gateway.MethodResult{}, &status.Error{Status: http.StatusNotFound, Code: status.CodeDeviceNotOnline,
				Message: fmt.Sprintf("%s is not connected to edge %s, or not subscribed to methods", cid, e.cfg.DeviceID)}
		}
		if s != nil {
			left = min(left, methodSubscribeRetry)
		}
		t := time.NewTimer(left)
		select {
		case <-wake:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return gateway.MethodResult{}, ctx.Err()
		}
		t.Stop()
	}
}

// inScope checks that an identity may be reached locally: a child of this
// edge, or a module of the edge or of a child, enabled.
func (e *Edge) inScope(deviceID, moduleID string) error {
	c := e.ids.current()
	if c == nil {
		return &status.Error{Status: http.StatusServiceUnavailable, Code: status.CodeServerError, Message: "edge has no identity cache yet"}
	}
	if _, err := c.lookup(deviceID, moduleID); err != nil {
		code := status.CodeDeviceNotFound
		if moduleID != "" {
			code = status.CodeModuleNotFound
		}
		return &status.Error{Status: http.StatusNotFound, Code: code,
			Message: fmt.Sprintf("%s is not in the scope of edge %s (only its child devices and the modules of it and its children are reachable locally), or is disabled",
				message.ClientID(deviceID, moduleID), e.cfg.DeviceID)}
	}
	return nil
}

// sessionOrWake returns the live session of cid and a channel closed at
// the next client connection, to wait on when it is not there (yet).
func (e *Edge) sessionOrWake(cid string) (gateway.Session, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.connWake == nil {
		e.connWake = make(chan struct{})
	}
	return e.sessions[cid], e.connWake
}

// wakeConnWaitersLocked tells waiting method calls a client connected.
func (e *Edge) wakeConnWaitersLocked() {
	if e.connWake != nil {
		close(e.connWake)
		e.connWake = nil
	}
}

// Extension serves the edge's $outpost requests from local clients.
func (b backend) Extension(ctx context.Context, s gateway.Session, name string, payload []byte) ([]byte, error) {
	id := s.Identity()
	switch name {
	case edgeproto.ReqInvoke:
		var req InvokeRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			return nil, badArgument("invoke request: %v", err)
		}
		res, err := b.e.Invoke(ctx, id, req)
		if err != nil {
			return nil, err
		}
		return json.Marshal(res)
	}
	return nil, &status.Error{Status: http.StatusNotFound, Code: status.CodeNotFound, Message: fmt.Sprintf("no extension %q at the edge", name)}
}

var _ gateway.Extender = backend{}

// serveInvoke answers POST /twins/{d}[/modules/{m}]/methods, as IoT
// Edge's hub does for ModuleClient.invokeMethod.
func (e *Edge) serveInvoke(w http.ResponseWriter, r *http.Request) {
	caller, ok := e.httpCaller(r)
	if !ok {
		status.WriteHTTP(w, status.Unauthorized("Unauthorized: send x-ms-edge-moduleId: {deviceId}/{moduleId} and that module's SAS token in Authorization"), e.now())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMethodBody))
	if err != nil {
		status.WriteHTTP(w, badArgument("reading body: %v", err), e.now())
		return
	}
	var req InvokeRequest
	if err := json.Unmarshal(body, &req); err != nil {
		status.WriteHTTP(w, badArgument("method request: %v", err), e.now())
		return
	}
	req.DeviceID, req.ModuleID = r.PathValue("d"), r.PathValue("m")
	res, err := e.Invoke(r.Context(), caller, req)
	if err != nil {
		if _, known := status.As(err); !known {
			if r.Context().Err() != nil {
				return // the caller went away
			}
			e.log.Warn("local method failed", "caller", caller.ClientID(), "error", err)
		}
		status.WriteHTTP(w, err, e.now())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(res)
}

// httpCaller authenticates the module (or child) named by
// x-ms-edge-moduleId from the identity cache, by SAS token or client
// certificate.
func (e *Edge) httpCaller(r *http.Request) (gateway.Identity, bool) {
	cid := r.Header.Get("x-ms-edge-moduleId")
	d, m, _ := strings.Cut(cid, "/")
	if d == "" || strings.Contains(m, "/") {
		return gateway.Identity{}, false
	}
	cr := gateway.Credentials{ClientID: cid, DeviceID: d, ModuleID: m, Transport: "https"}
	if r.TLS != nil {
		cr.PeerCerts = r.TLS.PeerCertificates
	}
	if h := r.Header.Get("Authorization"); h != "" {
		tok, err := sas.ParseToken(h)
		if err != nil {
			e.log.Warn("local method: bad token", "caller", cid, "error", err)
			return gateway.Identity{}, false
		}
		cr.Token, cr.Password = tok, h
	}
	if cr.Token == nil && len(cr.PeerCerts) == 0 {
		return gateway.Identity{}, false
	}
	id, err := e.authenticate(r.Context(), cr)
	if err != nil {
		e.log.Warn("local method: authentication failed", "caller", cid, "error", err)
		return gateway.Identity{}, false
	}
	return id, true
}
