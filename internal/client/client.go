// Package client is Outpost's Go device and module SDK. It speaks the
// Azure IoT Hub device protocol over MQTT 3.1.1 (TLS or WebSocket) to an
// Outpost hub or edge, or to Azure IoT Hub itself: telemetry and module
// outputs, twins, direct methods, cloud-to-device messages and module
// inputs. It reconnects on its own with jittered backoff and renews its
// SAS token by reconnecting, as the Azure SDKs do.
//
// Messages in flight when a connection drops fail with ErrConnectionLost;
// the caller decides whether to send them again, so delivery is
// at-least-once and never silently duplicated by the SDK.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"outpost/internal/backoff"
	"outpost/internal/message"
	"outpost/internal/topic"
)

// Errors a caller can act on. Each says whether retrying can help:
// ErrConnectionLost and ErrNotConnected pass once the link returns,
// ErrClosed never does.
var (
	ErrClosed         = errors.New("client closed")
	ErrNotConnected   = errors.New("not connected")
	ErrConnectionLost = errors.New("connection lost")
)

// MethodHandler answers a direct method. ctx ends when the connection the
// request came on ends. resp should be JSON; nil sends an empty body.
type MethodHandler func(ctx context.Context, name string, payload []byte) (status int, resp []byte)

// feature is a set of subscriptions the client wants.
type feature uint8

const (
	featTwin feature = 1 << iota // twin responses; always on
	featDesired
	featMethods
	featC2D
	featInput
)

// Client is a device or module connection to a hub or gateway.
type Client struct {
	cfg Config
	ep  *endpoint
	log *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the run loop
	rid    atomic.Uint64

	// mu guards the fields below. Never held while blocking on the network.
	mu        sync.Mutex
	sess      *session
	renewing  bool          // the session is being replaced with a fresh token
	changed   chan struct{} // closed and replaced when sess, renewing or closed change
	started   bool
	closed    bool
	closeErr  error
	features  feature
	onDesired func(patch map[string]any, version int64)
	onC2D     func(*message.Message)
	onInput   func(input string, msg *message.Message)
	onConn    func(connected bool, err error)
	methods   map[string]MethodHandler
	twinWait  map[string]chan twinResponse
	raw       []rawSub
}

// New validates cfg and returns a client that is not yet connected.
// Register handlers (On…) before Connect so their subscriptions are made
// with the connection; registering later subscribes then.
func New(cfg Config) (*Client, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	ep, err := newEndpoint(&cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		cfg:      cfg,
		ep:       ep,
		log:      cfg.Logger.With("client", ep.clientID),
		ctx:      ctx,
		cancel:   cancel,
		changed:  make(chan struct{}),
		features: featTwin,
		methods:  make(map[string]MethodHandler),
		twinWait: make(map[string]chan twinResponse),
	}, nil
}

// DeviceID returns the device id from the connection string.
func (c *Client) DeviceID() string { return c.ep.cs.DeviceID }

// ModuleID returns the module id from the connection string, or "".
func (c *Client) ModuleID() string { return c.ep.cs.ModuleID }

// Connect makes the first connection and returns its outcome: a bad key or
// an unreachable host is reported here rather than retried. After it
// succeeds the client reconnects by itself until Close. A caller that must
// start offline calls Connect in a loop with a backoff.Backoff.
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return ErrClosed
	case c.started:
		c.mu.Unlock()
		return errors.New("connect: already connected")
	}
	c.mu.Unlock()
	s, renewAt, err := c.connectOnce(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	c.mu.Lock()
	if c.closed || c.started {
		c.mu.Unlock()
		s.close(false, ErrClosed)
		return errors.New("connect: client closed or connected meanwhile")
	}
	c.started = true
	c.wg.Add(1)
	c.mu.Unlock()
	c.notify(true, nil)
	go c.run(s, renewAt)
	return nil
}

