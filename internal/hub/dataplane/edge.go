package dataplane

import (
	"context"
	"encoding/json"
	"net/http"

	"outpost/internal/edgeproto"
	"outpost/internal/gateway"
	"outpost/internal/identity"
	"outpost/internal/status"
	"outpost/internal/topic"
)

// Extension serves an edge's requests (edgeproto): identity sync, edge CA
// signing, presence reports and its store's position. Only an edge
// device, on its own connection, may ask.
func (p *Plane) Extension(ctx context.Context, s gateway.Session, name string, payload []byte) ([]byte, error) {
	id := s.Identity()
	if !id.Edge || id.ModuleID != "" || id.Via != "" {
		return nil, &status.Error{Status: http.StatusForbidden, Code: status.CodeUnauthorized,
			Message: "only an IoT Edge device may call " + name}
	}
	switch name {
	case edgeproto.ReqSyncIdentities:
		s, err := p.Snapshot(id.DeviceID)
		if err != nil {
			return nil, err
		}
		return json.Marshal(s)
	case edgeproto.ReqSignEdgeCA:
		return p.signEdgeCA(ctx, id.DeviceID, payload)
	case edgeproto.ReqPresence:
		return p.presenceReport(ctx, s, payload)
	case edgeproto.ReqStorePosition:
		return p.storePosition(ctx, id.DeviceID, payload)
	}
	return nil, &status.Error{Status: http.StatusNotFound, Code: status.CodeNotFound, Message: "no extension " + name}
}

// Snapshot returns the identities in an edge's scope: the edge, its
// children, and the modules of both; the reply to sync-identities.
func (p *Plane) Snapshot(edgeID string) (*identity.ScopeSnapshot, error) {
	edge, err := p.h.GetDevice(edgeID)
	if err != nil {
		return nil, err
	}
	children, err := p.h.ListChildren(edgeID)
	if err != nil {
		return nil, err
	}
	s := &identity.ScopeSnapshot{Edge: edge, Devices: []identity.Device{}, Modules: []identity.Module{}, HubHostName: p.h.HostName(), SyncedAt: p.now().UTC()}
	if p.cfg.CA != nil {
		s.RootCA = string(p.cfg.CA.CertPEM)
	}
	for _, d := range append([]identity.Device{edge}, children...) {
		if d.DeviceID != edgeID {
			s.Devices = append(s.Devices, d)
		}
		ms, err := p.h.ListModules(d.DeviceID)
		if err != nil {
			continue // deleted meanwhile
		}
		s.Modules = append(s.Modules, ms...)
	}
	return s, nil
}

// presenceReport checks an edge's presence report and queues it for the
// presence writer; it does not wait for the writes, so the edge's other
// requests (twins of its children) do not queue behind a large report.
//
// Connected ids must be in the edge's scope (InScope), and never the edge
// itself, whose own connection is recorded apart; others are refused and
// logged. Disconnected ids are not checked: they can only end a record
// that this very link wrote.
func (p *Plane) presenceReport(ctx context.Context, s gateway.Session, payload []byte) ([]byte, error) {
	var req edgeproto.PresenceReport
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, badArgument("presence report: %v", err)
	}
	id := s.Identity()
	r := &edgePresence{full: req.Full}
	var refused []string
	for _, cid := range req.Connected {
		d, m, err := topic.ParseClientID(cid)
		ok := err == nil && cid != id.DeviceID
		if ok {
			ok, _ = p.InScope(ctx, id, d, m) // reads memory only: never fails
		}
		if !ok {
			refused = append(refused, cid)
			continue
		}
		r.connected = append(r.connected, clientRef{d, m})
	}
	for _, cid := range req.Disconnected {
		if d, m, err := topic.ParseClientID(cid); err == nil {
			r.disconnected = append(r.disconnected, clientRef{d, m})
		}
	}
	if len(refused) > 0 {
		p.log.Warn("edge reported identities outside its scope as connected; ignored",
			"edge", id.DeviceID, "count", len(refused), "first", refused[0][:min(len(refused[0]), 260)])
	}
	// Checked and queued under mu: a report of a link that a takeover or
	// its end replaced is refused, and one queued before is written
	// before the end of its link's children (edgeGone, queued after).
	p.mu.Lock()
	l := p.live[id.ClientID()]
	if l == nil || l.s != s || l.presence == "" {
		p.mu.Unlock()
		return nil, &status.Error{Status: http.StatusConflict, Code: "Conflict", Message: "this connection of the edge has been replaced"}
	}
	p.pres.reported(id.DeviceID, l.presence, r)
	p.mu.Unlock()
	return json.Marshal(edgeproto.PresenceReply{Refused: refused})
}
