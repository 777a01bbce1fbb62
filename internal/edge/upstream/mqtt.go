package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"outpost/internal/mqttwire"
)

var (
	errConnClosed = errors.New("connection closed")
	errNoIDs      = errors.New("no free packet ids")
)

// dialError marks a failure to reach the parent at the TCP level, the only
// failure a cheap TCP probe can tell has gone away.
type dialError struct{ err error }

func (e *dialError) Error() string { return "dial: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// RefusedError is a CONNACK with a non-zero return code.
type RefusedError = mqttwire.RefusedError

// The link speaks the small part of MQTT 3.1.1 an IoT Hub device needs,
// through mqttwire rather than an MQTT client library, so that it
// controls exactly when a PUBACK goes out (a C2D is acked only after the
// child acked it) and how writes are batched.

// maxPacket is the hub's limit on a packet it reads (gateway's
// MaximumPacketSize): a 256 KiB message plus room for its topic and
// property bag. The drain sets aside what would exceed it.
const maxPacket = 256*1024 + 64*1024

// maxRead bounds what the link reads from its parent. That is more than
// maxPacket: the reply to sync-identities carries every identity in the
// edge's scope at once, about 720 bytes each (1,000 children: 721 KB),
// so 64 MiB holds some 90,000. The bound only stops a broken parent,
// which TLS has already authenticated, from making the edge allocate up
// to MQTT's 256 MiB.
const maxRead = 64 << 20

// maxPendingWrite is how much encoded output may wait for the socket
// before writers block, which pushes back on the drain when the link is
// slower than the store.
const maxPendingWrite = 1 << 20

// mconn is one MQTT connection. Writes are gathered in a buffer that one
// flusher goroutine writes out, so many small publishes share TLS records
// and syscalls; one reader goroutine decodes what the server sends.
type mconn struct {
	nc        net.Conn
	br        *bufio.Reader
	keepAlive time.Duration
	onPublish func(mqttwire.Packet) // runs on the reader goroutine

	done chan struct{} // closed when the connection ends
	wake chan struct{} // output is pending
	wg   sync.WaitGroup

	lastRead  atomic.Int64 // unix nanoseconds
	lastWrite atomic.Int64

	mu sync.Mutex
	// mu guards the following fields.
	space   *sync.Cond // signalled when out shrinks or the conn ends
	out     []byte
	spare   []byte
	nextID  uint16
	waiting map[uint16]chan<- error // PUBACK, SUBACK and UNSUBACK waiters
	// refused holds, by packet id, why the parent refused a publish for
	// good; its PUBACK, which follows, resolves the waiter with it.
	refused map[uint16]error
	err     error // why the connection ended
}

// connectParams is what dialMQTT needs to open a connection.
type connectParams struct {
	addr      string
	tls       *tls.Config
	clientID  string
	username  string
	password  string
	keepAlive time.Duration
	timeout   time.Duration
}

// dialMQTT dials, handshakes TLS and exchanges CONNECT/CONNACK. The
// connection's goroutines start with start.
func dialMQTT(ctx context.Context, p connectParams) (*mconn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, &dialError{err}
	}
	tc := tls.Client(raw, p.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	dl, _ := ctx.Deadline()
	_ = tc.SetDeadline(dl)
	ka := uint16(min((p.keepAlive+time.Second-1)/time.Second, 65535))
	if _, err := tc.Write(mqttwire.AppendConnect(nil, p.clientID, p.username, p.password, ka, true)); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("send connect: %w", err)
	}
	br := bufio.NewReaderSize(tc, 64<<10)
	var ack mqttwire.Packet
	if err := ack.Read(br, nil, maxPacket); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("read connack: %w", err)
	}
	if ack.Type != mqttwire.TypeConnack {
		_ = tc.Close()
		return nil, fmt.Errorf("read connack: got packet type %d", ack.Type)
	}
	if ack.Code != 0 {
		_ = tc.Close()
		return nil, &RefusedError{Code: ack.Code}
	}
	_ = tc.SetDeadline(time.Time{})
	c := &mconn{
		nc:        tc,
		br:        br,
		keepAlive: p.keepAlive,
		done:      make(chan struct{}),
		wake:      make(chan struct{}, 1),
		waiting:   make(map[uint16]chan<- error),
	}
	c.space = sync.NewCond(&c.mu)
	now := time.Now().UnixNano()
	c.lastRead.Store(now)
	c.lastWrite.Store(now)
	return c, nil
}