// Close disconnects and waits for the client's goroutines. In-flight
// sends fail with an error wrapping ErrClosed. Do not call it from a
// handler. It is safe to call twice; the second call returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	c.broadcastLocked()
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// Connected reports whether the client has a live connection.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess != nil && c.sess.alive()
}

// WaitConnected blocks until the client has a live connection, or ctx
// ends, or the client is closed.
func (c *Client) WaitConnected(ctx context.Context) error {
	for {
		c.mu.Lock()
		s, closed, ch := c.sess, c.closed, c.changed
		c.mu.Unlock()
		switch {
		case closed:
			return ErrClosed
		case s != nil && s.alive():
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// OnConnectionChange registers a callback for connection up (true, nil)
// and down (false, cause) transitions. Calls come one at a time from the
// client's own goroutine; the callback must not call Close.
func (c *Client) OnConnectionChange(fn func(connected bool, err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onConn = fn
}

func (c *Client) notify(up bool, err error) {
	c.mu.Lock()
	fn := c.onConn
	c.mu.Unlock()
	if up {
		c.log.Info("connected", "addr", c.ep.dialAddr)
	} else {
		c.log.Warn("disconnected", "err", err)
	}
	if fn != nil {
		fn(up, err)
	}
}

func (c *Client) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// session returns the live session. While the token is being renewed it
// waits for the new connection, so a renewal is invisible to senders;
// otherwise a missing connection is ErrNotConnected at once.
func (c *Client) session(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		s, renewing, closed, ch := c.sess, c.renewing, c.closed, c.changed
		c.mu.Unlock()
		switch {
		case closed:
			return nil, ErrClosed
		case s != nil && !renewing:
			return s, nil
		case !renewing:
			return nil, ErrNotConnected
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// dial opens the transport: TLS, or TLS carrying a WebSocket.
func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	tc := c.ep.tlsConfig(&c.cfg)
	if c.cfg.Transport == MQTTWebSocket {
		return dialWebSocket(ctx, c.ep.wsURL, c.ep.dialAddr, tc, c.cfg.Dialer)
	}
	raw, err := c.cfg.Dialer(ctx, "tcp", c.ep.dialAddr)
	if err != nil {
		return nil, err
	}
	conn := tlsClient(raw, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return conn, nil
}

// connectOnce dials, authenticates, installs the session as current and
// waits for its subscriptions to be acknowledged.
func (c *Client) connectOnce(ctx context.Context) (*session, time.Time, error) {
	pw, renewAt, err := c.ep.password(&c.cfg)
	if err != nil {
		return nil, time.Time{}, err
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	s, err := handshake(ctx, sessionConfig{
		conn:      conn,
		log:       c.log,
		clientID:  c.ep.clientID,
		username:  c.ep.username,
		password:  pw,
		keepAlive: c.cfg.KeepAlive,
		window:    c.cfg.MaxInFlight,
		onPub:     c.dispatch,
		onRes:     c.twinResponse,
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	// Subscribing and installing under one lock means a handler
	// registered meanwhile is either in this SUBSCRIBE or sees the
	// session and subscribes itself. Twin requests may go out before the
	// SUBACK: the server handles packets in order.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		s.close(false, ErrClosed)
		return nil, time.Time{}, ErrClosed
	}
	fs, qs := c.filters(c.features)
	for _, r := range c.raw {
		fs, qs = append(fs, r.filter), append(qs, r.qos)
	}
	subAck, err := s.subscribe(fs, qs)
	if err == nil {
		c.sess, c.renewing = s, false
		c.broadcastLocked()
	}
	c.mu.Unlock()
	if err == nil {
		select {
		case err = <-subAck:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		c.drop(s, err, false)
		return nil, time.Time{}, fmt.Errorf("subscribe: %w", err)
	}
	return s, renewAt, nil
}

// drop ends s and forgets it if it is current.
func (c *Client) drop(s *session, cause error, graceful bool) error {
	err := s.close(graceful, cause)
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
		c.broadcastLocked()
	}
	c.mu.Unlock()
	return err
}

// filters returns the subscriptions for a feature set.
func (c *Client) filters(f feature) ([]string, []byte) {
	var fs []string
	var qs []byte
	add := func(filter string, qos byte) { fs = append(fs, filter); qs = append(qs, qos) }
	d, m := c.ep.cs.DeviceID, c.ep.cs.ModuleID
	if f&featTwin != 0 {
		add(topic.FilterTwinResponses, 0)
	}
	if f&featDesired != 0 {
		add(topic.FilterTwinDesired, 0)
	}
	if f&featMethods != 0 {
		add(topic.FilterMethods, 0)
	}
	if f&featC2D != 0 {
		add(topic.C2DFilter(d), 1)
	}
	if f&featInput != 0 && m != "" {
		add(topic.ModuleInputFilter(d, m), 1)
	}
	return fs, qs
}

// want records a feature and subscribes on the live session if the
// feature is new.
func (c *Client) want(f feature) {
	c.mu.Lock()
	if c.features&f != 0 {
		c.mu.Unlock()
		return
	}
	c.features |= f
	s := c.sess
	c.mu.Unlock()
	if s == nil {
		return // the next connection subscribes
	}
	fs, qs := c.filters(f)
	if len(fs) == 0 {
		return
	}
	// The SUBACK is not awaited: the callers have no error to return; the
	// session's reader logs a refusal.
	if _, err := s.subscribe(fs, qs); err != nil {
		c.log.Debug("subscribe on a dying session", "err", err)
	}
}

// run owns the connection from the first success until Close: it watches
// the session, renews the token before expiry and reconnects with backoff.
func (c *Client) run(s *session, renewAt time.Time) {
	defer c.wg.Done()
	var b backoff.Backoff
	for {
		var renew <-chan time.Time
		stop := func() bool { return false }
		if !renewAt.IsZero() {
			t := time.NewTimer(max(renewAt.Sub(c.cfg.Now()), 0))
			renew, stop = t.C, t.Stop
		}
		var lost error
		select {
		case <-c.ctx.Done():
			stop()
			err := c.drop(s, ErrClosed, true)
			c.mu.Lock()
			c.closeErr = err
			c.mu.Unlock()
			c.notify(false, ErrClosed)
			return
		case <-s.done:
			stop()
			lost = s.Err()
			c.drop(s, lost, false)
		case <-renew:
			s2, r2, err := c.renew(s)
			if err == nil {
				s, renewAt = s2, r2
				continue
			}
			lost = err
		}
		c.notify(false, lost)
		for {
			if b.Wait(c.ctx) != nil {
				c.mu.Lock()
				c.closeErr = nil
				c.mu.Unlock()
				return
			}
			ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
			s2, r2, err := c.connectOnce(ctx)
			cancel()
			if err == nil {
				b.Reset()
				s, renewAt = s2, r2
				c.notify(true, nil)
				break
			}
			c.log.Debug("reconnect failed", "err", err)
		}
	}
}

// renew replaces s with a connection using a fresh token. Senders wait
// meanwhile; the messages already in flight are given time to be
// acknowledged first, so a renewal does not fail them.
func (c *Client) renew(s *session) (*session, time.Time, error) {
	c.mu.Lock()
	c.renewing = true
	c.broadcastLocked()
	c.mu.Unlock()
	c.log.Debug("renewing sas token")

	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	for i := 0; i < cap(s.window); i++ {
		if s.acquire(ctx) != nil {
			break
		}
	}
	cancel()
	c.drop(s, errRenewing, true)

	ctx, cancel = context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	s2, r2, err := c.connectOnce(ctx)
	if err != nil {
		c.mu.Lock()
		c.renewing = false
		c.broadcastLocked()
		c.mu.Unlock()
		return nil, time.Time{}, err
	}
	return s2, r2, nil
}

var errRenewing = errors.New("renewing sas token")
