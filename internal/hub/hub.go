package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config configures a Hub.
type Config struct {
	// DataDir holds the embedded JetStream store (DataDir/jetstream).
	// Required unless NATSURL is set.
	DataDir string
	// NATSURL, when set, connects to an external NATS server or cluster
	// instead of embedding one. Several hub replicas may share it.
	NATSURL string
	// HostName is the hub's IoT Hub host name, as in connection strings.
	HostName string
	// Replicas is the replica count of the KV buckets; default 1. Use 3 on
	// a 3-node cluster for state that survives the loss of a node.
	Replicas int
	// SyncInterval is how often the embedded JetStream fsyncs its files;
	// zero keeps nats-server's default (2 minutes). SyncAlways fsyncs every
	// write, at a large cost in throughput. Neither applies with NATSURL.
	SyncInterval time.Duration
	SyncAlways   bool
	Logger       *slog.Logger
	Now          func() time.Time
	// ActivityResolution bounds presence writes: lastActivityTime is
	// written at most once per identity per interval, so it lags real
	// activity by up to that much. Default DefaultActivityResolution.
	ActivityResolution time.Duration
	// HubLiveness is how long after its last heartbeat a hub instance
	// that stopped (crashed) still counts as holding its connections.
	// Default DefaultHubLiveness.
	HubLiveness time.Duration
}

// Hub is the cloud hub's state: the identity registry, twins and queries,
// kept in JetStream KV and mirrored in memory.
type Hub struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	srv *server.Server // nil with an external NATS
	nc  *nats.Conn
	js  jetstream.JetStream

	devices, modules, twins *bucket
	devTab, modTab, twinTab *table

	instance string  // this process's id among hubs sharing NATS
	pres     *bucket // connection state and activity (presence.go)
	presTab  *table
	hubs     *bucket // heartbeats of hub instances

	children *scopeIndex // edge scope -> children, fed by devTab
	qcache   queryCache  // query documents and key order

	cancel context.CancelFunc
	done   chan struct{} // closed by Close, to stop WatchTwins readers
	wg     sync.WaitGroup

	mu     sync.Mutex // guards closed, so no goroutine starts after Close waits
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// New opens (or creates) the hub's state and waits until this process's
// in-memory index holds everything already stored.
func New(cfg Config) (*Hub, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.HostName == "" {
		cfg.HostName = "localhost"
	}
	if cfg.ActivityResolution <= 0 {
		cfg.ActivityResolution = DefaultActivityResolution
	}
	if cfg.HubLiveness <= 0 {
		cfg.HubLiveness = DefaultHubLiveness
	}
	if cfg.NATSURL == "" && cfg.DataDir == "" {
		return nil, errors.New("hub: DataDir or NATSURL is required")
	}
	h := &Hub{cfg: cfg, log: cfg.Logger, now: cfg.Now, done: make(chan struct{}), instance: newInstanceID()}
	if err := h.open(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func (h *Hub) open() error {
	var err error
	if h.cfg.NATSURL == "" {
		if h.srv, err = startEmbedded(h.cfg); err != nil {
			return err
		}
	}
	if h.nc, err = connect(h.cfg, h.srv); err != nil {
		return err
	}
	if h.js, err = jetstream.New(h.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, b := range []struct {
		name string
		dst  **bucket
		ttl  time.Duration
	}{
		{bucketDevices, &h.devices, 0}, {bucketModules, &h.modules, 0}, {bucketTwins, &h.twins, 0},
		{bucketPresence, &h.pres, 0},
		// A crashed instance's heartbeat is garbage after a day.
		{bucketHubs, &h.hubs, 24 * time.Hour},
	} {
		if *b.dst, err = openBucket(ctx, h.js, b.name, h.cfg.Replicas, b.ttl); err != nil {
			return err
		}
	}
	h.devTab = newTable(bucketDevices, decodeDevice)
	h.modTab = newTable(bucketModules, decodeModule)
	h.twinTab = newTable(bucketTwins, decodeTwin)
	h.presTab = newTable(bucketPresence, decodePresence)
	h.children = newScopeIndex(deviceScopes)
	h.devTab.onChange = h.children.onChange

	runCtx, runCancel := context.WithCancel(context.Background())
	h.cancel = runCancel
	for _, p := range []struct {
		b *bucket
		t *table
	}{{h.devices, h.devTab}, {h.modules, h.modTab}, {h.twins, h.twinTab}, {h.pres, h.presTab}} {
		w, err := p.b.kv.WatchAll(runCtx)
		if err != nil {
			return fmt.Errorf("watch %s: %w", p.b.name, err)
		}
		ready := make(chan struct{})
		if !h.goStart() {
			return errors.New("hub closed")
		}
		go func(t *table) {
			defer h.wg.Done()
			t.follow(runCtx, w, ready, func(key string, err error) {
				h.log.Error("skip undecodable entry", "bucket", t.name, "key", key, "err", err)
			})
		}(p.t)
		select {
		case <-ready:
		case <-ctx.Done():
			return fmt.Errorf("load %s: %w", p.b.name, ctx.Err())
		}
	}
	if err := h.beat(ctx); err != nil {
		return fmt.Errorf("hub heartbeat: %w", err)
	}
	if !h.goStart() {
		return errors.New("hub closed")
	}
	go func() {
		defer h.wg.Done()
		h.runHeartbeat(runCtx)
	}()
	return nil
}

// Close stops the watchers, the connection and the embedded server. It is
// safe to call more than once.
func (h *Hub) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		h.mu.Unlock()
		var errs []error
		if h.presTab != nil && h.hubs != nil {
			// Connections this instance held are over; say so now rather
			// than after the liveness runs out.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := h.sweepPresence(ctx, true); err != nil {
				errs = append(errs, fmt.Errorf("clear presence: %w", err))
			}
			cancel()
		}
		close(h.done)
		if h.cancel != nil {
			h.cancel()
		}
		h.wg.Wait()
		if h.nc != nil {
			// Every write was acknowledged before its call returned, so
			// nothing is pending: a plain close loses nothing.
			h.nc.Close()
		}
		if h.srv != nil {
			// Shutting JetStream down first flushes its stores and
			// reports a failure to do so; Shutdown alone would not.
			if err := h.srv.ShutdownJetStream(); err != nil {
				errs = append(errs, fmt.Errorf("shutdown jetstream: %w", err))
			}
			h.srv.Shutdown()
			h.srv.WaitForShutdown()
		}
		h.closeErr = errors.Join(errs...)
	})
	return h.closeErr
}

// Conn is the hub's NATS connection, for the data plane's streams and
// request/reply.
func (h *Hub) Conn() *nats.Conn { return h.nc }

// JetStream is the hub's JetStream context.
func (h *Hub) JetStream() jetstream.JetStream { return h.js }

// HostName is the configured IoT Hub host name.
func (h *Hub) HostName() string { return h.cfg.HostName }

// goStart registers a goroutine with the hub's WaitGroup, unless the hub
// is closing.
func (h *Hub) goStart() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.wg.Add(1)
	return true
}