// start runs the reader and flusher; onPublish receives inbound PUBLISHes.
func (c *mconn) start(onPublish func(mqttwire.Packet)) {
	c.onPublish = onPublish
	c.wg.Add(2)
	go c.readLoop()
	go c.flushLoop()
}

// fail ends the connection once, failing every waiter.
func (c *mconn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	waiting := c.waiting
	c.waiting = nil
	c.refused = nil
	c.out = nil
	c.space.Broadcast()
	c.mu.Unlock()
	close(c.done)
	_ = c.nc.Close()
	for _, ch := range waiting {
		ch <- fmt.Errorf("%w: %v", errConnClosed, err)
	}
}

// Err returns why the connection ended, nil while it is up.
func (c *mconn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// close ends the connection, sending DISCONNECT first when graceful, and
// waits for its goroutines.
func (c *mconn) close(graceful bool) {
	if graceful && c.Err() == nil {
		_ = c.nc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		_, _ = c.nc.Write(mqttwire.AppendDisconnect(nil))
	}
	c.fail(errConnClosed)
	c.wg.Wait()
}

func (c *mconn) readLoop() {
	defer c.wg.Done()
	for {
		// The deadline catches a link that went silent: the flusher pings
		// after half the keepalive, so a live server always answers in time.
		if c.br.Buffered() == 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.keepAlive))
		}
		// A nil buffer: each payload is fresh, for onPublish to keep.
		var p mqttwire.Packet
		if err := p.Read(c.br, nil, maxRead); err != nil {
			c.fail(fmt.Errorf("read: %w", err))
			return
		}
		c.lastRead.Store(time.Now().UnixNano())
		switch p.Type {
		case mqttwire.TypePuback, mqttwire.TypeUnsuback:
			c.resolve(p.ID, nil)
		case mqttwire.TypeSuback:
			var err error
			for _, code := range p.Codes {
				if code == 0x80 {
					err = errors.New("subscription refused")
				}
			}
			c.resolve(p.ID, err)
		case mqttwire.TypePublish:
			c.onPublish(p)
		case mqttwire.TypePingresp:
		default:
			c.fail(fmt.Errorf("unexpected packet type %d", p.Type))
			return
		}
	}
}

func (c *mconn) resolve(id uint16, err error) {
	c.mu.Lock()
	ch := c.waiting[id]
	delete(c.waiting, id)
	if r, ok := c.refused[id]; ok {
		delete(c.refused, id)
		if err == nil {
			err = r
		}
	}
	c.mu.Unlock()
	if ch != nil {
		ch <- err
	}
}

// markRefused records that the parent refused publish id for good, for
// the PUBACK that follows the notice. Only the reader goroutine calls
// it, so the mark is in place before that PUBACK is read.
func (c *mconn) markRefused(id uint16, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiting[id] == nil {
		return // nothing of ours awaits it
	}
	if c.refused == nil {
		c.refused = map[uint16]error{}
	}
	c.refused[id] = err
}

