package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/status"
)

// batchContentType marks a batch of telemetry messages in one request.
const batchContentType = "application/vnd.microsoft.iothub.json"

// appHeaderPrefix prefixes application properties in HTTPS headers and in
// batch property maps.
const appHeaderPrefix = "iothub-app-"

// RegisterDeviceHTTP adds the device HTTPS API (PROTOCOL.md "Device
// HTTPS") and the MQTT WebSocket endpoint to mux. The patterns carry
// methods and literal segments, so the service API (PUT/GET/DELETE
// /devices/{id}, /devices/{d}/modules/{m}, POST /devices/query …) can
// share the mux. The HTTPS listener's TLS config should request client
// certificates (tls.RequestClientCert) for X.509 devices.
func (s *Server) RegisterDeviceHTTP(mux *http.ServeMux) {
	mux.Handle("GET "+WebSocketPath, s.WebSocketHandler())
	mux.HandleFunc("POST /devices/{d}/messages/events", s.httpTelemetry)
	mux.HandleFunc("POST /devices/{d}/modules/{m}/messages/events", s.httpTelemetry)
	mux.HandleFunc("GET /devices/{d}/messages/devicebound", s.httpC2DReceive)
	mux.HandleFunc("DELETE /devices/{d}/messages/devicebound/{lock}", s.httpC2DSettle)
	mux.HandleFunc("POST /devices/{d}/messages/devicebound/{lock}/abandon", s.httpC2DSettle)
}

// DeviceHTTPHandler serves the device HTTPS API and the MQTT WebSocket
// endpoint on a mux of its own; see RegisterDeviceHTTP to share one.
func (s *Server) DeviceHTTPHandler() http.Handler {
	mux := http.NewServeMux()
	s.RegisterDeviceHTTP(mux)
	return mux
}

// httpError answers err in IoT Hub's error shape and returns what it
// wrote.
func (s *Server) httpError(w http.ResponseWriter, err error) *status.Error {
	return status.WriteHTTP(w, err, s.cfg.Now())
}

var errUnauthorized = status.Unauthorized("Unauthorized")

// httpAuth authenticates a request for deviceID/moduleID by the SAS token
// in Authorization or, failing that, the TLS client certificate.
func (s *Server) httpAuth(r *http.Request, deviceID, moduleID string) (Identity, bool) {
	cid := message.ClientID(deviceID, moduleID)
	log := s.log.With("client", cid, "remote", r.RemoteAddr, "transport", "https")
	// Each id is checked on its own: an escaped '/' in the path's device
	// id ("d%2Fm") would otherwise pass as the client id of a module.
	if d, m, err := parseClientID(cid); err != nil || d != deviceID || m != moduleID {
		if err == nil {
			err = fmt.Errorf("device id %q holds a '/'", truncate(deviceID))
		}
		s.countAuthFailure(ReasonBadClientID)
		log.Warn("authentication failed", "reason", ReasonBadClientID, "error", err)
		return Identity{}, false
	}
	creds := Credentials{ClientID: cid, DeviceID: deviceID, ModuleID: moduleID, Transport: "https"}
	if r.TLS != nil {
		creds.PeerCerts = r.TLS.PeerCertificates
	}
	if h := r.Header.Get("Authorization"); h != "" {
		tok, err := sas.ParseToken(h)
		if err != nil {
			s.countAuthFailure(ReasonBadToken)
			log.Warn("authentication failed", "reason", ReasonBadToken, "error", err)
			return Identity{}, false
		}
		creds.Token, creds.Password = tok, h
	}
	id, err := s.authenticate(r.Context(), creds)
	if err != nil {
		var ae *AuthError
		errors.As(err, &ae)
		log.Warn("authentication failed", "reason", ae.Reason, "error", err)
		return Identity{}, false
	}
	return id, true
}

func (s *Server) httpTelemetry(w http.ResponseWriter, r *http.Request) {
	id, ok := s.httpAuth(r, r.PathValue("d"), r.PathValue("m"))
	if !ok {
		s.httpError(w, errUnauthorized)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxMessageSize)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.log.Warn("refusing message: too large", "client", id.ClientID(), "transport", "https", "limit", s.cfg.MaxMessageSize)
			if s.cfg.Observer != nil {
				s.cfg.Observer.ObserveRefused(RefusedTooLarge, 1)
			}
			s.httpError(w, ErrMessageTooLarge)
			return
		}
		s.httpError(w, status.BadRequest(status.CodeArgumentInvalid, "reading body: %v", err))
		return
	}
	var msgs []*message.Message
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.EqualFold(strings.TrimSpace(ct), batchContentType) {
		msgs, err = decodeBatch(body)
		if err != nil {
			s.httpError(w, status.BadRequest(status.CodeArgumentInvalid, "%v", err))
			return
		}
	} else {
		msg := &message.Message{Body: body}
		headersToMessage(r.Header, msg)
		msgs = []*message.Message{msg}
	}
	for _, m := range msgs {
		m.DeviceID, m.ModuleID = id.DeviceID, id.ModuleID
		m.System.ConnDeviceID, m.System.ConnModuleID = id.DeviceID, id.ModuleID
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.BackendTimeout)
	defer cancel()
	if err := s.cfg.Backend.Telemetry(ctx, id, msgs); err != nil {
		s.observeRefusal(err, len(msgs))
		se := s.httpError(w, err)
		s.log.Warn("telemetry refused", "client", id.ClientID(), "transport", "https", "status", se.Status, "error", err)
		return
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.ObserveAccepted(len(msgs))
	}
	w.WriteHeader(http.StatusNoContent)
}

