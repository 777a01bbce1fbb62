package edge

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edge/store"
	"outpost/internal/gateway"
	"outpost/internal/identity"
	"outpost/internal/message"
)

// KV keys of the edge's own state in the store.
const (
	kvSynced     = "edge/synced"     // syncMarker, JSON
	kvIdentities = "edge/identities" // Snapshot, JSON, sealed
	kvEdgeCA     = "edge/ca"         // storedCA, JSON, sealed
	kvConfig     = "edge/config"     // storedConfig, JSON
	kvSetAside   = "edge/set-aside"  // setAsideRecord, JSON
	kvTwinPrefix = "twin/"           // + client id: cached twin body
	kvPendPrefix = "twin-pending/"   // + client id: reported patch held offline
)

// Refresh limits for identities that fail to authenticate: a client
// retrying with a bad key must not turn into a sync storm.
const (
	refreshPerIdentity = 10 * time.Second
	refreshOverall     = time.Second
	refreshTimeout     = 5 * time.Second
)

// syncMarker records the first successful sync. Its presence is what
// lets the edge start offline.
type syncMarker struct {
	EdgeID      string    `json:"edgeId"`
	HubHostName string    `json:"hubHostName"`
	SyncedAt    time.Time `json:"syncedAt"`
}

// idCache is an immutable view of a snapshot, replaced whole on sync.
type idCache struct {
	snap     *Snapshot
	devices  map[string]*identity.Device
	modules  map[string]*identity.Module // by client id
	rootPool *x509.CertPool              // hub root, for X.509 CA identities
}

func newIDCache(snap *Snapshot) (*idCache, error) {
	c := &idCache{
		snap:    snap,
		devices: make(map[string]*identity.Device, len(snap.Devices)+1),
		modules: make(map[string]*identity.Module, len(snap.Modules)),
	}
	edge := snap.Edge
	c.devices[edge.DeviceID] = &edge
	for i := range snap.Devices {
		d := &snap.Devices[i]
		if d.IsEdge() {
			continue // only non-edge devices can be children
		}
		c.devices[d.DeviceID] = d
	}
	for i := range snap.Modules {
		m := &snap.Modules[i]
		if c.devices[m.DeviceID] == nil {
			continue
		}
		c.modules[message.ClientID(m.DeviceID, m.ModuleID)] = m
	}
	// X.509 CA children are verified against the hub's root alone, never
	// this edge's own CA, which cannot sign client certificates anyway.
	if snap.RootCA != "" {
		pool, err := certs.Pool([]byte(snap.RootCA))
		if err != nil {
			return nil, fmt.Errorf("hub root CA: %w", err)
		}
		c.rootPool = pool
	}
	return c, nil
}

// lookup finds an identity that may connect to this edge: a child device
// or a module of the edge or of a child. The edge device itself may not
// connect to its own hub.
func (c *idCache) lookup(deviceID, moduleID string) (auth identity.Authentication, err error) {
	d := c.devices[deviceID]
	if d == nil || (moduleID == "" && deviceID == c.snap.Edge.DeviceID) {
		return auth, gateway.AuthFailed(gateway.ReasonNotFound, errors.New("not in the edge's identity cache"))
	}
	if !d.Enabled() {
		return auth, gateway.AuthFailed(gateway.ReasonDisabled, fmt.Errorf("device %s is disabled", deviceID))
	}
	if moduleID == "" {
		return d.Authentication, nil
	}
	m := c.modules[message.ClientID(deviceID, moduleID)]
	if m == nil {
		return auth, gateway.AuthFailed(gateway.ReasonNotFound, errors.New("module not in the edge's identity cache"))
	}
	return m.Authentication, nil
}

