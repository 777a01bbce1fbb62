package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"golang.org/x/time/rate"

	"outpost/internal/message"
)

// Defaults for Config fields left zero.
const (
	// DefaultClockSkew is how far a device's clock may run behind ours:
	// a SAS token is accepted until its expiry plus this, and a
	// connection is dropped then. Five minutes, as is common for SAS.
	DefaultClockSkew = 5 * time.Minute
	// DefaultSessionExpiry is how long the subscriptions of a
	// clean-session-0 client are kept after it disconnects.
	DefaultSessionExpiry = 7 * 24 * time.Hour
	// DefaultBatchMax bounds the messages handed to one Telemetry call.
	DefaultBatchMax = 1024
	// DefaultBackendTimeout bounds a single Backend call.
	DefaultBackendTimeout = 30 * time.Second
	// DefaultConnectTimeout bounds the TLS handshake plus CONNECT.
	DefaultConnectTimeout = 30 * time.Second
	// DefaultMaxKeepAlive is the longest keepalive a client gets, and
	// what a keepalive of 0 (none, MQTT allows it) becomes: a silent
	// connection ends after 1.5 times it, 1767 s, the server-side limit
	// IoT Hub holds every MQTT connection to (its load balancer's idle
	// timeout of 29.45 min).
	DefaultMaxKeepAlive = 1178 * time.Second
	// defaultTokenRecheck is how often a SAS connection's expiry is held
	// against Now: a clock that jumps (an edge without a battery-backed
	// clock, set right after days offline) ends it within this.
	defaultTokenRecheck = time.Minute
)

// ErrServerClosed is returned by ServeMQTT after Shutdown.
var ErrServerClosed = errors.New("gateway: server closed")

// Config configures a Server.
type Config struct {
	// Backend serves identities, telemetry, twins and C2D. Required.
	Backend Backend
	// HubHostName is the hub's HostName, which must appear in MQTT
	// usernames and SAS audiences; it may carry a :port, and hosts match
	// with or without one. Required.
	HubHostName string
	// TLS holds the server certificate for ListenMQTTTLS. Client
	// certificates are requested but not verified by TLS (X.509 devices
	// may be self-signed and are checked by the backend, see VerifyX509):
	// ClientAuth NoClientCert is raised to RequestClientCert, and a
	// MinVersion below TLS 1.2 to TLS 1.2.
	TLS *tls.Config
	// AllowPlainTCP lets ServeMQTT accept connections that are not TLS.
	// Only for local tests: tokens would cross the network in clear.
	AllowPlainTCP bool
	// Logger receives connection and refusal logs. Default: discard.
	Logger *slog.Logger
	// Now is the clock for token checks. Default: time.Now.
	Now func() time.Time
	// ClockSkew: zero selects DefaultClockSkew; negative means none.
	ClockSkew time.Duration
	// MaxMessageSize bounds a message body. Default: message.MaxSize.
	MaxMessageSize int
	// SessionExpiry: zero selects DefaultSessionExpiry.
	SessionExpiry time.Duration
	// BatchMax bounds one Telemetry call. Default: DefaultBatchMax.
	BatchMax int
	// BackendTimeout bounds each Backend call. Default: DefaultBackendTimeout.
	BackendTimeout time.Duration
	// ConnectTimeout bounds TLS handshake plus CONNECT. Default: DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxKeepAlive caps the keepalive a client asks for in CONNECT, and
	// replaces a keepalive of 0, in whole seconds (at least 1): no
	// connection stays open silent for longer than 1.5 times it.
	// Default: DefaultMaxKeepAlive.
	MaxKeepAlive time.Duration
	// Observer, when set, is told of PUBACKs and of accepted and refused
	// telemetry, for metrics.
	Observer Observer
	// ClientPackets and ClientBytes bound what one device or module
	// connection sends, per second, with a tenth of a second's worth of
	// burst (and at least one message of the largest size): the
	// gateway stops reading from a connection over them and TCP slows the
	// client down; nothing is refused or lost. Edges, which carry the
	// traffic of their whole scope, are not bound. Zero selects
	// DefaultClientPackets and DefaultClientBytes; negative means none.
	ClientPackets float64
	ClientBytes   float64
	// ConnectRate bounds how many connections a second the endpoint
	// starts (TLS handshake and CONNECT), MQTT and WebSocket together,
	// with a tenth of a second's worth of burst; more wait to be
	// accepted. Zero
	// selects DefaultConnectRate; negative means none.
	ConnectRate float64

	// tokenRecheck is how often a SAS connection's expiry is checked
	// against Now, which may jump; zero selects defaultTokenRecheck.
	// Tests shorten it.
	tokenRecheck time.Duration
}

