// Package upstream is the edge's single MQTT/TLS link to its parent hub.
//
// The edge connects as itself (clientId = edge id) and carries everything
// over that one connection: the drain of the upstream store queues as
// its children's telemetry, on-behalf-of twin requests, C2D and method
// traffic for local clients, identity sync, edge CA signing and reports
// of which local clients are connected (presence.go).
//
// The drain reads every queue Config.Endpoints lists (one per route
// priority) with store.NextByPriority, a batch at a time, so newer
// high-priority data overtakes an older low-priority backlog within about
// a window. Order holds within one queue, not across queues.
//
// Loss of the link is noticed within the keepalive: every read has a
// deadline of one keepalive and the link pings after half of one, so a
// silent link fails its read. Return is noticed within about a second:
// reconnects back off with jitter (first retry 200–400 ms, cap 5 s), and
// while the parent's port refuses TCP a cheap TCP probe runs every second,
// so the full TLS and MQTT handshake starts as soon as the port answers.
//
// The drain is at-least-once: store entries are deleted only once their
// PUBACKs arrived, up to the highest contiguous one per queue, and whatever was in
// flight at a loss is sent again after the reconnect. Each publish carries
// its replay key (edgeproto: the store's id, the entry's sequence and
// stored time) so the hub drops the replays. Before the drain starts on a
// connection, the link and the hub agree on where the store's sequence
// stands (agreePosition).
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"outpost/internal/backoff"
	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/sas"
)

// Endpoint is the store queue the link drains when Config.Endpoints is
// nil: that of routes into $upstream of priority 0.
const Endpoint = "$upstream"

// APIVersion is the api-version the link names in its MQTT user name.
const APIVersion = "2021-04-12"

const (
	defaultKeepAlive = 30 * time.Second
	defaultWindow    = 2048
	// The reconnect backoff: jittered, from at most reconnectInitial,
	// doubling to reconnectMax.
	reconnectInitial = 400 * time.Millisecond
	reconnectMax     = 5 * time.Second
	// probeInterval is how often a TCP probe checks, while the parent
	// refuses connections, whether it is back.
	probeInterval = time.Second
	// tokenLifetime is how long a SAS password is valid; the link
	// reconnects with a fresh one before it runs out, as the SDKs do.
	tokenLifetime = time.Hour
	tokenRenewal  = tokenLifetime - 5*time.Minute
	// requestTimeout bounds a request whose context has no deadline.
	requestTimeout = 30 * time.Second
)

// ErrOffline is returned by requests while the link is down.
var ErrOffline = errors.New("upstream link is down")

// Config configures a Link.
type Config struct {
	// HubHostName is the hub's HostName (may carry :port); it is in the
	// MQTT user name and the SAS resource, and TLS verifies its host part.
	HubHostName string
	// DeviceID is the edge device id.
	DeviceID string
	// Key is the edge's SAS key (base64).
	Key string
	// Addr is the dial address (--upstream-addr); default HubHostName's
	// host, port 8883. A port in HubHostName is the hub's HTTPS port
	// (connection strings carry it, DESIGN.md), never its MQTT port.
	Addr string
	// RootCAs is the hub's root CA; nil means the system roots.
	RootCAs *x509.CertPool
	// Store holds the upstream queues.
	Store *store.Store
	// Endpoints lists the store endpoints to drain; nil means
	// []string{Endpoint}. It is called at every connect and after every
	// Kick, so queues of new routes are picked up. The drain serves them
	// by their store priority (store.SetEndpoint), ties in listed order.
	// It must be safe to call from the drain's goroutine.
	Endpoints func() []string
	// Local receives deliveries from the cloud for local clients.
	Local Local
	// Logger receives link state changes; nil discards.
	Logger *slog.Logger
	// Now is the clock for State, tokens and waits; nil means time.Now.
	Now func() time.Time
	// After is the timer of that clock, for the reconnect backoff and
	// probes; nil means real timers.
	After backoff.After
	// KeepAlive bounds how long a loss of the link goes unnoticed;
	// default 30 s.
	KeepAlive time.Duration
	// Window is how many drained messages may await their PUBACK;
	// default 2048. The drain is bound by round trips, not CPU: the hub
	// acks a batch once JetStream stored it, so the window must cover
	// about two of its batches (gateway BatchMax 1024) to keep it busy.
	Window int
	// OnState is called on every change of State, in order.
	OnState func(State)
	// Observer, if set, learns how long each forwarded message waited
	// between being stored and being acknowledged by the hub. It must
	// not block: it runs on the drain's ack path.
	Observer interface{ ObserveForwarded(latency time.Duration) }
	// OnSetAside, if set, learns of every message the drain set aside
	// because the hub refused it for good (or would: too large, an
	// invalid identity); the drain goes on past it. It must not block:
	// it runs on the drain's ack path.
	OnSetAside func(SetAside)
}

