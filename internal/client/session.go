package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// The session layer is our own: paho's client leaves QoS 1 publishes
// pending forever when a clean-session-0 connection drops (it means to
// resend them itself), its Disconnect may return before its goroutines
// end, and it has no bound on messages awaiting PUBACK. Only paho's wire
// codec is used.

// maxInbound bounds what the client accepts from the server in one
// packet: the largest message plus room for topics and twin documents.
const maxInbound = 1 << 20

// ConnectError is a CONNACK that refused the connection. Codes 4 (bad
// username or password) and 5 (not authorized) will not go away by
// retrying with the same credentials.
type ConnectError struct{ Code byte }

func (e *ConnectError) Error() string {
	if err := packets.ConnErrors[e.Code]; err != nil {
		return fmt.Sprintf("connection refused (code %d): %v", e.Code, err)
	}
	return fmt.Sprintf("connection refused (code %d)", e.Code)
}

// Retryable reports whether the same credentials may succeed later (the
// server was unavailable) rather than being refused outright. The client's
// own reconnect loop retries either way, because an identity can be
// re-enabled while the client runs.
func (e *ConnectError) Retryable() bool {
	return e.Code != packets.ErrRefusedBadUsernameOrPassword && e.Code != packets.ErrRefusedNotAuthorised
}

type ack struct {
	ch   chan error // buffered 1; receives exactly one value
	slot bool       // holds a slot of the in-flight window
}

// session is one MQTT connection. Its reader, writer, pinger and
// dispatcher goroutines all end when done is closed; wg waits for them.
type session struct {
	conn   net.Conn
	log    *slog.Logger
	onPub  func(s *session, p *packets.PublishPacket) bool // runs on the dispatcher; false: do not ack
	onRes  func(p *packets.PublishPacket) bool             // runs on the reader; true if handled
	ka     time.Duration
	out    chan packets.ControlPacket
	window chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup
	// ctx ends with the session; method handlers get it.
	ctx            context.Context
	cancel         context.CancelFunc
	sentDisconnect chan struct{}

	mu      sync.Mutex // guards the fields below
	err     error
	nextID  uint16
	acks    map[uint16]ack
	inbound []*packets.PublishPacket
	wake    chan struct{} // signals the dispatcher that inbound grew
	pingOut bool
}

type sessionConfig struct {
	conn      net.Conn
	log       *slog.Logger
	clientID  string
	username  string
	password  string
	keepAlive time.Duration
	window    int
	onPub     func(s *session, p *packets.PublishPacket) bool
	onRes     func(p *packets.PublishPacket) bool
}

