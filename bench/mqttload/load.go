package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"outpost/internal/mqttwire"
)

// Cred is one client's identity, as read from a --creds JSON lines file.
type Cred struct {
	ClientID string `json:"clientId"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// Config describes one load run.
type Config struct {
	Addr      string
	TLS       *tls.Config // nil for plain TCP
	Creds     []Cred      // one per client
	Topic     string      // template; {id} becomes the client id
	Size      int         // payload bytes
	QoS       byte        // 0 or 1
	Inflight  int         // QoS 1 PUBLISHes outstanding per client
	Count     int         // messages per client; 0 means until Duration
	Duration  time.Duration
	Clean     bool
	Keepalive time.Duration
	Timeout   time.Duration // connect, and longest wait for any ack
}

// Result is what a run measured. Latencies are PUBLISH-written to
// PUBACK-read, per message, in microseconds.
type Result struct {
	Label      string  `json:"label,omitempty"`
	Addr       string  `json:"addr"`
	Clients    int     `json:"clients"`
	Inflight   int     `json:"inflight"`
	Size       int     `json:"size"`
	QoS        byte    `json:"qos"`
	Acked      uint64  `json:"acked"`
	Seconds    float64 `json:"seconds"`
	MsgsPerSec float64 `json:"msgsPerSec"`
	P50us      float64 `json:"p50us"`
	P90us      float64 `json:"p90us"`
	P99us      float64 `json:"p99us"`
	MaxUs      float64 `json:"maxUs"`
}

func (c *Config) validate() error {
	switch {
	case c.Addr == "":
		return errors.New("no address")
	case len(c.Creds) == 0:
		return errors.New("no clients")
	case c.QoS > 1:
		return fmt.Errorf("qos %d: only 0 and 1 are supported", c.QoS)
	case c.QoS == 1 && (c.Inflight < 1 || c.Inflight > 65535):
		return fmt.Errorf("inflight %d: must be 1..65535", c.Inflight)
	case c.Size < 0:
		return errors.New("negative size")
	case (c.Count > 0) == (c.Duration > 0):
		return errors.New("give exactly one of count and duration")
	case c.Timeout <= 0 || c.Keepalive <= 0:
		return errors.New("timeout and keepalive must be positive")
	}
	return nil
}

// run connects every client, releases them together, and returns once
// every client has had all its messages acked (or one failed).
func run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	payload := make([]byte, cfg.Size)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}

	clients := make([]*client, len(cfg.Creds))
	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	for i, cr := range cfg.Creds {
		wg.Go(func() {
			clients[i], errs[i] = dial(ctx, cfg, cr, payload)
		})
	}
	wg.Wait()
	if err := firstErr(errs); err != nil {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
		return Result{}, err
	}

	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	if cfg.Duration > 0 {
		t := time.AfterFunc(cfg.Duration, halt)
		defer t.Stop()
	}
	// A cancelled context stops sending; what was sent is still drained.
	go func() {
		select {
		case <-ctx.Done():
			halt()
		case <-stop:
		}
	}()
	defer halt()

	start := time.Now()
	for _, c := range clients {
		wg.Go(func() { c.err = c.publish(start, stop) })
	}
	wg.Wait()

	var h histogram
	var end time.Time
	for i, c := range clients {
		errs[i] = c.err
		h.merge(&c.hist)
		if c.last.After(end) {
			end = c.last
		}
	}
	if err := firstErr(errs); err != nil {
		return Result{}, err
	}
	secs := end.Sub(start).Seconds()
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()/100) / 10 }
	res := Result{
		Addr: cfg.Addr, Clients: len(clients), Inflight: cfg.Inflight, Size: cfg.Size, QoS: cfg.QoS,
		Acked: h.n, Seconds: secs,
		P50us: us(h.quantile(0.50)), P90us: us(h.quantile(0.90)), P99us: us(h.quantile(0.99)), MaxUs: us(time.Duration(h.max)),
	}
	if cfg.QoS == 0 {
		res.Inflight = 0
	}
	if secs > 0 {
		res.MsgsPerSec = float64(h.n) / secs
	}
	return res, nil
}

// firstErr reports the first failure and how many clients failed: ten
// copies of "connection refused" say no more than one.
func firstErr(errs []error) error {
	var first error
	n := 0
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("%w (and %d more clients failed)", first, n-1)
	}
	return first
}

// maxInbound bounds what we read from a broker: a publisher only ever
// receives CONNACK, PUBACK and PINGRESP, so anything large is a broken peer.
const maxInbound = 1 << 16

// client is one MQTT connection. Its writer (publish) owns the window and
// its reader goroutine (readAcks) releases slots as PUBACKs arrive.
type client struct {
	cfg  Config
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	pub  mqttwire.PublishTemplate

	// sent[id] is the time the PUBLISH with that packet id was written, in
	// nanoseconds since start; atomics because the reader reads them.
	sent [65536]atomic.Int64

	// Set by publish before it returns.
	hist histogram
	last time.Time
	err  error
}

func dial(ctx context.Context, cfg Config, cr Cred, payload []byte) (*client, error) {
	d := net.Dialer{Timeout: cfg.Timeout}
	var conn net.Conn
	var err error
	if cfg.TLS != nil {
		td := tls.Dialer{NetDialer: &d, Config: cfg.TLS}
		conn, err = td.DialContext(ctx, "tcp", cfg.Addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", cfg.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("client %s: dial: %w", cr.ClientID, err)
	}
	c := &client{
		cfg:  cfg,
		conn: conn,
		r:    bufio.NewReaderSize(conn, 32<<10),
		w:    bufio.NewWriterSize(conn, 32<<10),
		pub:  mqttwire.NewPublishTemplate(strings.ReplaceAll(cfg.Topic, "{id}", cr.ClientID), payload, cfg.QoS),
	}
	if err := c.connect(cr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("client %s: %w", cr.ClientID, err)
	}
	return c, nil
}

func (c *client) connect(cr Cred) error {
	ka := uint16(min(c.cfg.Keepalive/time.Second, 65535))
	c.conn.SetDeadline(time.Now().Add(c.cfg.Timeout))
	defer c.conn.SetDeadline(time.Time{})
	if _, err := c.conn.Write(mqttwire.AppendConnect(nil, cr.ClientID, cr.Username, cr.Password, ka, c.cfg.Clean)); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	var p mqttwire.Packet
	if err := p.Read(c.r, nil, maxInbound); err != nil {
		return fmt.Errorf("read connack: %w", err)
	}
	if p.Type != mqttwire.TypeConnack {
		return fmt.Errorf("%w: expected CONNACK, got type %d", mqttwire.ErrMalformed, p.Type)
	}
	if p.Code != 0 {
		return &mqttwire.RefusedError{Code: p.Code}
	}
	return nil
}

// publish sends messages until the count is reached or stop is closed,
// keeping at most cfg.Inflight unacknowledged, then waits for the last
// acks and disconnects.
func (c *client) publish(start time.Time, stop <-chan struct{}) error {
	if c.cfg.QoS == 0 {
		defer c.conn.Close()
		return c.publishQoS0(stop)
	}

	// window holds one token per PUBLISH in flight.
	window := make(chan struct{}, c.cfg.Inflight)
	readerExit := make(chan struct{})
	var readerErr error // set before readerExit is closed
	var closing atomic.Bool
	go func() {
		defer close(readerExit)
		readerErr = c.readAcks(start, window, &closing)
	}()
	// The reader writes hist and last: it must be gone before we return.
	defer func() {
		c.conn.Close()
		<-readerExit
	}()

	ping := time.NewTicker(c.cfg.Keepalive / 2)
	defer ping.Stop()
	// acquire takes a window slot, flushing first if it has to wait so that
	// the broker sees what it must ack. done means stop was closed.
	acquire := func(stopping <-chan struct{}) (done bool, err error) {
		select {
		case window <- struct{}{}:
			return false, nil
		default:
		}
		c.conn.SetWriteDeadline(time.Now().Add(c.cfg.Timeout))
		if err := c.w.Flush(); err != nil {
			return false, fmt.Errorf("write: %w", err)
		}
		deadline := time.NewTimer(c.cfg.Timeout)
		defer deadline.Stop()
		for {
			select {
			case window <- struct{}{}:
				return false, nil
			case <-stopping:
				return true, nil
			case <-readerExit:
				if readerErr == nil {
					return false, errors.New("connection closed by broker")
				}
				return false, readerErr
			case <-deadline.C:
				return false, fmt.Errorf("no PUBACK within %v", c.cfg.Timeout)
			case <-ping.C:
				// Only reached while the window is stuck: keep the session alive.
				c.w.Write(mqttwire.AppendPingreq(nil))
				if err := c.w.Flush(); err != nil {
					return false, fmt.Errorf("write: %w", err)
				}
			}
		}
	}

	var id uint16
send:
	for n := 0; c.cfg.Count == 0 || n < c.cfg.Count; n++ {
		select {
		case <-stop:
			break send
		default:
		}
		if done, err := acquire(stop); err != nil {
			return err
		} else if done {
			break send
		}
		id++
		if id == 0 {
			id = 1 // packet id 0 is not allowed [MQTT-2.3.1-1]
		}
		// With at most Inflight < 65536 outstanding and PUBACKs in order
		// [MQTT-4.6.0-2], a reused id is never still in flight.
		c.sent[id].Store(int64(time.Since(start)))
		if n%1024 == 0 {
			c.conn.SetWriteDeadline(time.Now().Add(c.cfg.Timeout))
		}
		if _, err := c.w.Write(c.pub.Packet(id)); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
	// Filling the whole window means every PUBLISH has been acked.
	for range c.cfg.Inflight {
		if _, err := acquire(nil); err != nil {
			return err
		}
	}
	closing.Store(true)
	c.conn.SetWriteDeadline(time.Now().Add(c.cfg.Timeout))
	c.w.Write(mqttwire.AppendDisconnect(nil))
	c.w.Flush()
	return nil
}

// readAcks runs until the connection closes. It records each PUBACK's
// latency and frees its window slot.
func (c *client) readAcks(start time.Time, window <-chan struct{}, closing *atomic.Bool) error {
	buf := make([]byte, 16)
	var p mqttwire.Packet
	for {
		if err := p.Read(c.r, buf, maxInbound); err != nil {
			if closing.Load() {
				return nil
			}
			return fmt.Errorf("read: %w", err)
		}
		switch p.Type {
		case mqttwire.TypePuback:
			id := p.ID
			now := time.Since(start)
			c.hist.record(now - time.Duration(c.sent[id].Load()))
			c.last = start.Add(now)
			select {
			case <-window:
			default:
				return fmt.Errorf("%w: PUBACK %d with nothing in flight", mqttwire.ErrMalformed, id)
			}
		case mqttwire.TypePingresp:
		default:
			return fmt.Errorf("%w: unexpected packet type %d", mqttwire.ErrMalformed, p.Type)
		}
	}
}

func (c *client) publishQoS0(stop <-chan struct{}) error {
send:
	for n := 0; c.cfg.Count == 0 || n < c.cfg.Count; n++ {
		select {
		case <-stop:
			break send
		default:
		}
		if n%1024 == 0 {
			c.conn.SetWriteDeadline(time.Now().Add(c.cfg.Timeout))
		}
		if _, err := c.w.Write(c.pub.Packet(0)); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		c.hist.n++ // counted as sent: QoS 0 has no ack and no latency
	}
	c.w.Write(mqttwire.AppendDisconnect(nil))
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	c.last = time.Now()
	return nil
}
