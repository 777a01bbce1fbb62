// Package api serves the hub's service REST API, the one Azure IoT Hub's
// service SDKs and the az CLI speak: devices, modules, twins, queries and
// bulk registry operations, authenticated with service SAS tokens. It
// adds Outpost's child-device extensions:
//
//	GET    /devices/{id}/children          the children of edge device id
//	POST   /devices/{id}/children          {"children":["a","b"],"force":false}
//	DELETE /devices/{id}/children/{child}  detach one child
//
// and one rule of its own: PUT /devices/{id} that moves a child from one
// parent to another needs ?force=true (attaching a parentless device or
// detaching one does not), the same rule add-children applies.
//
// Every path accepts any api-version. Direct methods
// (POST /twins/{id}[/modules/{m}]/methods) and cloud-to-device messages
// belong to the data plane and are registered on the same mux by it.
package api

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"outpost/internal/hub"
	"outpost/internal/identity"
	"outpost/internal/status"
	"outpost/internal/twin"
)

// Config configures a Handler.
type Config struct {
	// HostName is the hub's host name; tokens must be scoped to it (a
	// :port on either side is ignored). Default: the hub's HostName.
	HostName string
	// Policies are the shared access policies whose tokens are accepted.
	Policies []Policy
	// ClockSkew is how far past its expiry a token is still accepted;
	// default 5 minutes.
	ClockSkew time.Duration
	Logger    *slog.Logger
	Now       func() time.Time
}

// Handler serves the service REST API.
type Handler struct {
	hub      *hub.Hub
	host     string
	policies []Policy
	skew     time.Duration
	log      *slog.Logger
	now      func() time.Time
	mux      *http.ServeMux
}

// maxBody bounds request bodies: a 100-device bulk request or a twin with
// full sections fits many times over.
const maxBody = 4 << 20

// Query page sizes, as IoT Hub applies them.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// NewHandler returns the service API of h.
func NewHandler(h *hub.Hub, cfg Config) *Handler {
	if cfg.HostName == "" {
		cfg.HostName = h.HostName()
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Handler{hub: h, host: cfg.HostName, policies: cfg.Policies, skew: cfg.ClockSkew, log: cfg.Logger, now: cfg.Now}
	a.mux = http.NewServeMux()
	a.Register(a.mux)
	return a
}

// ServeHTTP serves the API on its own mux.
func (a *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Register adds the API's routes to mux, so the device endpoint can share
// one HTTPS listener with it. It registers no catch-all.
func (a *Handler) Register(mux *http.ServeMux) {
	routes := []struct {
		pattern string
		h       http.HandlerFunc
	}{
		{"GET /devices", a.listDevices},
		// azure-iothub's Registry.list asks for the collection with a trailing slash.
		{"GET /devices/{$}", a.listDevices},
		{"POST /devices", a.bulk},
		{"POST /devices/query", a.query},
		{"PUT /devices/{id}", a.putDevice},
		{"GET /devices/{id}", a.getDevice},
		{"DELETE /devices/{id}", a.deleteDevice},
		{"GET /devices/{id}/modules", a.listModules},
		{"PUT /devices/{id}/modules/{mid}", a.putModule},
		{"GET /devices/{id}/modules/{mid}", a.getModule},
		{"DELETE /devices/{id}/modules/{mid}", a.deleteModule},
		{"GET /devices/{id}/children", a.listChildren},
		{"POST /devices/{id}/children", a.addChildren},
		{"DELETE /devices/{id}/children/{child}", a.removeChild},
		{"GET /twins/{id}", a.getTwin},
		{"PATCH /twins/{id}", a.patchTwin},
		{"PUT /twins/{id}", a.putTwin},
		{"GET /twins/{id}/modules/{mid}", a.getTwin},
		{"PATCH /twins/{id}/modules/{mid}", a.patchTwin},
		{"PUT /twins/{id}/modules/{mid}", a.putTwin},
	}
	for _, rt := range routes {
		mux.HandleFunc(rt.pattern, a.authed(rt.h))
	}
}

// fail answers err in Azure's error shape.
func (a *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if _, known := status.As(err); !known {
		a.log.Error("service api", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	status.WriteHTTP(w, err, a.now())
}

func badRequest(format string, args ...any) *status.Error {
	return status.BadRequest(status.CodeArgumentInvalid, format, args...)
}

// readJSON decodes the body into v, keeping numbers exact.
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	// The decoder would replace invalid UTF-8 without a word.
	if err := twin.CheckText("request body", body); err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body is not valid JSON: %v", err)
	}
	return nil
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, status.Errorf(http.StatusRequestEntityTooLarge, status.CodeMessageTooLarge, "request body exceeds %d bytes", maxBody)
		}
		return nil, badRequest("read request body: %v", err)
	}
	return body, nil
}

// writeEntity answers an entity with its etag in the ETag header, quoted.
func writeEntity(w http.ResponseWriter, etag string, v any) {
	if etag != "" {
		w.Header().Set("ETag", identity.QuoteETag(etag))
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *Handler) listDevices(w http.ResponseWriter, r *http.Request) {
	top := 0
	if s := r.URL.Query().Get("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			a.fail(w, r, badRequest("top %q is not a non-negative number", s))
			return
		}
		top = n
	}
	devs := a.hub.ListDevices(top)
	if devs == nil {
		devs = []identity.Device{}
	}
	writeJSON(w, http.StatusOK, devs)
}

