// Package edge wires the edge hub: the shared device endpoint (gateway)
// in front of a durable store (edge/store), an offline identity cache,
// a twin cache, routes, local delivery to modules and children, and the
// upstream link to the hub (edge/upstream, behind the Uplink interface).
//
// The edge must sync with its hub once: identities in its scope and an
// edge CA signed by the hub's root (or the operator's own). Until then it
// refuses to serve. From then on it starts, restarts and runs without the
// link for as long as it is offline: clients authenticate from the cache,
// telemetry is acknowledged once it is durable in the store, and the
// link drains the upstream queues whenever it is up. Modules and children
// reach each other through routes and local direct methods
// (docs/edge-local.md); twins are served from a cache while offline and
// reconciled on reconnect.
//
// Lock order, the only nestings there are: the identity cache's syncMu,
// then its mu or the Edge's mu (identities.go); cfgMu, then mu; the twin
// cache's per-client reported lock, then its mu (twincache.go). The
// Edge's mu, srvMu, and the mu and repMu of those two parts are never
// held while taking another; the store's own locks come after all of
// these (it is called under them). No lock is held while calling the
// Uplink or a gateway Session, except the identity cache's syncMu (around
// SyncIdentities and the disconnects of dropRevoked) and a client's
// reported lock (around TwinReported, which TwinTimeout bounds).
package edge

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/certs"
	"outpost/internal/edge/store"
	"outpost/internal/gateway"
	"outpost/internal/metrics"
	"outpost/internal/route"
	"outpost/internal/sas"
)

// Defaults for Config fields left zero.
const (
	DefaultIdentityRefresh = time.Hour
	DefaultStatusInterval  = 30 * time.Second
	DefaultMQTTAddr        = ":8883"
	DefaultHTTPSAddr       = ":443"
	DefaultTwinTimeout     = 500 * time.Millisecond
)

// ErrNeverSynced is returned by Run when it ends before the edge ever
// synced with its hub.
var ErrNeverSynced = errors.New("edge has never synced with its hub: connect it to the hub once; it then runs offline indefinitely")

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("edge closed")

// Config configures an Edge.
type Config struct {
	// HubHostName, DeviceID and Key come from the edge's connection
	// string (HostName=…;DeviceId=…;SharedAccessKey=…). Required.
	HubHostName string
	DeviceID    string
	Key         string
	// StorageDir holds the store (queues, caches). Required.
	StorageDir string
	// MaxStorageBytes caps stored messages; 0 means no cap.
	MaxStorageBytes int64
	// MinFreeStorageBytes is the free space the storage folder's file
	// system keeps: below it new messages are refused (store.Config's
	// MinFreeBytes). 0 means the store's default (64 MiB); negative
	// disables the check.
	MinFreeStorageBytes int64
	// StorageFS is the store's file system; nil means the disk. Tests
	// inject faults (a full disk) with it.
	StorageFS vfs.FS
	// UpstreamAddr is the dial address of the hub's MQTT listener
	// (default: HubHostName's host, port 8883); TLS still verifies
	// HubHostName. For the Uplink.
	UpstreamAddr string
	// HubCA verifies the hub; HubCAPEM is added to it when set. For the
	// Uplink.
	HubCA    *x509.CertPool
	HubCAPEM []byte
	// Hostname is the edge's own TLS host name, which children put in
	// GatewayHostName. Default: os.Hostname, else "localhost".
	Hostname string
	// EdgeCACert and EdgeCAKey are PEM files of the operator's own edge
	// CA. When empty, the hub signs one at first sync.
	EdgeCACert string
	EdgeCAKey  string
	// IdentityRefresh is how often identities are re-synced while
	// online. Default DefaultIdentityRefresh.
	IdentityRefresh time.Duration
	// KeepAlive bounds how long a silent upstream link goes unnoticed;
	// zero leaves the link's default (30 s).
	KeepAlive time.Duration
	// MQTTAddr and HTTPSAddr are listen addresses; use 127.0.0.1:0 in
	// tests. Defaults :8883 and :443.
	MQTTAddr  string
	HTTPSAddr string
	// HTTPTimeouts bound idle and half-sent connections of the HTTPS
	// listener; zero fields take the gateway's defaults.
	HTTPTimeouts gateway.HTTPTimeouts
	// Rates bound each child's or module's connection and the
	// connections started a second; zero fields take the gateway's
	// defaults.
	Rates gateway.Rates
	// StatusInterval is how often the link and backlog are logged.
	StatusInterval time.Duration
	// TwinTimeout bounds a twin GET (when a cached twin can answer) or a
	// reported patch (which can be held) through the link, so that a
	// link cut but not yet noticed never holds a device. Default
	// DefaultTwinTimeout.
	TwinTimeout time.Duration
	// OnEdgeHubEnv, when set, is called with the edgeHub module's
	// environment (its "env" in the $edgeAgent desired properties, as a
	// deployment manifest sets it) whenever the edge fetched it from the
	// hub and it changed. cmd persists it, so that env.storageFolder
	// applies at the next start.
	OnEdgeHubEnv func(env map[string]string)
	Logger       *slog.Logger
	Now          func() time.Time
	// NewUplink makes the link to the hub. Required: edgeserver wires
	// internal/edge/upstream here (NewUpstreamLink); tests a fake.
	NewUplink func(UplinkDeps) (Uplink, error)
}