// verify authenticates credentials against the cache.
func (c *idCache) verify(cr gateway.Credentials, hubHost string, now time.Time) (gateway.Identity, error) {
	auth, err := c.lookup(cr.DeviceID, cr.ModuleID)
	if err != nil {
		return gateway.Identity{}, err
	}
	id := gateway.Identity{DeviceID: cr.DeviceID, ModuleID: cr.ModuleID}
	if cr.Token != nil {
		keys := identity.Keys(auth)
		if len(keys) == 0 {
			return id, gateway.AuthFailed(gateway.ReasonWrongMethod, fmt.Errorf("identity authenticates with %s, not a SAS token", auth.Type))
		}
		if err := gateway.VerifySAS(cr.Token, keys, hubHost, cr.DeviceID, cr.ModuleID, now, gateway.DefaultClockSkew); err != nil {
			return id, err
		}
		id.AuthMethod = gateway.AuthSAS
		id.TokenExpiry = cr.Token.Expiry
		return id, nil
	}
	var thumbs []string
	var pool *x509.CertPool
	switch auth.Type {
	case identity.AuthSelfSigned:
		thumbs = []string{auth.X509Thumbprint.PrimaryThumbprint, auth.X509Thumbprint.SecondaryThumbprint}
		id.AuthMethod = gateway.AuthX509Thumbprint
	case identity.AuthCA:
		pool = c.rootPool
		id.AuthMethod = gateway.AuthX509CA
		if pool == nil {
			return id, gateway.AuthFailed(gateway.ReasonBadCert, errors.New("no hub root CA in the identity cache"))
		}
	default:
		return id, gateway.AuthFailed(gateway.ReasonWrongMethod, fmt.Errorf("identity authenticates with %q, not a certificate", auth.Type))
	}
	if err := gateway.VerifyX509(cr.PeerCerts, thumbs, pool, cr.ClientID, now); err != nil {
		return id, err
	}
	return id, nil
}

// identities owns the identity cache: the snapshot in force, replaced
// whole on sync, its sealed copy in the store, when it was last synced,
// and the limits on syncs that failed authentications trigger.
//
// Lock order: syncMu, then mu.
type identities struct {
	st   *store.Store
	seal *sealer

	cur atomic.Pointer[idCache] // nil until loaded or synced

	syncMu sync.Mutex // serializes syncs; held across the fetch from the hub

	mu sync.Mutex
	// mu guards the following fields.
	lastSync     time.Time
	lastRefresh  time.Time
	refreshTried map[string]time.Time
}

// current is the identity cache in force, nil before the first sync.
func (ids *identities) current() *idCache { return ids.cur.Load() }

// lastSynced is when the identities were last synced; zero if never.
func (ids *identities) lastSynced() time.Time {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	return ids.lastSync
}

// load reads the sealed snapshot and puts it in force, synced at
// markerAt or at the snapshot's own time, whichever is later.
func (ids *identities) load(markerAt time.Time) error {
	v, err := ids.st.Get([]byte(kvIdentities))
	if err != nil {
		return err
	}
	plain, err := ids.seal.open(kvIdentities, v)
	if err != nil {
		return fmt.Errorf("identity cache: %w", err)
	}
	var snap Snapshot
	if err := json.Unmarshal(plain, &snap); err != nil {
		return fmt.Errorf("identity cache: %w", err)
	}
	c, err := newIDCache(&snap)
	if err != nil {
		return err
	}
	ids.cur.Store(c)
	ids.mu.Lock()
	ids.lastSync = markerAt
	if snap.SyncedAt.After(markerAt) {
		ids.lastSync = snap.SyncedAt
	}
	ids.mu.Unlock()
	return nil
}

// sync fetches a snapshot, persists it sealed and puts it in force.
// Syncs are serialized; applied runs inside, so that the
// consequences of two syncs (dropped connections) keep their order.
func (ids *identities) sync(ctx context.Context, now func() time.Time, fetch func(context.Context) (*Snapshot, error), applied func(*idCache)) (*idCache, error) {
	ids.syncMu.Lock()
	defer ids.syncMu.Unlock()
	snap, err := fetch(ctx)
	if err != nil {
		return nil, err
	}
	if snap.SyncedAt.IsZero() {
		snap.SyncedAt = now()
	}
	c, err := newIDCache(snap)
	if err != nil {
		return nil, err
	}
	plain, err := json.Marshal(snap)
	if err != nil {
		return nil, err
	}
	if err := ids.st.Put([]byte(kvIdentities), ids.seal.seal(kvIdentities, plain)); err != nil {
		return nil, err
	}
	ids.cur.Store(c)
	ids.mu.Lock()
	ids.lastSync = now()
	ids.mu.Unlock()
	applied(c)
	return c, nil
}

