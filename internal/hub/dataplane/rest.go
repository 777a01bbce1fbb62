package dataplane

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/hub/api"
	"outpost/internal/message"
	"outpost/internal/status"
)

// RegisterREST adds the data plane's service routes to mux, next to the
// service API (internal/hub/api) on the hub's HTTPS listener. All take a
// service SAS token of one of Config.Policies.
//
//	POST /twins/{id}/methods                     direct method (IoT Hub's REST call)
//	POST /twins/{id}/modules/{mid}/methods       direct method on a module
//	POST /devices/{id}/messages/deviceBound      queue a C2D message (Outpost's; IoT Hub sends C2D over AMQP only)
//	GET  /outpost/events?deviceId=&fromStart=&consumerGroup=
//	                                             telemetry as NDJSON, streamed
//
// The C2D body is the message; headers iothub-app-{name} are application
// properties, and iothub-messageid, iothub-correlationid, iothub-userid,
// iothub-contenttype, iothub-contentencoding and iothub-expiry (RFC 3339)
// system properties. The answer is 204 with the message id in
// iothub-messageid.
func (p *Plane) RegisterREST(mux *http.ServeMux) {
	mux.HandleFunc("POST /twins/{id}/methods", p.authed(p.restMethod))
	mux.HandleFunc("POST /twins/{id}/modules/{mid}/methods", p.authed(p.restMethod))
	mux.HandleFunc("POST /devices/{id}/messages/deviceBound", p.authed(p.restC2D))
	mux.HandleFunc("POST /devices/{id}/messages/devicebound", p.authed(p.restC2D))
	mux.HandleFunc("GET /outpost/events", p.authed(p.restEvents))
	mux.HandleFunc("POST /outpost/edges/{id}/ca", p.authed(p.restSignEdgeCA))
}

// authed checks the service SAS token exactly as the service API does.
func (p *Plane) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := api.CheckServiceToken(r, p.h.HostName(), p.cfg.Policies, p.cfg.ClockSkew, p.now()); err != nil {
			status.WriteHTTP(w, status.Unauthorized("%v", err), p.now())
			return
		}
		next(w, r)
	}
}

func (p *Plane) fail(w http.ResponseWriter, r *http.Request, err error) {
	if _, known := status.As(err); !known {
		p.log.Error("data plane request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	status.WriteHTTP(w, err, p.now())
}

// maxRequest bounds request bodies: a method payload is at most 128 KiB,
// a C2D message 64 KiB; the rest is slack for JSON escaping.
const maxRequest = 1 << 20

func (p *Plane) restMethod(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequest))
	if err != nil {
		p.fail(w, r, badArgument("read request: %v", err))
		return
	}
	var req gateway.MethodCall
	if err := json.Unmarshal(body, &req); err != nil {
		p.fail(w, r, badArgument("request body is not a method request: %v", err))
		return
	}
	res, err := p.InvokeMethod(r.Context(), r.PathValue("id"), r.PathValue("mid"), req)
	if err != nil {
		p.fail(w, r, err)
		return
	}
	b, _ := json.Marshal(res)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(b)
}

// c2dHeaders maps request headers (lower case) to system properties.
var c2dHeaders = map[string]string{
	"iothub-messageid":       message.KeyMessageID,
	"iothub-correlationid":   message.KeyCorrelationID,
	"iothub-userid":          message.KeyUserID,
	"iothub-contenttype":     message.KeyContentType,
	"iothub-contentencoding": message.KeyContentEncoding,
	"iothub-expiry":          message.KeyExpiry,
}

const appHeaderPrefix = "iothub-app-"

func (p *Plane) restC2D(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxC2DSize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			p.fail(w, r, &status.Error{Status: http.StatusRequestEntityTooLarge, Code: status.CodeMessageTooLarge, Message: "c2d message exceeds 64 KiB"})
			return
		}
		p.fail(w, r, badArgument("read request: %v", err))
		return
	}
	msg := &message.Message{Body: body}
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		switch {
		case strings.HasPrefix(lk, appHeaderPrefix) && len(lk) > len(appHeaderPrefix):
			if msg.Properties == nil {
				msg.Properties = map[string]string{}
			}
			msg.Properties[lk[len(appHeaderPrefix):]] = vs[0]
		case c2dHeaders[lk] != "":
			msg.SystemSet(c2dHeaders[lk], vs[0])
		}
	}
	if err := p.SendC2D(r.Context(), r.PathValue("id"), msg); err != nil {
		p.fail(w, r, err)
		return
	}
	w.Header().Set("iothub-messageid", msg.System.MessageID)
	w.WriteHeader(http.StatusNoContent)
}

// restEvents streams telemetry as NDJSON, one Event a line, until the
// client goes away. The 200 and its headers are sent once the reader is in
// place, so a client that saw them sees every message stored after.
func (p *Plane) restEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts := EventsOptions{DeviceID: q.Get("deviceId"), ConsumerGroup: q.Get("consumerGroup")}
	if s := q.Get("fromStart"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			p.fail(w, r, badArgument("fromStart %q is not a boolean", s))
			return
		}
		opts.FromStart = b
	}
	rc := http.NewResponseController(w)
	started := false
	ready := func() {
		started = true
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
	}
	enc := json.NewEncoder(w)
	err := p.Events(r.Context(), opts, ready, func(ev Event) error {
		// A reader slower than the writes must not stall them: the
		// stream holds the backlog, not this connection.
		_ = rc.SetWriteDeadline(time.Now().Add(time.Minute))
		if err := enc.Encode(ev); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && r.Context().Err() == nil {
		if !started {
			p.fail(w, r, err)
			return
		}
		p.log.Info("events stream ended", "err", err)
	}
}