// Edge is the edge hub. Create it with New, run it with Run, stop it with
// Close.
type Edge struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	st   *store.Store
	seal *sealer
	up   Uplink

	// upPriorities: the link drains "$upstream/pN" endpoints too. Set
	// once in New.
	upPriorities bool

	ids identities // its own locks; see identities.go
	ca  atomic.Pointer[certs.CA]
	gw  atomic.Pointer[gateway.Server]

	srvCert  atomic.Pointer[issuedCert] // the served certificate; see serverCert
	srvMu    sync.Mutex                 // serializes issuing; guards caWarned
	caWarned time.Time                  // the last warning of an edge CA about to expire

	metrics *metrics.Metrics // set once in New

	noRoute       atomic.Uint64
	linkUps       atomic.Uint64
	quotaRefusals atomic.Uint64
	setAside      setAsides
	// diskFullRefusals counts telemetry refused on a full disk.
	diskFullRefusals atomic.Uint64

	ready   chan struct{}
	linkCh  chan struct{} // poked on every link state change
	mqttLn  net.Addr
	httpsLn net.Addr

	twins    twinCache     // its own locks; see twincache.go
	replayCh chan struct{} // poked when a reported patch was held while the link looked up

	cfgMu sync.Mutex
	// cfgMu guards the following fields.
	desired   map[string]any // merged $edgeHub desired properties
	routes    route.Table
	routesRaw json.RawMessage

	mu sync.Mutex
	// mu guards the following fields.
	sessions map[string]gateway.Session // client id -> current session
	workers  map[string]*worker         // local sink -> delivery worker
	connWake chan struct{}              // closed at the next Connected; see sessionOrWake
	runCtx   context.Context
	stopping bool
	started  bool
	closed   bool
	cancel   context.CancelFunc
	runDone  chan struct{}

	wg sync.WaitGroup // the link, loops and delivery workers of Run

	closeOnce sync.Once
	closeErr  error
}

