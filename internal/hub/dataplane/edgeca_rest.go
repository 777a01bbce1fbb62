package dataplane

import (
	"encoding/json"
	"io"
	"net/http"
)

// restSignEdgeCA serves POST /outpost/edges/{id}/ca, body {"csr": PEM}:
// the service side of `outpost certs create-edge-ca`, for operators who
// set an edge's CA up by hand. The answer is the same edgeproto.SignedCA an edge
// gets over its link at first sync.
func (p *Plane) restSignEdgeCA(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequest))
	if err != nil {
		p.fail(w, r, badArgument("read request: %v", err))
		return
	}
	var req struct {
		CSR string `json:"csr"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.CSR == "" {
		p.fail(w, r, badArgument(`request body must be {"csr": "<PEM certificate request>"}`))
		return
	}
	id := r.PathValue("id")
	d, err := p.h.GetDevice(id)
	if err != nil {
		p.fail(w, r, err)
		return
	}
	if !d.Capabilities.IoTEdge {
		p.fail(w, r, badArgument("device %q is not an IoT Edge device: only edge devices get an edge CA", id))
		return
	}
	reply, err := p.signEdgeCA(r.Context(), id, []byte(req.CSR))
	if err != nil {
		p.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(reply)
}
