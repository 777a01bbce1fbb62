package dataplane

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/certs"
	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/hub/api"
	"outpost/internal/identity"
	"outpost/internal/metrics"
)

// Defaults for Config fields left zero.
const (
	// DefaultRetention is how long telemetry stays in the stream: one day,
	// IoT Hub's default retention.
	DefaultRetention = 24 * time.Hour
	// DefaultDuplicateWindow is how long an edge's replayed message is
	// recognised as a duplicate.
	DefaultDuplicateWindow = 2 * time.Hour
	// DefaultC2DTTL is a C2D message's lifetime when it names no expiry.
	DefaultC2DTTL = time.Hour
	// MaxC2DTTL is the longest lifetime a C2D message may ask for, as in
	// IoT Hub.
	MaxC2DTTL = 48 * time.Hour
	// DefaultMaxC2DPending is IoT Hub's per-device queue depth.
	DefaultMaxC2DPending = 50
	// DefaultLockTimeout is how long an HTTPS device holds a C2D message
	// it received before it is offered again.
	DefaultLockTimeout = 60 * time.Second
	// DefaultMaxDeliveryCount bounds the deliveries of one C2D message.
	DefaultMaxDeliveryCount = 10
	// MaxC2DSize is IoT Hub's limit on a C2D message body.
	MaxC2DSize = 64 * 1024
)

// Stream names. Changing them orphans the data of existing hubs.
const (
	StreamTelemetry = "TELEMETRY"
	StreamC2D       = "C2D"
	// BucketC2DDeliveries counts the deliveries of each C2D message, over
	// any protocol (see countDelivery).
	BucketC2DDeliveries = "C2D_DELIVERIES"
	// BucketKeys holds the data plane's secrets: the key of the HTTPS C2D
	// lock tokens (c2dlock.go). Deleting it voids the outstanding tokens;
	// their messages are offered again when their locks expire.
	BucketKeys = "DATAPLANE_KEYS"
)

// Config configures a Plane.
type Config struct {
	// Hub is the hub's state: registry, twins and the NATS connection.
	Hub *hub.Hub
	// CA is the hub's root CA (hub.Bootstrap): X.509 CA-authenticated
	// devices must chain to it, and it signs edge CA certificates. Nil
	// refuses both.
	CA *certs.CA
	// EdgeLoopbackNames lets edge CAs carry loopback host names
	// (localhost, 127.0.0.1), which the hub's own certificate carries
	// too: for one-machine setups only, since any edge can then pose as
	// the hub to a client that dials a loopback name (see grantEdgeHosts).
	EdgeLoopbackNames bool
	// Policies are the shared access policies whose service tokens the
	// REST routes accept (the same as the service API's).
	Policies []api.Policy
	Logger   *slog.Logger
	Now      func() time.Time
	// ClockSkew is how long past expiry a SAS token is still accepted.
	// Default gateway.DefaultClockSkew.
	ClockSkew time.Duration
	// Replicas is the replica count of the streams; default 1.
	Replicas         int
	Retention        time.Duration
	DuplicateWindow  time.Duration
	C2DTTL           time.Duration
	MaxC2DPending    int
	LockTimeout      time.Duration
	MaxDeliveryCount int
}

// Plane is the hub's data plane. It implements gateway.Backend and
// gateway.Extender.
type Plane struct {
	cfg  Config
	h    *hub.Hub
	log  *slog.Logger
	now  func() time.Time
	nc   *nats.Conn
	js   jetstream.JetStream
	tel  jetstream.Stream
	c2d  jetstream.Stream
	pool *x509.CertPool // nil without a CA

	// deliveries counts C2D deliveries per message: durable, and shared
	// by the replicas and both protocols.
	deliveries jetstream.KeyValue
	// positions and edgeStats serve edges' replay de-duplication.
	positions *storePositions
	edgeStats *edgeStats
	// lockKey signs HTTPS C2D lock tokens (c2dlock.go); every replica
	// reads the same one from BucketKeys.
	lockKey []byte
	// edgeHosts records which edge each host name was granted to.
	edgeHosts jetstream.KeyValue

	gw atomic.Pointer[gateway.Server]

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu guards the following fields.
	mu      sync.Mutex
	closed  bool
	live    map[string]*liveSession // client id -> session held by this replica
	parents map[string]string       // device id -> parent scope, for scope changes

	consumers sync.Map // device id -> jetstream.Consumer for HTTPS C2D

	pres    *presenceWriter
	sessSeq atomic.Uint64 // numbers the sessions whose presence is recorded

	closeOnce sync.Once
	closeErr  error
}