// New validates cfg, opens the store and loads what earlier runs kept:
// identity cache, edge CA, routes, TTL.
func New(cfg Config) (*Edge, error) {
	switch {
	case cfg.HubHostName == "":
		return nil, errors.New("edge: no hub host name")
	case cfg.DeviceID == "":
		return nil, errors.New("edge: no device id")
	case cfg.Key == "":
		return nil, errors.New("edge: no shared access key")
	case cfg.StorageDir == "":
		return nil, errors.New("edge: no storage folder")
	case cfg.NewUplink == nil:
		return nil, errors.New("edge: no upstream link")
	case cfg.MaxStorageBytes < 0:
		return nil, errors.New("edge: negative storage quota")
	case (cfg.EdgeCACert == "") != (cfg.EdgeCAKey == ""):
		return nil, errors.New("edge: the edge CA needs both a certificate and a key file")
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" {
			cfg.Hostname = h
		}
	}
	// The edge CA is constrained to this name: one no certificate can
	// carry would fail every sync.
	if _, err := certs.CanonicalHost(cfg.Hostname); err != nil {
		return nil, fmt.Errorf("edge: --hostname: %w", err)
	}
	if cfg.IdentityRefresh <= 0 {
		cfg.IdentityRefresh = DefaultIdentityRefresh
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	if cfg.TwinTimeout <= 0 {
		cfg.TwinTimeout = DefaultTwinTimeout
	}
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = DefaultMQTTAddr
	}
	if cfg.HTTPSAddr == "" {
		cfg.HTTPSAddr = DefaultHTTPSAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.HubCAPEM) > 0 {
		pool := cfg.HubCA
		if pool == nil {
			pool = x509.NewCertPool()
		} else {
			pool = pool.Clone()
		}
		certsPEM, err := certs.ParseCertsPEM(cfg.HubCAPEM)
		if err != nil {
			return nil, fmt.Errorf("edge: hub CA: %w", err)
		}
		for _, c := range certsPEM {
			pool.AddCert(c)
		}
		cfg.HubCA = pool
	}
	seal, err := newSealer(cfg.DeviceID, cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	st, err := store.Open(store.Config{
		Dir:          cfg.StorageDir,
		FS:           cfg.StorageFS,
		MinFreeBytes: cfg.MinFreeStorageBytes,
		MaxBytes:     cfg.MaxStorageBytes,
		Now:          cfg.Now,
		Logger:       cfg.Logger.With("component", "store"),
	})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	e := &Edge{
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.Now,
		st:       st,
		seal:     seal,
		ready:    make(chan struct{}),
		linkCh:   make(chan struct{}, 1),
		replayCh: make(chan struct{}, 1),
		sessions: map[string]gateway.Session{},
		workers:  map[string]*worker{},
	}
	e.setAside.st, e.setAside.log = st, cfg.Logger
	e.twins.st, e.twins.log = st, cfg.Logger
	e.ids.st, e.ids.seal = st, seal
	if err := e.setAside.load(); err != nil {
		st.Close()
		return nil, fmt.Errorf("edge: %w", err)
	}
	if e.metrics, err = newMetrics(e); err != nil {
		st.Close()
		return nil, fmt.Errorf("edge: %w", err)
	}
	up, err := cfg.NewUplink(UplinkDeps{
		HubHostName: cfg.HubHostName,
		DeviceID:    cfg.DeviceID,
		Key:         cfg.Key,
		Addr:        cfg.UpstreamAddr,
		RootCAs:     cfg.HubCA,
		Logger:      cfg.Logger,
		Now:         cfg.Now,
		Store:       st,
		Local:       e,
		OnState:     e.linkChanged,
		KeepAlive:   cfg.KeepAlive,

		UpstreamEndpoints: e.UpstreamEndpoints,
		Observer:          e.metrics,
		OnSetAside:        func(sa SetAside) { e.setAside.add(e.now(), sa) },
	})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("edge: upstream link: %w", err)
	}
	e.up = up
	if d, ok := up.(EndpointDrainer); ok {
		e.upPriorities = d.DrainsUpstreamEndpoints()
	}
	// Loaded after the link is made: the routes' store endpoints depend
	// on whether it drains by priority.
	if err := e.load(); err != nil {
		st.Close()
		return nil, fmt.Errorf("edge: %w", err)
	}
	return e, nil
}