// Server is the device endpoint. Create it with New, serve with ServeMQTT,
// WebSocketHandler and DeviceHTTPHandler, stop it with Shutdown.
type Server struct {
	cfg   Config
	log   *slog.Logger
	skew  time.Duration
	mochi *mqtt.Server

	// accepts holds back connections over Config.ConnectRate; nil: none.
	accepts *rate.Limiter

	// ctx is cancelled by Shutdown; every connection derives from it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loops and connections

	// clients maps *mqtt.Client to its *conn for the hooks.
	clients sync.Map

	shutdownOnce sync.Once
	shutdownErr  error

	// mu guards the following fields.
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]*conn
	direct    map[string]*conn    // client id -> its current connection
	viaEdge   map[string]*session // client id -> session reached through an edge

	statsMu      sync.Mutex
	authFailures map[AuthReason]uint64
}

// New validates cfg, fills defaults and starts the protocol engine.
func New(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("gateway: no backend")
	}
	if cfg.HubHostName == "" {
		return nil, errors.New("gateway: no hub host name")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = message.MaxSize
	}
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = DefaultSessionExpiry
	}
	if cfg.BatchMax <= 0 {
		cfg.BatchMax = DefaultBatchMax
	}
	if cfg.BackendTimeout <= 0 {
		cfg.BackendTimeout = DefaultBackendTimeout
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxKeepAlive <= 0 {
		cfg.MaxKeepAlive = DefaultMaxKeepAlive
	}
	if cfg.ClientPackets == 0 {
		cfg.ClientPackets = DefaultClientPackets
	}
	if cfg.ClientBytes == 0 {
		cfg.ClientBytes = DefaultClientBytes
	}
	if cfg.ConnectRate == 0 {
		cfg.ConnectRate = DefaultConnectRate
	}
	if cfg.tokenRecheck <= 0 {
		cfg.tokenRecheck = defaultTokenRecheck
	}
	if cfg.TLS != nil {
		cfg.TLS = cfg.TLS.Clone()
		if cfg.TLS.ClientAuth == tls.NoClientCert {
			cfg.TLS.ClientAuth = tls.RequestClientCert
		}
		// IoT Hub serves TLS 1.2 and later only; so does every listener
		// of this endpoint, whatever the caller's config allows.
		if cfg.TLS.MinVersion < tls.VersionTLS12 {
			cfg.TLS.MinVersion = tls.VersionTLS12
		}
	}
	s := &Server{
		cfg:          cfg,
		log:          cfg.Logger,
		skew:         cfg.ClockSkew,
		listeners:    map[net.Listener]struct{}{},
		conns:        map[net.Conn]*conn{},
		direct:       map[string]*conn{},
		viaEdge:      map[string]*session{},
		authFailures: map[AuthReason]uint64{},
		accepts:      newLimiter(cfg.ConnectRate, 1),
	}
	switch {
	case s.skew == 0:
		s.skew = DefaultClockSkew
	case s.skew < 0:
		s.skew = 0
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MinimumProtocolVersion = 4 // MQTT 3.1.1, the only version the IoT SDKs use
	caps.MaximumQos = 1
	caps.RetainAvailable = 0
	caps.SharedSubAvailable = 0
	caps.MaximumSessionExpiryInterval = uint32(cfg.SessionExpiry / time.Second)
	// mochi gives every client, even a disconnected session it keeps, an
	// outbound queue of this many slots; the gateway writes to clients
	// directly and never routes through it, so keep it tiny.
	caps.MaximumClientWritesPending = 16
	// Refuse oversize packets from the fixed header, before reading them;
	// the slack is for the topic and its property bag. Bodies between
	// MaxMessageSize and this are refused in OnPacketRead, with a log.
	caps.MaximumPacketSize = uint32(cfg.MaxMessageSize + 64*1024)
	s.mochi = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       s.log.With("component", "mqtt"),
		// $SYS topics are of no use to devices (they may not subscribe)
		// and cost a ReadMemStats each time.
		SysTopicResendInterval: 24 * 60 * 60,
	})
	if err := s.mochi.AddHook(&hook{s: s}, nil); err != nil {
		s.cancel()
		return nil, fmt.Errorf("add mqtt hook: %w", err)
	}
	if err := s.mochi.Serve(); err != nil {
		s.cancel()
		return nil, fmt.Errorf("start mqtt: %w", err)
	}
	return s, nil
}

// ListenMQTTTLS listens on addr with the configured TLS certificate, for
// ServeMQTT.
func (s *Server) ListenMQTTTLS(addr string) (net.Listener, error) {
	if s.cfg.TLS == nil {
		return nil, errors.New("listen mqtt: no tls config")
	}
	l, err := tls.Listen("tcp", addr, s.cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("listen mqtt: %w", err)
	}
	return l, nil
}