// syncIdentities fetches the identities in scope, persists them sealed,
// puts them in force and drops the live connections of identities that
// were removed or disabled.
func (e *Edge) syncIdentities(ctx context.Context, reason string) error {
	fetch := func(ctx context.Context) (*Snapshot, error) {
		snap, err := e.up.SyncIdentities(ctx)
		if err != nil {
			return nil, err
		}
		if snap.Edge.DeviceID != e.cfg.DeviceID {
			return nil, fmt.Errorf("hub answered for edge %q, not %q", snap.Edge.DeviceID, e.cfg.DeviceID)
		}
		return snap, nil
	}
	_, err := e.ids.sync(ctx, e.now, fetch, func(c *idCache) {
		e.log.Info("identities synced", "reason", reason, "devices", len(c.devices)-1, "modules", len(c.modules))
		e.dropRevoked(c)
	})
	if err != nil {
		return fmt.Errorf("sync identities: %w", err)
	}
	return nil
}

// dropRevoked ends the connections of identities the cache no longer
// lets in.
func (e *Edge) dropRevoked(c *idCache) {
	gw := e.gw.Load()
	if gw == nil {
		return
	}
	e.mu.Lock()
	var gone []gateway.Identity
	for _, s := range e.sessions {
		id := s.Identity()
		if _, err := c.lookup(id.DeviceID, id.ModuleID); err != nil {
			gone = append(gone, id)
		}
	}
	e.mu.Unlock()
	for _, id := range gone {
		e.log.Info("dropping client: identity removed or disabled at the hub", "client", id.ClientID())
		gw.DisconnectIdentity(id.DeviceID, id.ModuleID, "identity removed or disabled at the hub")
	}
}

// refreshAllowed rate-limits syncs triggered by failed authentications.
func (ids *identities) refreshAllowed(clientID string, now time.Time) bool {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if now.Sub(ids.lastRefresh) < refreshOverall {
		return false
	}
	if t, ok := ids.refreshTried[clientID]; ok && now.Sub(t) < refreshPerIdentity {
		return false
	}
	if ids.refreshTried == nil {
		ids.refreshTried = map[string]time.Time{}
	}
	if len(ids.refreshTried) > 10000 {
		for k, t := range ids.refreshTried {
			if now.Sub(t) >= refreshPerIdentity {
				delete(ids.refreshTried, k)
			}
		}
	}
	ids.refreshTried[clientID] = now
	ids.lastRefresh = now
	return true
}

// authenticate serves gateway.Authenticator from the cache, refreshing
// it from the hub (when online, rate-limited) when an identity fails:
// it may have been added, re-enabled or given new keys.
func (e *Edge) authenticate(ctx context.Context, cr gateway.Credentials) (gateway.Identity, error) {
	c := e.ids.current()
	if c == nil {
		return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonBackend, errors.New("edge has no identity cache"))
	}
	id, err := c.verify(cr, e.cfg.HubHostName, e.now())
	if err == nil {
		return id, nil
	}
	var ae *gateway.AuthError
	if !errors.As(err, &ae) || ae.Reason == gateway.ReasonExpired || ae.Reason == gateway.ReasonWrongAudience {
		return gateway.Identity{}, err
	}
	if !e.up.State().Connected || !e.ids.refreshAllowed(cr.ClientID, e.now()) {
		return gateway.Identity{}, err
	}
	sctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	if serr := e.syncIdentities(sctx, "authentication failed for "+cr.ClientID); serr != nil {
		e.log.Warn("identity refresh after a failed authentication did not complete", "client", cr.ClientID, "error", serr)
		return gateway.Identity{}, err
	}
	return e.ids.current().verify(cr, e.cfg.HubHostName, e.now())
}