// load restores the state of earlier runs. A storage folder of another
// edge is an error; a cache this edge's key cannot open (the key was
// regenerated) is treated as never synced, with a log saying why.
func (e *Edge) load() error {
	var marker syncMarker
	v, err := e.st.Get([]byte(kvSynced))
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return fmt.Errorf("read sync marker: %w", err)
	default:
		if err := json.Unmarshal(v, &marker); err != nil {
			return fmt.Errorf("sync marker is corrupt: %w", err)
		}
		if marker.EdgeID != e.cfg.DeviceID {
			return fmt.Errorf("storage folder %s belongs to edge %q, not %q", e.cfg.StorageDir, marker.EdgeID, e.cfg.DeviceID)
		}
	}
	if err := e.loadConfig(); err != nil {
		return err
	}
	ca, err := e.loadEdgeCA()
	if err != nil {
		if e.cfg.EdgeCACert != "" {
			return err
		}
		e.log.Error("stored edge CA unusable; a new one is requested at the next sync", "error", err)
		ca = nil
	}
	if ca != nil {
		e.ca.Store(ca)
	}
	if marker.EdgeID == "" {
		return nil
	}
	if err := e.ids.load(marker.SyncedAt); err != nil {
		e.log.Error("identity cache unusable; the edge must sync with its hub again", "error", err)
	}
	return nil
}

// synced reports whether the edge can serve offline.
func (e *Edge) synced() bool { return e.ids.current() != nil && e.ca.Load() != nil }

// Ready is closed once the edge listens.
func (e *Edge) Ready() <-chan struct{} { return e.ready }

// MQTTAddr and HTTPSAddr are the listen addresses; nil before Ready.
func (e *Edge) MQTTAddr() net.Addr {
	select {
	case <-e.ready:
		return e.mqttLn
	default:
		return nil
	}
}

func (e *Edge) HTTPSAddr() net.Addr {
	select {
	case <-e.ready:
		return e.httpsLn
	default:
		return nil
	}
}

// Store is the edge's store, for tests and tools that inspect queues.
func (e *Edge) Store() *store.Store { return e.st }

// Gateway is the device endpoint; nil before Ready.
func (e *Edge) Gateway() *gateway.Server { return e.gw.Load() }

// linkChanged is the Uplink's OnState callback; it must not block.
// Link-up events are counted so that a drop and return between two looks
// by maintain still counts as a reconnect.
func (e *Edge) linkChanged(s LinkState) {
	e.metrics.ObserveLink(metricsLink(s))
	if s.Connected {
		e.linkUps.Add(1)
	}
	select {
	case e.linkCh <- struct{}{}:
	default:
	}
}

// Run runs the link and, once the edge has synced, serves clients,
// until ctx ends or Close. Before the first sync it only tries to sync
// and returns an error wrapping ErrNeverSynced if it ends first.
func (e *Edge) Run(ctx context.Context) error {
	e.mu.Lock()
	switch {
	case e.closed:
		e.mu.Unlock()
		return ErrClosed
	case e.started:
		e.mu.Unlock()
		return errors.New("edge: already running")
	}
	e.started = true
	ctx, cancel := context.WithCancel(ctx)
	e.runCtx, e.cancel, e.runDone = ctx, cancel, make(chan struct{})
	done := e.runDone
	e.mu.Unlock()
	defer close(done)
	defer cancel()

	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if err := e.up.Run(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("upstream link stopped", "error", err)
		}
	}()
	err := e.run(ctx)
	cancel()
	e.mu.Lock()
	e.stopping = true
	e.mu.Unlock()
	e.wg.Wait()
	return err
}

func (e *Edge) run(ctx context.Context) error {
	justSynced := false
	if !e.synced() {
		if err := e.firstSync(ctx); err != nil {
			return err
		}
		justSynced = true
	}
	srv, err := e.listen()
	if err != nil {
		return err
	}
	e.log.Info("edge ready", "mqtt", e.mqttLn.String(), "https", e.httpsLn.String(), "hostname", e.cfg.Hostname)
	close(e.ready)

	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.maintain(ctx, justSynced)
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-srv.errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.shutdown(sctx); err != nil && serveErr == nil {
		serveErr = err
	}
	return serveErr
}