// handshake sends CONNECT and waits for CONNACK, then starts the session's
// goroutines. The conn is closed on error.
func handshake(ctx context.Context, c sessionConfig) (*session, error) {
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName = "MQTT"
	cp.ProtocolVersion = 4
	cp.CleanSession = false // the hub keeps subscriptions and queued C2D
	cp.ClientIdentifier = c.clientID
	cp.Keepalive = uint16(c.keepAlive / time.Second)
	cp.UsernameFlag = true
	cp.Username = c.username
	if c.password != "" {
		cp.PasswordFlag = true
		cp.Password = []byte(c.password)
	}
	br := bufio.NewReaderSize(c.conn, 16<<10)
	bw := bufio.NewWriterSize(c.conn, 16<<10)
	fail := func(err error) (*session, error) {
		c.conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if err := cp.Write(bw); err != nil {
		return fail(fmt.Errorf("send connect: %w", err))
	}
	if err := bw.Flush(); err != nil {
		return fail(fmt.Errorf("send connect: %w", err))
	}
	p, err := readPacket(br)
	if err != nil {
		return fail(fmt.Errorf("read connack: %w", err))
	}
	ca, ok := p.(*packets.ConnackPacket)
	if !ok {
		return fail(fmt.Errorf("read connack: got %T", p))
	}
	if ca.ReturnCode != packets.Accepted {
		return fail(&ConnectError{Code: ca.ReturnCode})
	}
	if err := c.conn.SetDeadline(time.Time{}); err != nil {
		return fail(err)
	}
	if !stop() { // ctx ended while we finished: the deadline may be set
		return fail(ctx.Err())
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &session{
		conn:           c.conn,
		log:            c.log,
		onPub:          c.onPub,
		onRes:          c.onRes,
		ka:             c.keepAlive,
		out:            make(chan packets.ControlPacket, 256),
		window:         make(chan struct{}, c.window),
		done:           make(chan struct{}),
		ctx:            sctx,
		cancel:         cancel,
		sentDisconnect: make(chan struct{}),
		acks:           make(map[uint16]ack),
		wake:           make(chan struct{}, 1),
	}
	s.wg.Add(4)
	go s.readLoop(br)
	go s.writeLoop(bw)
	go s.pingLoop()
	go s.dispatchLoop()
	return s, nil
}

// readPacket reads one packet, refusing sizes beyond maxInbound before
// allocating them.
func readPacket(br *bufio.Reader) (packets.ControlPacket, error) {
	// Remaining length is a varint of up to 4 bytes after the type byte;
	// peek byte by byte because a short packet may be all there is.
	n, mult := 0, 1
	for i := 1; i <= 4; i++ {
		b, err := br.Peek(i + 1)
		if err != nil {
			return nil, err
		}
		n += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			break
		}
		if i == 4 {
			return nil, errors.New("malformed remaining length")
		}
		mult *= 128
	}
	if n > maxInbound {
		return nil, fmt.Errorf("packet of %d bytes exceeds limit", n)
	}
	return packets.ReadPacket(br)
}

// fail ends the session with err (the first error wins), fails every
// waiter and closes the connection.
func (s *session) fail(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = fmt.Errorf("%w: %w", ErrConnectionLost, err)
	s.cancel()
	for id, a := range s.acks {
		a.ch <- s.err
		delete(s.acks, id)
	}
	s.inbound = nil
	s.mu.Unlock()
	close(s.done)
	s.conn.Close()
}

// alive reports whether the session has not ended.
func (s *session) alive() bool { return s.Err() == nil }

// Err returns why the session ended, or nil while it is up.
func (s *session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// close ends the session with cause, sending DISCONNECT first when
// graceful, and waits for its goroutines. It returns an error when a
// graceful close could not send the DISCONNECT.
func (s *session) close(graceful bool, cause error) error {
	if graceful {
		t := time.NewTimer(2 * time.Second)
		select {
		case s.out <- packets.NewControlPacket(packets.Disconnect):
			select {
			case <-s.sentDisconnect:
			case <-s.done: // the server may hang up as soon as it reads it
			case <-t.C:
			}
		case <-s.done:
		case <-t.C:
		}
		t.Stop()
	}
	s.fail(cause)
	s.wg.Wait()
	if !graceful {
		return nil
	}
	select {
	case <-s.sentDisconnect: // the writer closes it before it ends
		return nil
	default:
		return errors.New("disconnect: not sent")
	}
}

func (s *session) readLoop(br *bufio.Reader) {
	defer s.wg.Done()
	for {
		p, err := readPacket(br)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			s.fail(fmt.Errorf("read: %w", err))
			return
		}
		switch p := p.(type) {
		case *packets.PubackPacket:
			s.complete(p.MessageID, nil)
		case *packets.SubackPacket:
			var err error
			for _, rc := range p.ReturnCodes {
				if rc == 0x80 {
					err = errors.New("subscription refused")
				}
			}
			if err != nil {
				s.log.Warn("subscription refused", "packet", p.MessageID)
			}
			s.complete(p.MessageID, err)
		case *packets.PingrespPacket:
			s.mu.Lock()
			s.pingOut = false
			s.mu.Unlock()
		case *packets.PublishPacket:
			if p.Qos > 1 {
				s.fail(errors.New("protocol error: QoS 2 publish"))
				return
			}
			if p.Qos == 0 && s.onRes != nil && s.onRes(p) {
				continue
			}
			s.mu.Lock()
			if s.err == nil {
				s.inbound = append(s.inbound, p)
			}
			s.mu.Unlock()
			select {
			case s.wake <- struct{}{}:
			default:
			}
		default:
			s.fail(fmt.Errorf("protocol error: unexpected %T", p))
			return
		}
	}
}

func (s *session) writeLoop(bw *bufio.Writer) {
	defer s.wg.Done()
	for {
		select {
		case p := <-s.out:
			if err := p.Write(bw); err != nil {
				s.fail(fmt.Errorf("write: %w", err))
				return
			}
			_, last := p.(*packets.DisconnectPacket)
			// Flush only when nothing else is queued, so pipelined
			// publishes share TCP segments and TLS records.
			if len(s.out) == 0 || last {
				if err := bw.Flush(); err != nil {
					s.fail(fmt.Errorf("write: %w", err))
					return
				}
			}
			if last {
				close(s.sentDisconnect)
				return
			}
		case <-s.done:
			return
		}
	}
}

// pingLoop sends PINGREQ every half keepalive; a PINGREQ still unanswered
// at the next tick means the link is dead.
func (s *session) pingLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.ka / 2)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.mu.Lock()
			dead := s.pingOut
			s.pingOut = true
			s.mu.Unlock()
			if dead {
				s.fail(errors.New("keepalive timeout"))
				return
			}
			if s.enqueue(packets.NewControlPacket(packets.Pingreq)) != nil {
				return
			}
		case <-s.done:
			return
		}
	}
}