// SetAside is a drained message the hub refused for good: deleted from
// its queue, never delivered.
type SetAside struct {
	Endpoint           string
	Seq                uint64
	DeviceID, ModuleID string
	MessageID          string
	Reason             string // an edgeproto.Refused* name
	Message            string // the hub's words, or the edge's
}

// PermanentRefusal is a message refused for good, by the hub or by the
// drain on its behalf.
type PermanentRefusal struct {
	Reason  string // an edgeproto.Refused* name
	Message string
}

func (e *PermanentRefusal) Error() string { return "refused for good (" + e.Reason + "): " + e.Message }

// Local is what the link calls for traffic from the cloud to local
// clients; package edge implements it.
type Local interface {
	// DeliverC2D returns after the child acked msg; an error leaves it
	// unacknowledged upstream, so the hub delivers it again later.
	DeliverC2D(ctx context.Context, deviceID string, msg *message.Message) error
	InvokeMethod(ctx context.Context, deviceID, moduleID, name string, payload []byte) (status int, resp []byte, err error)
	DesiredPatch(deviceID, moduleID string, version int64, patch []byte)
	// EdgeHubDesired gets the $edgeHub module twin's desired document:
	// whole after every connect, a patch on every update.
	EdgeHubDesired(desired []byte)
}

// State describes the link.
type State struct {
	Connected bool
	// Since is when Connected last changed.
	Since     time.Time
	LastError string
	// OfflinePeriods counts losses of an established link.
	OfflinePeriods int
	// LastOffline is how long the last completed offline period lasted.
	LastOffline time.Duration
}

// Link is the edge's link to its parent. Its methods are safe for
// concurrent use.
type Link struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	tls     *tls.Config
	addr    string
	ridBase string
	ridSeq  atomic.Uint64
	running atomic.Bool

	// subsChanged wakes the current session's subscription reconciler,
	// presenceChanged its presence reporter.
	subsChanged     chan struct{}
	presenceChanged chan struct{}

	kickMu sync.Mutex
	// kickMu guards the following fields.
	kicked     bool
	kickCancel context.CancelFunc // ends the drain's wait for new entries

	// active is what the drain reads, in listed order. Only the drain's
	// publish goroutine uses it; sessions do not overlap.
	active  []*store.Reader
	refused map[string]bool // endpoints that could not be opened, logged once

	readersMu sync.Mutex
	// readersMu guards readers and setAsideTo. readers: every endpoint
	// the link has read, by name, kept when no longer listed so that what
	// is in flight from it can still be acked, and so that it is rewound
	// on reconnect.
	readers map[string]*store.Reader
	// setAsideTo is, per endpoint, the highest sequence reported set
	// aside: one not yet acked in the store when the link dropped is
	// refused again on the next connection, and is not counted twice.
	setAsideTo map[string]uint64

	mu sync.Mutex
	// mu guards the following fields.
	state    State
	sess     *session // nil while offline
	attached map[string]attachment
	pending  map[string]chan reply // by $rid
	lostAt   time.Time
}

// attachment is a local client whose cloud traffic comes over the link.
type attachment struct{ deviceID, moduleID string }

// reply is a response to a request, matched by $rid.
type reply struct {
	status  int
	version int64
	body    []byte
}

