package edge

import (
	"encoding/json"
	"net"
	"net/http"
	"sort"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/sas"
	"outpost/internal/status"
)

// Status is what GET /status answers.
type Status struct {
	DeviceID         string                 `json:"deviceId"`
	Synced           bool                   `json:"synced"`
	Link             LinkStatus             `json:"link"`
	Queues           map[string]QueueStatus `json:"queues"`
	LastSync         *time.Time             `json:"lastSync"`
	ConnectedClients []string               `json:"connectedClients"`
	TTLSeconds       int64                  `json:"ttlSeconds"`
	Routes           map[string]string      `json:"routes"`
	// Expired counts messages dropped at TTL since start; NoRoute those
	// no route took; QuotaRefusals the telemetry batches refused because
	// the store was full; DiskFullRefusals those refused because the
	// storage folder's disk was.
	Expired          uint64       `json:"expired"`
	NoRoute          uint64       `json:"noRoute"`
	QuotaRefusals    uint64       `json:"quotaRefusals"`
	DiskFullRefusals uint64       `json:"diskFullRefusals"`
	Storage          StorageUsage `json:"storage"`
	// SetAside counts the drained messages the hub refused for good,
	// by reason, which the drain set aside to go on with the rest.
	SetAside SetAsideStatus `json:"setAside"`
	// Certificates: when the edge CA and the served server certificate
	// expire; the edge renews the latter itself.
	Certificates CertStatus `json:"certificates"`
}

// LinkStatus is the upstream link's state.
type LinkStatus struct {
	Connected      bool       `json:"connected"`
	Since          *time.Time `json:"since"`
	LastError      string     `json:"lastError,omitempty"`
	OfflinePeriods int        `json:"offlinePeriods"`
}

// QueueStatus describes one store endpoint.
type QueueStatus struct {
	Length           int64   `json:"length"`
	Bytes            int64   `json:"bytes"`
	OldestAgeSeconds float64 `json:"oldestAgeSeconds"`
	Priority         int     `json:"priority"`
	TTLSeconds       int64   `json:"ttlSeconds"`
}

// StorageUsage is the store's size against its quota.
type StorageUsage struct {
	Bytes    int64 `json:"bytes"`
	MaxBytes int64 `json:"maxBytes,omitempty"`
	// Reopens counts the times the store reopened its database after a
	// write failed (a full disk) since start.
	Reopens uint64 `json:"reopens"`
}

// Status reports the edge's state.
func (e *Edge) Status() Status {
	now := e.now()
	ls := e.up.State()
	st := Status{
		DeviceID: e.cfg.DeviceID,
		Synced:   e.synced(),
		Link: LinkStatus{
			Connected:      ls.Connected,
			LastError:      ls.LastError,
			OfflinePeriods: ls.OfflinePeriods,
		},
		Queues:           map[string]QueueStatus{},
		TTLSeconds:       int64(e.st.TTL() / time.Second),
		Routes:           map[string]string{},
		NoRoute:          e.noRoute.Load(),
		QuotaRefusals:    e.quotaRefusals.Load(),
		DiskFullRefusals: e.diskFullRefusals.Load(),
		SetAside:         e.setAside.status(),
		Certificates:     e.certStatus(),
	}
	if !ls.Since.IsZero() {
		t := ls.Since
		st.Link.Since = &t
	}
	for name, s := range e.st.Stats() {
		q := QueueStatus{Length: s.Len, Bytes: s.Bytes, Priority: s.Priority, TTLSeconds: int64(s.TTL / time.Second)}
		if !s.Oldest.IsZero() {
			q.OldestAgeSeconds = max(now.Sub(s.Oldest).Seconds(), 0)
		}
		st.Queues[name] = q
		st.Expired += s.Expired
	}
	u := e.st.Usage()
	st.Storage = StorageUsage{Bytes: u.Bytes, MaxBytes: u.MaxBytes, Reopens: u.Reopens}
	for _, r := range e.routeTable().Routes {
		st.Routes[r.Name] = r.Text
	}
	if t := e.ids.lastSynced(); !t.IsZero() {
		st.LastSync = &t
	}
	e.mu.Lock()
	st.ConnectedClients = make([]string, 0, len(e.sessions))
	for cid := range e.sessions {
		st.ConnectedClients = append(st.ConnectedClients, cid)
	}
	e.mu.Unlock()
	sort.Strings(st.ConnectedClients)
	return st
}

// serveStatus answers GET /status. Callers on the loopback interface
// need no credentials; others must present a SAS token of the edge
// device itself (the one its connection string signs), since queue
// names reveal module and device ids.
func (e *Edge) serveStatus(w http.ResponseWriter, r *http.Request) {
	if !e.statusAllowed(r) {
		status.WriteHTTP(w, errUnauthorized, e.now())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(e.Status())
}

func (e *Edge) statusAllowed(r *http.Request) bool {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return true
		}
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return false
	}
	tok, err := sas.ParseToken(h)
	if err != nil {
		return false
	}
	return gateway.VerifySAS(tok, []string{e.cfg.Key}, e.cfg.HubHostName, e.cfg.DeviceID, "", e.now(), gateway.DefaultClockSkew) == nil
}

// logStatus logs the link state and the upstream backlog; the operator's
// first question when a site is offline is "how far behind are we?".
func (e *Edge) logStatus(why string) {
	now := e.now()
	ls := e.up.State()
	up := e.upstreamStats()
	var oldest time.Duration
	if !up.Oldest.IsZero() {
		oldest = now.Sub(up.Oldest).Truncate(time.Second)
	}
	attrs := []any{
		"why", why,
		"linkConnected", ls.Connected,
		"upstreamQueue", up.Len,
		"oldestAge", oldest.String(),
		"offlinePeriods", ls.OfflinePeriods,
	}
	if !ls.Since.IsZero() {
		attrs = append(attrs, "since", ls.Since.UTC().Format(time.RFC3339))
	}
	if ls.LastError != "" {
		attrs = append(attrs, "lastError", ls.LastError)
	}
	e.log.Info("edge status", attrs...)
}