// dispatchLoop hands inbound publishes to the client one at a time, in
// order, and acknowledges QoS 1 ones after the handler returned, so PUBACK
// order equals PUBLISH order [MQTT-4.6.0-2] and a message is acked only
// once handled. A message nobody handles is not acked: the server keeps
// it for a later connection. The queue is unbounded so the
// reader never blocks behind a handler: a handler that sends telemetry
// needs the reader to see its PUBACK.
func (s *session) dispatchLoop() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		var p *packets.PublishPacket
		if len(s.inbound) > 0 {
			p = s.inbound[0]
			s.inbound[0] = nil
			s.inbound = s.inbound[1:]
		}
		s.mu.Unlock()
		if p == nil {
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		if s.onPub(s, p) && p.Qos == 1 {
			pa := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
			pa.MessageID = p.MessageID
			if s.enqueue(pa) != nil {
				return
			}
		}
	}
}

func (s *session) enqueue(p packets.ControlPacket) error {
	select {
	case <-s.done:
		return s.Err()
	default:
	}
	select {
	case s.out <- p:
		return nil
	case <-s.done:
		return s.Err()
	}
}

// register allocates a packet id and a waiter for its acknowledgement.
func (s *session) register(slot bool) (uint16, <-chan error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, nil, s.err
	}
	for range 65535 {
		s.nextID++
		if s.nextID == 0 {
			s.nextID = 1
		}
		if _, used := s.acks[s.nextID]; !used {
			a := ack{ch: make(chan error, 1), slot: slot}
			s.acks[s.nextID] = a
			return s.nextID, a.ch, nil
		}
	}
	return 0, nil, errors.New("no free packet id")
}

func (s *session) complete(id uint16, err error) {
	s.mu.Lock()
	a, ok := s.acks[id]
	delete(s.acks, id)
	s.mu.Unlock()
	if !ok {
		return // an ack for nothing: harmless, e.g. a duplicate
	}
	if a.slot {
		<-s.window
	}
	a.ch <- err
}

// acquire takes a slot of the in-flight window.
func (s *session) acquire(ctx context.Context) error {
	select {
	case s.window <- struct{}{}:
		return nil
	case <-s.done:
		return s.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publish1 sends a QoS 1 publish and returns a channel that yields its
// outcome. The caller must hold a window slot; it is released on PUBACK
// and forgotten with the session otherwise.
func (s *session) publish1(topic string, payload []byte) (<-chan error, error) {
	id, ch, err := s.register(true)
	if err != nil {
		<-s.window
		return nil, err
	}
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.Qos = 1
	p.MessageID = id
	p.TopicName = topic
	p.Payload = payload
	if err := s.enqueue(p); err != nil {
		return nil, err // fail() has already told the waiter
	}
	return ch, nil
}

// publish0 sends a QoS 0 publish.
func (s *session) publish0(topic string, payload []byte) error {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName = topic
	p.Payload = payload
	return s.enqueue(p)
}

// subscribe sends one SUBSCRIBE and returns a channel for its SUBACK.
func (s *session) subscribe(filters []string, qos []byte) (<-chan error, error) {
	id, ch, err := s.register(false)
	if err != nil {
		return nil, err
	}
	p := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	p.MessageID = id
	p.Topics = filters
	p.Qoss = qos
	if err := s.enqueue(p); err != nil {
		return nil, err
	}
	return ch, nil
}

// inFlight is the number of publishes awaiting PUBACK.
func (s *session) inFlight() int { return len(s.window) }