// New checks cfg, fills defaults and returns a Link; Run connects it.
func New(cfg Config) (*Link, error) {
	if cfg.HubHostName == "" || cfg.DeviceID == "" || cfg.Key == "" {
		return nil, errors.New("new upstream link: need hub host name, device id and key")
	}
	if cfg.Store == nil || cfg.Local == nil {
		return nil, errors.New("new upstream link: need a store and a local handler")
	}
	if _, err := sas.Sign(sas.DeviceResource(cfg.HubHostName, cfg.DeviceID, ""), cfg.Key, "", time.Now()); err != nil {
		return nil, fmt.Errorf("new upstream link: %w", err)
	}
	host, _, err := net.SplitHostPort(cfg.HubHostName)
	if err != nil {
		host = cfg.HubHostName
	}
	if cfg.Addr == "" {
		cfg.Addr = host
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		cfg.Addr = net.JoinHostPort(cfg.Addr, "8883")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = defaultKeepAlive
	}
	if cfg.KeepAlive < 200*time.Millisecond {
		return nil, errors.New("new upstream link: keepalive under 200 ms")
	}
	if cfg.Window <= 0 {
		cfg.Window = defaultWindow
	}
	if cfg.Window > 65000 {
		return nil, errors.New("new upstream link: window over 65000 (MQTT packet ids)")
	}
	r, err := cfg.Store.NewReader(Endpoint)
	if err != nil {
		return nil, fmt.Errorf("new upstream link: %w", err)
	}
	return &Link{
		cfg:             cfg,
		log:             cfg.Logger.With("component", "upstream"),
		now:             cfg.Now,
		tls:             &tls.Config{ServerName: host, RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		addr:            cfg.Addr,
		active:          []*store.Reader{r},
		refused:         map[string]bool{},
		readers:         map[string]*store.Reader{Endpoint: r},
		setAsideTo:      map[string]uint64{},
		ridBase:         message.NewID()[:8] + ".",
		subsChanged:     make(chan struct{}, 1),
		presenceChanged: make(chan struct{}, 1),
		attached:        map[string]attachment{},
		pending:         map[string]chan reply{},
	}, nil
}

// State returns the link's state.
func (l *Link) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// Connected reports whether the link is up.
func (l *Link) Connected() bool { return l.State().Connected }

// current returns the live session, or nil.
func (l *Link) current() *session {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sess
}

// update changes the state and reports it; only Run's goroutine calls it,
// so OnState sees changes in order.
func (l *Link) update(fn func(*State)) {
	l.mu.Lock()
	old := l.state
	fn(&l.state)
	st := l.state
	l.mu.Unlock()
	if st != old && l.cfg.OnState != nil {
		l.cfg.OnState(st)
	}
}

// Run connects and keeps the link up until ctx ends, then returns nil.
func (l *Link) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return errors.New("upstream link: already running")
	}
	defer l.running.Store(false)
	bo := backoff.Backoff{Initial: reconnectInitial, Max: reconnectMax, After: l.cfg.After}
	failures := 0
	for ctx.Err() == nil {
		start := l.now()
		up, drained, err := l.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if up {
			// A link that flaps at once keeps backing off; one that
			// resets mid-drain but delivered does not, or the waits
			// would grow with every reset of a long drain.
			if drained || l.now().Sub(start) > time.Second {
				bo.Reset()
			}
			failures = 0
		} else {
			failures++
			lvl := slog.LevelDebug
			if failures == 1 {
				lvl = slog.LevelWarn
			}
			l.log.Log(ctx, lvl, "upstream connect failed", "addr", l.addr, "attempt", failures, "error", err)
		}
		// A probe can only tell that a refusing port opened again; after a
		// TLS or MQTT failure, wait out the backoff to spare the hub.
		var de *dialError
		probe := up || errors.As(err, &de)
		l.wait(ctx, bo.Next(), probe)
	}
	return nil
}

// wait sleeps d, or less if probe is set and a TCP probe of the parent
// succeeds first.
func (l *Link) wait(ctx context.Context, d time.Duration, probe bool) {
	deadline := l.now().Add(d)
	for {
		left := deadline.Sub(l.now())
		if left <= 0 {
			return
		}
		step := left
		if probe {
			step = min(left, probeInterval)
		}
		if !backoff.Sleep(ctx, l.cfg.After, step) {
			return
		}
		if probe && deadline.Sub(l.now()) > 0 && l.probe(ctx) {
			return
		}
	}
}