// New creates the streams if needed and starts the registry and twin
// watchers. Call SetGateway once the device endpoint exists.
func New(cfg Config) (*Plane, error) {
	if cfg.Hub == nil {
		return nil, errors.New("dataplane: no hub")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = gateway.DefaultClockSkew
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.DuplicateWindow <= 0 {
		cfg.DuplicateWindow = DefaultDuplicateWindow
	}
	if cfg.C2DTTL <= 0 {
		cfg.C2DTTL = DefaultC2DTTL
	}
	if cfg.C2DTTL < time.Second || cfg.C2DTTL > MaxC2DTTL {
		return nil, fmt.Errorf("dataplane: C2DTTL %v: want 1s to %v", cfg.C2DTTL, MaxC2DTTL)
	}
	if cfg.MaxC2DPending <= 0 {
		cfg.MaxC2DPending = DefaultMaxC2DPending
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = DefaultLockTimeout
	}
	if cfg.MaxDeliveryCount <= 0 {
		cfg.MaxDeliveryCount = DefaultMaxDeliveryCount
	}
	p := &Plane{
		cfg:     cfg,
		h:       cfg.Hub,
		log:     cfg.Logger,
		now:     cfg.Now,
		nc:      cfg.Hub.Conn(),
		live:    map[string]*liveSession{},
		parents: map[string]string{},

		edgeStats: &edgeStats{m: map[string]*metrics.Edge{}},
	}
	if cfg.CA != nil {
		p.pool = x509.NewCertPool()
		p.pool.AddCert(cfg.CA.Cert)
	}
	var err error
	// A JetStream context of our own: telemetry needs a deeper async
	// window than the registry's synchronous writes.
	if p.js, err = jetstream.New(p.nc, jetstream.WithPublishAsyncMaxPending(16384)); err != nil {
		return nil, fmt.Errorf("dataplane: jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.openStreams(ctx); err != nil {
		return nil, err
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.pres = newPresenceWriter(p)
	p.pres.start()
	// A failure from here on stops what already started, and waits for it.
	fail := func(err error) (*Plane, error) {
		p.cancel()
		p.wg.Wait()
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	twins, err := p.h.WatchTwins(p.ctx)
	if err != nil {
		return fail(err)
	}
	ids, err := p.h.WatchIdentities(p.ctx)
	if err != nil {
		return fail(err)
	}
	// Seed the parent map after the watch started, so no change falls in
	// between; a change seen twice is harmless.
	for _, d := range p.h.ListDevices(0) {
		if s := identity.ParentScope(&d); s != "" {
			p.parents[d.DeviceID] = s
		}
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.pushDesired(twins)
	}()
	go func() {
		defer p.wg.Done()
		p.followRegistry(ids)
	}()
	return p, nil
}

func (p *Plane) openStreams(ctx context.Context) error {
	var err error
	p.tel, err = p.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamTelemetry,
		Description: "device-to-cloud messages, one subject per identity",
		Subjects:    []string{subjTelemetry + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    p.cfg.Replicas,
		MaxAge:      p.cfg.Retention,
		Duplicates:  p.cfg.DuplicateWindow,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("dataplane: open telemetry stream: %w", err)
	}
	p.c2d, err = p.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:                 StreamC2D,
		Description:          "cloud-to-device queues, one subject per device",
		Subjects:             []string{subjC2D + ">"},
		Storage:              jetstream.FileStorage,
		Replicas:             p.cfg.Replicas,
		MaxMsgsPerSubject:    int64(p.cfg.MaxC2DPending),
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		AllowMsgTTL:          true,
		// Without a Nats-Msg-Id nothing is de-duplicated; keep the
		// window small.
		Duplicates: time.Minute,
	})
	if err != nil {
		return fmt.Errorf("dataplane: open c2d stream: %w", err)
	}
	p.deliveries, err = p.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketC2DDeliveries,
		Description: "delivery count of each c2d message, by stream sequence and time",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    p.cfg.Replicas,
		// A count is written at a delivery, so it outlives its message,
		// which lives at most MaxC2DTTL from being queued.
		TTL: MaxC2DTTL,
	})
	if err != nil {
		return fmt.Errorf("dataplane: open c2d delivery counts: %w", err)
	}
	kv, err := p.openKV(ctx, BucketEdgeStores, "per edge store: a sequence past every one stored from it")
	if err != nil {
		return err
	}
	p.positions = &storePositions{kv: kv, known: map[string]uint64{}, high: map[string]uint64{}}
	keys, err := p.openKV(ctx, BucketKeys, "secrets of the hub's data plane")
	if err != nil {
		return err
	}
	if p.lockKey, err = loadLockKey(ctx, keys); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	if p.edgeHosts, err = p.openKV(ctx, BucketEdgeHosts, "the edge each edge CA host name was granted to"); err != nil {
		return err
	}
	return nil
}

// openKV opens (or creates) one of the plane's small durable buckets:
// one value a key, kept until deleted, replicated like the streams.
func (p *Plane) openKV(ctx context.Context, bucket, description string) (jetstream.KeyValue, error) {
	kv, err := p.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: description,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    p.cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("dataplane: open bucket %s: %w", bucket, err)
	}
	return kv, nil
}

// SetGateway tells the plane which device endpoint holds this replica's
// connections, so it can drop them and find their sessions.
func (p *Plane) SetGateway(s *gateway.Server) { p.gw.Store(s) }

// Close stops the watchers, the method subscriptions and the C2D
// deliveries, and waits for them. It is safe to call more than once; the
// first call's outcome is returned each time.
func (p *Plane) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		live := p.live
		p.live = map[string]*liveSession{}
		p.mu.Unlock()
		var errs []error
		for _, l := range live {
			errs = append(errs, l.stop())
		}
		p.cancel()
		p.wg.Wait()
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// goStart registers a goroutine with p.wg unless the plane is closing.
func (p *Plane) goStart() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

// Subjects. Ids are encoded with enc: never raw ids in subjects.
const (
	subjTelemetry = "tel."
	subjC2D       = "c2d."
	subjMethod    = "outpost.method."
	subjPresence  = "outpost.presence."
	subjC2DWake   = "outpost.c2d."
)

// enc makes an id a subject token: base64url without padding.
func enc(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

func telemetrySubject(deviceID, moduleID string) string {
	if moduleID == "" {
		return subjTelemetry + enc(deviceID)
	}
	return subjTelemetry + enc(deviceID) + "." + enc(moduleID)
}

func c2dSubject(deviceID string) string { return subjC2D + enc(deviceID) }

func methodSubject(clientID string) string { return subjMethod + enc(clientID) }

func presenceSubject(clientID string) string { return subjPresence + enc(clientID) }

func c2dWakeSubject(deviceID string) string { return subjC2DWake + enc(deviceID) }

var (
	_ gateway.Backend  = (*Plane)(nil)
	_ gateway.Extender = (*Plane)(nil)
)