// firstSync syncs identities and obtains the edge CA, retrying whenever
// the link changes state and every few seconds, until both are done.
func (e *Edge) firstSync(ctx context.Context) error {
	e.log.Warn(ErrNeverSynced.Error() + "; waiting for the hub")
	var wait time.Duration
	lastLog := e.now()
	for {
		err := e.syncOnce(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last attempt: %v)", ErrNeverSynced, err)
		}
		if e.now().Sub(lastLog) >= 30*time.Second {
			e.log.Warn(ErrNeverSynced.Error(), "error", err)
			lastLog = e.now()
		}
		wait = min(max(2*wait, time.Second), 5*time.Second)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last attempt: %v)", ErrNeverSynced, err)
		case <-e.linkCh:
			t.Stop()
		case <-t.C:
		}
	}
}

func (e *Edge) syncOnce(ctx context.Context) error {
	if !e.up.State().Connected {
		return ErrOffline
	}
	if err := e.syncIdentities(ctx, "first sync"); err != nil {
		return err
	}
	if e.ca.Load() == nil {
		ca, err := e.obtainEdgeCA(ctx)
		if err != nil {
			return err
		}
		e.ca.Store(ca)
	}
	b, err := json.Marshal(syncMarker{EdgeID: e.cfg.DeviceID, HubHostName: e.cfg.HubHostName, SyncedAt: e.now()})
	if err != nil {
		return err
	}
	if err := e.st.Put([]byte(kvSynced), b); err != nil {
		return fmt.Errorf("persist sync marker: %w", err)
	}
	e.log.Info("first sync with the hub done: the edge can now run offline indefinitely")
	return nil
}

// maintain re-syncs identities periodically and on every reconnect,
// replays twin patches held offline, and logs the edge's status.
func (e *Edge) maintain(ctx context.Context, justSynced bool) {
	refresh := time.NewTicker(e.cfg.IdentityRefresh)
	defer refresh.Stop()
	status := time.NewTicker(e.cfg.StatusInterval)
	defer status.Stop()
	wasUp := e.up.State().Connected
	ups := e.linkUps.Load()
	e.logStatus("start")
	e.checkCertificates()
	switch {
	case wasUp && justSynced:
		e.fetchEdgeAgent(ctx)
	case wasUp:
		e.online(ctx, "ready while online")
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			if e.up.State().Connected {
				if err := e.syncIdentities(ctx, "periodic refresh"); err != nil {
					e.log.Warn("periodic identity refresh failed", "error", err)
				}
				e.renewEdgeCA(ctx)
			}
		case <-status.C:
			e.logStatus("periodic")
			e.checkCertificates()
		case <-e.replayCh:
			// A patch was held although the link looked up: try again
			// with the short twin timeout, so that a hanging link
			// holds this loop no longer than it held the device.
			if e.up.State().Connected {
				e.replayReported(ctx, e.cfg.TwinTimeout)
			}
		case <-e.linkCh:
			up, n := e.up.State().Connected, e.linkUps.Load()
			reconnected := n != ups
			ups = n
			if up != wasUp || reconnected {
				e.logStatus(map[bool]string{true: "link up", false: "link down"}[up])
			}
			wasUp = up
			if up && reconnected {
				e.online(ctx, "link reconnected")
			}
		}
	}
}

// online reconciles with the hub after (re)connecting: identities, then
// the reported patches held offline (collapsed, one per client), then
// the desired changes made at the hub meanwhile, then the edge's own
// deployment ($edgeAgent).
func (e *Edge) online(ctx context.Context, why string) {
	if err := e.syncIdentities(ctx, why); err != nil {
		e.log.Warn("identity sync after reconnect failed", "error", err)
	}
	e.renewEdgeCA(ctx)
	if !e.replayReported(ctx, replayTimeout) {
		return
	}
	e.reconcileDesired(ctx)
	e.fetchEdgeAgent(ctx)
}