func (l *Link) probe(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, probeInterval)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", l.addr)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// session connects and serves one connection until it ends. up reports
// whether it connected, drained whether the hub acked a drained entry on
// it; err says why it ended or failed.
func (l *Link) session(ctx context.Context) (up, drained bool, err error) {
	now := l.now()
	tok, err := sas.Sign(sas.DeviceResource(l.cfg.HubHostName, l.cfg.DeviceID, ""), l.cfg.Key, "", now.Add(tokenLifetime))
	if err != nil {
		return false, false, err
	}
	c, err := dialMQTT(ctx, connectParams{
		addr:      l.addr,
		tls:       l.tls,
		clientID:  l.cfg.DeviceID,
		username:  mqttUsername(l.cfg.HubHostName, l.cfg.DeviceID),
		password:  tok,
		keepAlive: l.cfg.KeepAlive,
		timeout:   min(max(2*l.cfg.KeepAlive, 5*time.Second), 30*time.Second),
	})
	if err != nil {
		l.update(func(s *State) { s.LastError = err.Error() })
		return false, false, err
	}
	s := newSession(ctx, l, c)
	connectedAt := l.now()
	l.mu.Lock()
	l.sess = s
	lostAt := l.lostAt
	l.mu.Unlock()
	var offline time.Duration
	if !lostAt.IsZero() {
		offline = connectedAt.Sub(lostAt)
	}
	l.update(func(st *State) {
		st.Connected, st.Since = true, connectedAt
		if !lostAt.IsZero() {
			st.LastOffline = offline
		}
	})
	if lostAt.IsZero() {
		l.log.Info("upstream link up", "addr", l.addr)
	} else {
		l.log.Info("upstream link up", "addr", l.addr, "offline", offline.Round(time.Millisecond))
	}
	s.start()

	renew := time.NewTimer(tokenRenewal)
	defer renew.Stop()
	graceful := true
	select {
	case <-c.done:
		err = c.Err()
		graceful = false
	case <-ctx.Done():
		err = ctx.Err()
	case <-renew.C:
		err = errors.New("renewing sas token")
	}
	l.mu.Lock()
	l.sess = nil
	l.mu.Unlock()
	s.stop(graceful)

	lost := l.now()
	l.mu.Lock()
	l.lostAt = lost
	l.mu.Unlock()
	l.update(func(st *State) {
		st.Connected, st.Since = false, lost
		st.LastError = err.Error()
		st.OfflinePeriods++
	})
	if ctx.Err() == nil {
		l.log.Warn("upstream link down", "addr", l.addr, "error", err, "up", lost.Sub(connectedAt).Round(time.Millisecond))
	}
	return true, s.pubacks.Load() > 0, err
}

// mqttUsername is the link's MQTT user name: IoT Hub's, plus the
// capability to be told of refusals (edgeproto).
func mqttUsername(hubHost, deviceID string) string {
	return hubHost + "/" + deviceID + "/?api-version=" + APIVersion + "&" + edgeproto.CapParam + "=" + edgeproto.CapRefusals
}

// Kick tells the link there is new data in the store, or new queues to
// drain. The drain also wakes on every store commit; Kick makes it list
// Config.Endpoints again and look at once, e.g. after a route or TTL
// change.
func (l *Link) Kick() {
	l.kickMu.Lock()
	defer l.kickMu.Unlock()
	l.kicked = true
	if l.kickCancel != nil {
		l.kickCancel()
	}
}

// Attach routes a local client's cloud traffic (C2D, methods, desired
// patches) over the link; the subscriptions are made again after every
// reconnect. The hub is told the client is connected (see presence.go)
// while it is attached and the link is up. Attach only identities in the
// edge's scope: the hub drops a connection that subscribes for others.
func (l *Link) Attach(deviceID, moduleID string) {
	l.mu.Lock()
	l.attached[message.ClientID(deviceID, moduleID)] = attachment{deviceID, moduleID}
	l.mu.Unlock()
	l.signalSubs()
}

// Detach stops routing a local client's cloud traffic over the link.
func (l *Link) Detach(deviceID, moduleID string) {
	l.mu.Lock()
	delete(l.attached, message.ClientID(deviceID, moduleID))
	l.mu.Unlock()
	l.signalSubs()
}

func (l *Link) signalSubs() {
	for _, ch := range []chan struct{}{l.subsChanged, l.presenceChanged} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (l *Link) newRID() string {
	return l.ridBase + strconv.FormatUint(l.ridSeq.Add(1), 36)
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}