func (a *Handler) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := a.hub.GetDevice(r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeEntity(w, d.ETag, d)
}

// truthy reads a boolean query parameter.
func truthy(r *http.Request, name string) bool {
	b, _ := strconv.ParseBool(r.URL.Query().Get(name))
	return b
}

func (a *Handler) putDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var d identity.Device
	if err := readJSON(w, r, &d); err != nil {
		a.fail(w, r, err)
		return
	}
	if d.DeviceID == "" {
		d.DeviceID = id
	}
	if d.DeviceID != id {
		a.fail(w, r, badRequest("device id %q in the body does not match %q in the path", d.DeviceID, id))
		return
	}
	out, err := a.hub.CreateOrUpdateDevice(r.Context(), d, r.Header.Get("If-Match"), truthy(r, "force"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeEntity(w, out.ETag, out)
}

func (a *Handler) deleteDevice(w http.ResponseWriter, r *http.Request) {
	if err := a.hub.DeleteDevice(r.Context(), r.PathValue("id"), r.Header.Get("If-Match")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Handler) listModules(w http.ResponseWriter, r *http.Request) {
	ms, err := a.hub.ListModules(r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ms)
}

func (a *Handler) getModule(w http.ResponseWriter, r *http.Request) {
	m, err := a.hub.GetModule(r.PathValue("id"), r.PathValue("mid"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeEntity(w, m.ETag, m)
}

func (a *Handler) putModule(w http.ResponseWriter, r *http.Request) {
	id, mid := r.PathValue("id"), r.PathValue("mid")
	var m identity.Module
	if err := readJSON(w, r, &m); err != nil {
		a.fail(w, r, err)
		return
	}
	if m.DeviceID == "" {
		m.DeviceID = id
	}
	if m.ModuleID == "" {
		m.ModuleID = mid
	}
	if m.DeviceID != id || m.ModuleID != mid {
		a.fail(w, r, badRequest("module %q of device %q in the body does not match %q of %q in the path", m.ModuleID, m.DeviceID, mid, id))
		return
	}
	out, err := a.hub.CreateOrUpdateModule(r.Context(), m, r.Header.Get("If-Match"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeEntity(w, out.ETag, out)
}

func (a *Handler) deleteModule(w http.ResponseWriter, r *http.Request) {
	if err := a.hub.DeleteModule(r.Context(), r.PathValue("id"), r.PathValue("mid"), r.Header.Get("If-Match")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Handler) listChildren(w http.ResponseWriter, r *http.Request) {
	cs, err := a.hub.ListChildren(r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, cs)
}

func (a *Handler) addChildren(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Children []string `json:"children"`
		Force    bool     `json:"force"`
	}
	if err := readJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.hub.AddChildren(r.Context(), r.PathValue("id"), req.Children, req.Force); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Handler) removeChild(w http.ResponseWriter, r *http.Request) {
	if err := a.hub.RemoveChildren(r.Context(), r.PathValue("id"), []string{r.PathValue("child")}); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Handler) getTwin(w http.ResponseWriter, r *http.Request) {
	t, err := a.hub.GetTwin(r.PathValue("id"), r.PathValue("mid"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeEntity(w, t.ETag, t)
}

func (a *Handler) patchTwin(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	p, err := hub.ParseTwinPatch(body)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	t, err := a.hub.PatchTwin(r.Context(), r.PathValue("id"), r.PathValue("mid"), p, r.Header.Get("If-Match"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeEntity(w, t.ETag, t)
}

func (a *Handler) putTwin(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	n, err := twin.Decode(body)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	t, err := a.hub.ReplaceTwin(r.Context(), r.PathValue("id"), r.PathValue("mid"), n, r.Header.Get("If-Match"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeEntity(w, t.ETag, t)
}

func (a *Handler) bulk(w http.ResponseWriter, r *http.Request) {
	var entries []hub.BulkEntry
	if err := readJSON(w, r, &entries); err != nil {
		a.fail(w, r, err)
		return
	}
	res, err := a.hub.Bulk(r.Context(), entries)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	code := http.StatusOK
	if !res.IsSuccessful {
		// IoT Hub answers a partly failed bulk request with 400 and the
		// same result body.
		code = http.StatusBadRequest
	}
	writeJSON(w, code, res)
}

func (a *Handler) query(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Query string `json:"query"`
	}
	if err := readJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if strings.TrimSpace(req.Query) == "" {
		a.fail(w, r, badRequest("query is empty"))
		return
	}
	size := defaultPageSize
	if s := r.Header.Get("x-ms-max-item-count"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			a.fail(w, r, badRequest("x-ms-max-item-count %q is not a positive number", s))
			return
		}
		size = min(n, maxPageSize)
	}
	page, err := a.hub.Query(req.Query, size, r.Header.Get("x-ms-continuation"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if page.Continuation != "" {
		w.Header().Set("x-ms-continuation", page.Continuation)
	}
	items := page.Items
	if items == nil {
		items = []map[string]any{}
	}
	writeJSON(w, http.StatusOK, items)
}