func (c *mconn) flushLoop() {
	defer c.wg.Done()
	tick := time.NewTicker(c.keepAlive / 4)
	defer tick.Stop()
	var lastPing time.Time
	for {
		select {
		case <-c.done:
			return
		case <-c.wake:
		case now := <-tick.C:
			half := c.keepAlive / 2
			idle := now.Sub(time.Unix(0, c.lastWrite.Load())) >= half ||
				now.Sub(time.Unix(0, c.lastRead.Load())) >= half
			if idle && now.Sub(lastPing) >= half {
				lastPing = now
				// Not write: the flusher must never wait for room it frees.
				c.mu.Lock()
				c.out = mqttwire.AppendPingreq(c.out)
				c.mu.Unlock()
			}
		}
		for {
			c.mu.Lock()
			buf := c.out
			c.out = c.spare[:0]
			c.spare = nil
			c.space.Broadcast()
			c.mu.Unlock()
			if len(buf) == 0 {
				break
			}
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.keepAlive))
			if _, err := c.nc.Write(buf); err != nil {
				c.fail(fmt.Errorf("write: %w", err))
				return
			}
			c.lastWrite.Store(time.Now().UnixNano())
			if cap(buf) <= 4*maxPendingWrite {
				c.mu.Lock()
				c.spare = buf[:0]
				c.mu.Unlock()
			}
		}
	}
}

// waitSpaceLocked waits for room in the output buffer; the caller holds mu.
func (c *mconn) waitSpaceLocked() error {
	for c.err == nil && len(c.out) >= maxPendingWrite {
		c.space.Wait()
	}
	return c.err
}

func (c *mconn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// write appends encoded packets to the output.
func (c *mconn) write(enc func([]byte) []byte) error {
	c.mu.Lock()
	if err := c.waitSpaceLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	c.out = enc(c.out)
	c.mu.Unlock()
	c.signal()
	return nil
}

// allocLocked reserves a packet id whose outcome goes to ch.
func (c *mconn) allocLocked(ch chan<- error) (uint16, error) {
	if len(c.waiting) >= 65535 {
		return 0, errNoIDs
	}
	for {
		c.nextID++
		if c.nextID != 0 && c.waiting[c.nextID] == nil {
			c.waiting[c.nextID] = ch
			return c.nextID, nil
		}
	}
}

// publish1 sends a QoS 1 PUBLISH; ch (buffered) receives nil on PUBACK or
// the error that ended the connection, exactly once.
func (c *mconn) publish1(topic string, payload []byte, ch chan<- error) error {
	if err := mqttwire.CheckPublish(topic, payload); err != nil {
		return err // written, it would break the stream for every later packet
	}
	c.mu.Lock()
	if err := c.waitSpaceLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	id, err := c.allocLocked(ch)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.out = mqttwire.AppendPublish(c.out, topic, 1, id, payload)
	c.mu.Unlock()
	c.signal()
	return nil
}

// publish0 sends a QoS 0 PUBLISH.
func (c *mconn) publish0(topic string, payload []byte) error {
	if err := mqttwire.CheckPublish(topic, payload); err != nil {
		return err
	}
	return c.write(func(b []byte) []byte { return mqttwire.AppendPublish(b, topic, 0, 0, payload) })
}

// puback acknowledges an inbound QoS 1 PUBLISH.
func (c *mconn) puback(id uint16) error {
	return c.write(func(b []byte) []byte { return mqttwire.AppendPuback(b, id) })
}

// request sends a SUBSCRIBE or UNSUBSCRIBE that enc appends for a fresh
// id and waits for its ack.
func (c *mconn) request(ctx context.Context, enc func(b []byte, id uint16) []byte) error {
	ch := make(chan error, 1)
	c.mu.Lock()
	if err := c.waitSpaceLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	id, err := c.allocLocked(ch)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.out = enc(c.out, id)
	c.mu.Unlock()
	c.signal()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *mconn) subscribe(ctx context.Context, filters []string, qos []byte) error {
	return c.request(ctx, func(b []byte, id uint16) []byte {
		return mqttwire.AppendSubscribe(b, id, filters, qos)
	})
}

func (c *mconn) unsubscribe(ctx context.Context, filters []string) error {
	return c.request(ctx, func(b []byte, id uint16) []byte {
		return mqttwire.AppendUnsubscribe(b, id, filters)
	})
}