// servers are the listeners of one Run.
type servers struct {
	gw    *gateway.Server
	https *http.Server
	errc  chan error
	wg    sync.WaitGroup
}

func (s *servers) shutdown(ctx context.Context) error {
	err := s.https.Shutdown(ctx)
	if gerr := s.gw.Shutdown(ctx); err == nil {
		err = gerr
	}
	s.wg.Wait()
	return err
}

// listen starts the MQTT/TLS and HTTPS listeners.
func (e *Edge) listen() (*servers, error) {
	tlsCfg, err := e.serverTLS()
	if err != nil {
		return nil, err
	}
	gwCfg := gateway.Config{
		Backend:     backend{e},
		Observer:    e.metrics,
		HubHostName: e.cfg.HubHostName,
		TLS:         tlsCfg,
		Logger:      e.log.With("component", "gateway"),
		Now:         e.now,
	}
	e.cfg.Rates.Apply(&gwCfg)
	gw, err := gateway.New(gwCfg)
	if err != nil {
		return nil, err
	}
	ml, err := gw.ListenMQTTTLS(e.cfg.MQTTAddr)
	if err != nil {
		_ = gw.Shutdown(context.Background())
		return nil, err
	}
	hl, err := net.Listen("tcp", e.cfg.HTTPSAddr)
	if err != nil {
		ml.Close()
		_ = gw.Shutdown(context.Background())
		return nil, fmt.Errorf("listen https: %w", err)
	}
	mux := http.NewServeMux()
	gw.RegisterDeviceHTTP(mux)
	mux.HandleFunc("GET /status", e.serveStatus)
	mux.Handle("GET /metrics", metricsHandler(e, e.metrics))
	mux.HandleFunc("POST /twins/{d}/methods", e.serveInvoke)
	mux.HandleFunc("POST /twins/{d}/modules/{m}/methods", e.serveInvoke)
	s := &servers{
		gw:   gw,
		errc: make(chan error, 2),
		https: &http.Server{
			Handler:   mux,
			TLSConfig: tlsCfg,
			ErrorLog:  slog.NewLogLogger(e.log.Handler(), slog.LevelWarn),
		},
	}
	e.cfg.HTTPTimeouts.Apply(s.https)
	e.mqttLn, e.httpsLn = ml.Addr(), hl.Addr()
	e.gw.Store(gw)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := gw.ServeMQTT(ml); err != nil && !errors.Is(err, gateway.ErrServerClosed) {
			s.errc <- fmt.Errorf("serve mqtt: %w", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := s.https.ServeTLS(hl, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("serve https: %w", err)
		}
	}()
	return s, nil
}

// Close stops Run (if running), waits for it and closes the store. It is
// safe to call more than once.
func (e *Edge) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		cancel, done := e.cancel, e.runDone
		e.mu.Unlock()
		if cancel != nil {
			cancel()
			<-done
		}
		e.closeErr = e.st.Close()
	})
	return e.closeErr
}

// ParseConnectionString reads the edge's connection string into the
// fields of cfg it sets: HubHostName, DeviceID, Key.
func ParseConnectionString(cs string, cfg *Config) error {
	c, err := sas.ParseConnectionString(cs)
	if err != nil {
		return err
	}
	if c.IsService() {
		return errors.New("connection string: a service string, not the edge device's")
	}
	if c.ModuleID != "" {
		return errors.New("connection string: a module string, not the edge device's")
	}
	if c.SharedAccessKey == "" {
		return errors.New("connection string: the edge needs SharedAccessKey (it derives the cache key from it)")
	}
	cfg.HubHostName, cfg.DeviceID, cfg.Key = c.HostName, c.DeviceID, c.SharedAccessKey
	return nil
}