// systemHeaders maps HTTPS headers (lower case) to system properties.
// iothub-to is left out: the SDK sets it to the request path.
var systemHeaders = map[string]string{
	"iothub-messageid":       message.KeyMessageID,
	"iothub-correlationid":   message.KeyCorrelationID,
	"iothub-userid":          message.KeyUserID,
	"iothub-expiry":          message.KeyExpiry,
	"iothub-contenttype":     message.KeyContentType,
	"iothub-contentencoding": message.KeyContentEncoding,
}

// headersToMessage reads properties from HTTPS headers. Header names are
// case-insensitive, so application property names arrive lower-cased.
func headersToMessage(h http.Header, msg *message.Message) {
	for k, vs := range h {
		if len(vs) == 0 {
			continue
		}
		setProperty(msg, strings.ToLower(k), vs[0])
	}
}

// setProperty sets one property named as in HTTPS: iothub-app-{k} is an
// application property, known iothub- names are system properties, and
// dt-subject (which the SDK sends unprefixed) is kept as it is.
func setProperty(msg *message.Message, k, v string) {
	lk := strings.ToLower(k)
	switch {
	case strings.HasPrefix(lk, appHeaderPrefix):
		if msg.Properties == nil {
			msg.Properties = map[string]string{}
		}
		msg.Properties[k[len(appHeaderPrefix):]] = v
	case systemHeaders[lk] != "":
		msg.SystemSet(systemHeaders[lk], v)
	case lk == "dt-subject":
		if msg.Properties == nil {
			msg.Properties = map[string]string{}
		}
		msg.Properties[lk] = v
	}
}

// decodeBatch reads [{"body":"<base64>","properties":{…}}, …].
func decodeBatch(b []byte) ([]*message.Message, error) {
	var items []struct {
		Body          string            `json:"body"`
		Base64Encoded *bool             `json:"base64Encoded"`
		Properties    map[string]string `json:"properties"`
	}
	if err := json.Unmarshal(b, &items); err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	if len(items) == 0 {
		return nil, errors.New("batch: no messages")
	}
	msgs := make([]*message.Message, 0, len(items))
	for i, it := range items {
		body := []byte(it.Body)
		if it.Base64Encoded == nil || *it.Base64Encoded {
			var err error
			if body, err = base64.StdEncoding.DecodeString(it.Body); err != nil {
				return nil, fmt.Errorf("batch message %d: body is not base64", i)
			}
		}
		m := &message.Message{Body: body}
		for k, v := range it.Properties {
			setProperty(m, k, v)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func (s *Server) httpC2DReceive(w http.ResponseWriter, r *http.Request) {
	id, ok := s.httpAuth(r, r.PathValue("d"), "")
	if !ok {
		s.httpError(w, errUnauthorized)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.BackendTimeout)
	defer cancel()
	msg, lock, err := s.cfg.Backend.C2DReceive(ctx, id)
	if err != nil {
		se := s.httpError(w, err)
		s.log.Warn("c2d receive failed", "client", id.ClientID(), "status", se.Status, "error", err)
		return
	}
	if msg == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	h := w.Header()
	h.Set("ETag", `"`+lock+`"`)
	for hdr, key := range systemHeaders {
		if v, ok := msg.SystemGet(key); ok {
			h.Set(hdr, v)
		}
	}
	if msg.System.To != "" {
		h.Set("iothub-to", msg.System.To)
	}
	if !msg.System.EnqueuedTime.IsZero() {
		h.Set("iothub-enqueuedtime", msg.System.EnqueuedTime.UTC().Format(time.RFC3339Nano))
	}
	for k, v := range msg.Properties {
		h.Set(appHeaderPrefix+k, v)
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(msg.Body)
}

func (s *Server) httpC2DSettle(w http.ResponseWriter, r *http.Request) {
	id, ok := s.httpAuth(r, r.PathValue("d"), "")
	if !ok {
		s.httpError(w, errUnauthorized)
		return
	}
	action := Complete
	switch {
	case r.Method == http.MethodPost:
		action = Abandon
	case r.URL.Query().Has("reject"):
		action = Reject
	}
	lock := strings.Trim(r.PathValue("lock"), `"`)
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.BackendTimeout)
	defer cancel()
	if err := s.cfg.Backend.C2DSettle(ctx, id, lock, action); err != nil {
		se := s.httpError(w, err)
		s.log.Warn("c2d "+action.String()+" failed", "client", id.ClientID(), "status", se.Status, "error", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