// ServeMQTT accepts MQTT connections on l until Shutdown, then returns
// ErrServerClosed. l must yield TLS connections (see ListenMQTTTLS)
// unless Config.AllowPlainTCP is set. ServeMQTT closes l.
func (s *Server) ServeMQTT(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Temporary (e.g. out of file descriptors): back off,
				// as net/http does, rather than spin or give up.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.ctx.Done():
					t.Stop()
					return ErrServerClosed
				}
				continue
			}
			return fmt.Errorf("accept mqtt: %w", err)
		}
		backoff = 0
		transport := "mqtt"
		if _, ok := nc.(*tls.Conn); !ok && !s.cfg.AllowPlainTCP {
			s.log.Error("refusing plain-TCP MQTT connection; serve a TLS listener or set AllowPlainTCP", "remote", nc.RemoteAddr())
			nc.Close()
			continue
		}
		// Past the rate, the next connection waits in the kernel's
		// accept queue: a handshake flood cannot take every CPU.
		if take(s.ctx, s.accepts, 1) != nil || !s.startConn() {
			nc.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			s.serveConn(nc, transport, nil)
		}()
	}
}

// startConn reserves a place in s.wg for a connection, unless closed.
func (s *Server) startConn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// serveConn runs one MQTT connection to its end. peer carries client
// certificates when the transport (WebSocket) terminated TLS itself.
func (s *Server) serveConn(nc net.Conn, transport string, peer *tls.ConnectionState) {
	c := newConn(s, nc, transport, peer)
	g := &connectGuard{Conn: nc} // what mochi reads and hooks name (cl.Net.Conn)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[g] = c
	s.mu.Unlock()

	// mochi sets no deadline before CONNECT; bound the handshake here so
	// a silent socket cannot hold a goroutine. mochi replaces it with the
	// keepalive deadline once the client is authenticated.
	_ = nc.SetDeadline(time.Now().Add(s.cfg.ConnectTimeout))
	err := s.mochi.EstablishConnection(transport, g)
	c.finish(err)

	s.mu.Lock()
	delete(s.conns, g)
	s.mu.Unlock()
}

// maxConnectSize bounds the CONNECT packet. The largest an IoT Hub
// device sends (client id, username with model id, SAS token) is about
// 2 KiB; mochi allocates whatever the fixed header announces, up to the
// MaximumPacketSize meant for messages, before it reads a byte of it.
const maxConnectSize = 16 << 10

var errConnectTooLarge = fmt.Errorf("CONNECT announces more than %d bytes", maxConnectSize)

// connectGuard reads the fixed header of the first packet, the CONNECT,
// as mochi's reads pass through, and ends the connection when it
// announces more than maxConnectSize: an unauthenticated client cannot
// make the server allocate a message's worth for five bytes sent.
type connectGuard struct {
	net.Conn
	n      int // bytes of the fixed header seen
	length int
	mult   int
	done   bool
}

func (g *connectGuard) Read(p []byte) (int, error) {
	n, err := g.Conn.Read(p)
	if g.done {
		return n, err
	}
	for _, b := range p[:n] {
		g.n++
		if g.n == 1 {
			g.mult = 1
			continue // type and flags
		}
		g.length += int(b&0x7f) * g.mult
		g.mult *= 128
		if g.length > maxConnectSize {
			return 0, errConnectTooLarge
		}
		if b&0x80 == 0 || g.n == 5 {
			g.done = true // mochi refuses a malformed length itself
			break
		}
	}
	return n, err
}

// Shutdown stops accepting, drops every connection and waits for all
// connection goroutines (including in-flight backend calls, which see
// their context cancelled) or ctx. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.cancel() // first, so accept loops know the closed listener is no error
		s.mu.Lock()
		s.closed = true
		for l := range s.listeners {
			l.Close()
		}
		conns := make([]*conn, 0, len(s.conns))
		for _, c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.kill("server shutting down")
		}
		done := make(chan struct{})
		go func() {
			s.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			s.shutdownErr = fmt.Errorf("shutdown: %w", ctx.Err())
			return
		}
		if err := s.mochi.Close(); err != nil {
			s.shutdownErr = fmt.Errorf("shutdown: %w", err)
		}
	})
	return s.shutdownErr
}

// Sessions returns the live session of deviceID/moduleID: its own
// connection if it has one, else an edge connection that subscribed on
// its behalf; nil when there is none.
func (s *Server) Sessions(deviceID, moduleID string) Session {
	cid := message.ClientID(deviceID, moduleID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.direct[cid]; c != nil {
		return c.auth.Load().self
	}
	if ss := s.viaEdge[cid]; ss != nil {
		return ss
	}
	return nil
}

// DisconnectIdentity drops the connection of deviceID/moduleID, and ends
// its sessions through edges, for example because the identity was
// disabled or deleted. It returns whether there was anything to end.
func (s *Server) DisconnectIdentity(deviceID, moduleID, reason string) bool {
	cid := message.ClientID(deviceID, moduleID)
	s.mu.Lock()
	var conns []*conn
	for _, c := range s.conns {
		if c.clientID() == cid {
			conns = append(conns, c)
		}
	}
	obo := s.viaEdge[cid]
	s.mu.Unlock()
	for _, c := range conns {
		c.kill(reason)
	}
	if obo != nil {
		obo.Disconnect(reason)
	}
	return len(conns) > 0 || obo != nil
}
