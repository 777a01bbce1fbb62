package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/mqttwire"
	"outpost/internal/sas"
	"outpost/internal/topic"
)

const (
	// pipelineDepth bounds the publishes queued on one connection before
	// its read loop blocks, which pushes back on the client through TCP.
	pipelineDepth = 256
	// batchBytes bounds the bodies handed to one Telemetry call.
	batchBytes = 4 << 20
	// requestDepth bounds queued twin and extension requests.
	requestDepth = 64
	// pipelineBytes bounds the bodies on the pipeline, the batch the
	// backend stores included: pipelineDepth messages of the largest
	// size would be 64 MiB a connection. budgetUnit is its grain;
	// smaller bodies are bounded by pipelineDepth alone.
	pipelineBytes = 2 * batchBytes
	budgetUnit    = 16 << 10
)

// authState is set once a connection authenticated.
type authState struct {
	id   Identity
	self *session
	// refusals: an edge told of what is refused for good rather than
	// dropped (edgeproto, CapRefusals).
	refusals bool
}

// pubItem is one publish on the telemetry pipeline: a message to store
// and acknowledge, or only an acknowledgement kept in PUBLISH order.
type pubItem struct {
	msg   *message.Message // nil: acknowledge only
	size  int
	units int // of the byte budget, given back once the batch is done
	pid   uint16
	ack   bool
	at    time.Time // when the PUBLISH was read; set only for an Observer
	// refusal, when set, is told to the edge before this PUBACK: the
	// publish was refused for good (msg is nil).
	refusal *edgeproto.Refusal
}

// call is a direct method request waiting for the device's response.
type call struct {
	target string // client id the request went to
	ch     chan methodResult
}

type methodResult struct {
	status  int
	payload []byte
}

// conn is one MQTT connection (TLS or WebSocket), from accept to close.
// serveConn owns it; its two goroutines (telemetry pipeline, requests)
// end when ctx is cancelled and finish waits for them.
type conn struct {
	s         *Server
	nc        net.Conn
	transport string
	peer      *tls.ConnectionState // set for WebSocket, where HTTP did TLS
	ctx       context.Context
	cancel    context.CancelFunc
	log       *slog.Logger

	cl   atomic.Pointer[mqtt.Client]
	auth atomic.Pointer[authState]
	up   atomic.Bool // session established: CONNACK sent

	// pkts and bytes shape what the client sends (see shape); nil for
	// an edge. Set at CONNECT, used by the read loop alone.
	pkts, bytes *rate.Limiter

	tq chan pubItem
	// budget holds a token per budgetUnit of bodies on the pipeline; a
	// read loop that cannot add its message's tokens stops reading, and
	// TCP pushes back on the client.
	budget chan struct{}
	rq     chan func(context.Context)
	wg     sync.WaitGroup

	// mu guards the following fields.
	mu          sync.Mutex
	killReason  string
	expiry      *time.Timer
	lastPID     uint16
	acks        map[uint16]chan error // outbound QoS 1 awaiting PUBACK; nil once finished
	ridSeq      uint64
	calls       map[string]*call    // $rid -> pending method call
	children    map[string]*session // client id -> session reached through this edge
	scope       map[string]bool     // client id -> InScope answer, cached
	granted     []string            // filters OnSubscribe granted, for mochi's own check of them
	refusedSubs []string            // filters OnSubscribe refused in SUBACK, not by dropping the client
}

func newConn(s *Server, nc net.Conn, transport string, peer *tls.ConnectionState) *conn {
	c := &conn{
		s:         s,
		nc:        nc,
		transport: transport,
		peer:      peer,
		log:       s.log.With("remote", nc.RemoteAddr().String(), "transport", transport),
		tq:        make(chan pubItem, pipelineDepth),
		budget:    make(chan struct{}, pipelineBytes/budgetUnit),
		rq:        make(chan func(context.Context), requestDepth),
		acks:      map[uint16]chan error{},
		calls:     map[string]*call{},
		children:  map[string]*session{},
		scope:     map[string]bool{},
	}
	c.ctx, c.cancel = context.WithCancel(s.ctx)
	return c
}

// connOfNet finds the conn for a client mochi just created, and
// remembers it for the hooks that follow (connOf).
func (s *Server) connOfNet(cl *mqtt.Client) *conn {
	s.mu.Lock()
	c := s.conns[cl.Net.Conn]
	s.mu.Unlock()
	if c != nil {
		s.clients.Store(cl, c)
	}
	return c
}

func (s *Server) connOf(cl *mqtt.Client) *conn {
	if v, ok := s.clients.Load(cl); ok {
		return v.(*conn)
	}
	return nil
}

func (c *conn) clientID() string {
	if a := c.auth.Load(); a != nil {
		return a.id.ClientID()
	}
	return ""
}

// connect authenticates CONNECT. On failure it returns the CONNACK code.
func (c *conn) connect(cl *mqtt.Client, pk packets.Packet) (packets.Code, error) {
	s := c.s
	c.cl.Store(cl)
	cid := pk.Connect.ClientIdentifier
	c.log = c.log.With("client", cid)
	if pk.ProtocolVersion != 4 {
		err := fmt.Errorf("mqtt protocol level %d: only 3.1.1 (4) is served", pk.ProtocolVersion)
		c.log.Warn("refusing client", "error", err)
		return packets.ErrUnsupportedProtocolVersion, err
	}
	d, m, err := parseClientID(cid)
	if err != nil {
		return c.refuseAuth(ReasonBadClientID, err, packets.ErrClientIdentifierNotValid)
	}
	if err := checkUsername(string(pk.Connect.Username), s.cfg.HubHostName, cid); err != nil {
		return c.refuseAuth(ReasonBadUsername, err, packets.ErrMalformedUsername)
	}
	creds := Credentials{
		ClientID:  cid,
		DeviceID:  d,
		ModuleID:  m,
		Password:  string(pk.Connect.Password),
		PeerCerts: c.peerCerts(),
		Transport: c.transport,
	}
	if creds.Password != "" {
		tok, err := sas.ParseToken(creds.Password)
		if err != nil {
			return c.refuseAuth(ReasonBadToken, err, packets.ErrMalformedPassword)
		}
		creds.Token = tok
	}
	id, err := s.authenticate(c.ctx, creds)
	if err != nil {
		var ae *AuthError
		errors.As(err, &ae)
		c.log.Warn("authentication failed", "reason", ae.Reason, "error", err)
		if ae.Reason == ReasonBackend {
			return packets.ErrServerUnavailable, err
		}
		return packets.ErrBadUsernameOrPassword, err
	}

	if !id.Edge {
		c.pkts = newLimiter(s.cfg.ClientPackets, 1)
		c.bytes = newLimiter(s.cfg.ClientBytes, s.cfg.MaxMessageSize+64*1024)
	}
	c.auth.Store(&authState{id: id, self: newSession(c, id, false),
		refusals: id.Edge && hasCap(string(pk.Connect.Username), edgeproto.CapRefusals)})
	c.wg.Add(2)
	go c.runTelemetry(cl, id)
	go c.runRequests()
	if !id.TokenExpiry.IsZero() {
		// The SDK renews its token by reconnecting before expiry; a
		// client that does not is dropped when the token runs out.
		c.mu.Lock()
		c.armExpiryLocked(id.TokenExpiry.Add(s.skew))
		c.mu.Unlock()
	}
	c.log.Info("client connected", "auth", id.AuthMethod, "edge", id.Edge)
	return packets.CodeSuccess, nil
}

// armExpiryLocked ends the connection once the gateway's clock
// (Config.Now) reaches end. That clock may jump either way, which a
// timer, on the monotonic clock, does not see: the timer looks again at
// least every tokenRecheck.
func (c *conn) armExpiryLocked(end time.Time) {
	if c.acks == nil {
		return // finished
	}
	left := end.Sub(c.s.cfg.Now())
	c.expiry = time.AfterFunc(max(min(left, c.s.cfg.tokenRecheck), 0), func() {
		if !c.s.cfg.Now().Before(end) {
			c.kill("sas token expired")
			return
		}
		c.mu.Lock()
		c.armExpiryLocked(end)
		c.mu.Unlock()
	})
}

func (c *conn) refuseAuth(reason AuthReason, err error, code packets.Code) (packets.Code, error) {
	c.s.countAuthFailure(reason)
	c.log.Warn("authentication failed", "reason", reason, "error", err)
	return code, &AuthError{Reason: reason, Err: err}
}

func (c *conn) peerCerts() []*x509.Certificate {
	if tc, ok := c.nc.(*tls.Conn); ok {
		return tc.ConnectionState().PeerCertificates
	}
	if c.peer != nil {
		return c.peer.PeerCertificates
	}
	return nil
}

// established runs once CONNACK went out with the session's inherited
// subscriptions in place.
func (c *conn) established() {
	a := c.auth.Load()
	cl := c.cl.Load()
	s := c.s
	s.mu.Lock()
	s.direct[a.id.ClientID()] = c
	s.mu.Unlock()
	c.up.Store(true)
	s.cfg.Backend.Connected(a.self)

	// A clean-session-0 edge inherits its on-behalf-of subscriptions:
	// check them against its scope as of now and restore those sessions.
	for filter := range cl.State.Subscriptions.GetAll() {
		if ok, err := c.allowSubscribe(filter); !ok {
			c.log.Info("dropping inherited subscription", "filter", filter, "error", err)
			s.mochi.Topics.Unsubscribe(filter, cl.ID)
			cl.State.Subscriptions.Delete(filter)
			continue
		}
		c.subscribed(filter)
	}
}

// subscribed notes a granted filter; an edge's on-behalf-of filter makes
// the identity it names reachable through this connection.
func (c *conn) subscribed(filter string) {
	target, err := c.checkFilter(filter)
	if err != nil || target == "" || target == c.clientID() {
		return
	}
	c.addChild(target)
}

func (c *conn) addChild(cid string) {
	a := c.auth.Load()
	d, m, _ := strings.Cut(cid, "/")
	c.mu.Lock()
	if c.children == nil || c.children[cid] != nil {
		c.mu.Unlock()
		return
	}
	ss := newSession(c, Identity{DeviceID: d, ModuleID: m, AuthMethod: AuthOnBehalfOf, Via: a.id.ClientID()}, true)
	c.children[cid] = ss
	c.mu.Unlock()
	c.s.mu.Lock()
	c.s.viaEdge[cid] = ss
	c.s.mu.Unlock()
	c.s.cfg.Backend.Connected(ss)
}

// removeChild ends a session reached through this edge: its filters are
// removed from the edge's subscriptions so nothing more is routed to it.
func (c *conn) removeChild(ss *session, reason string) {
	cid := ss.id.ClientID()
	c.mu.Lock()
	if c.children == nil || c.children[cid] != ss {
		c.mu.Unlock()
		return
	}
	delete(c.children, cid)
	c.mu.Unlock()
	ss.end()
	if cl := c.cl.Load(); cl != nil {
		for filter := range cl.State.Subscriptions.GetAll() {
			if t, err := c.checkFilter(filter); err == nil && t == cid {
				c.s.mochi.Topics.Unsubscribe(filter, cl.ID)
				cl.State.Subscriptions.Delete(filter)
			}
		}
	}
	c.s.mu.Lock()
	if c.s.viaEdge[cid] == ss {
		delete(c.s.viaEdge, cid)
	}
	c.s.mu.Unlock()
	c.log.Info("on-behalf-of session ended", "identity", cid, "reason", reason)
	c.s.cfg.Backend.Disconnected(ss)
}

// inScope answers whether this (edge) connection may act for cid,
// asking the backend once per connection.
func (c *conn) inScope(deviceID, moduleID string) (bool, error) {
	a := c.auth.Load()
	cid := message.ClientID(deviceID, moduleID)
	if cid == a.id.ClientID() {
		return true, nil
	}
	if !a.id.Edge {
		return false, nil
	}
	c.mu.Lock()
	ok, cached := c.scope[cid]
	c.mu.Unlock()
	if cached {
		return ok, nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.BackendTimeout)
	defer cancel()
	ok, err := c.s.cfg.Backend.InScope(ctx, a.id, deviceID, moduleID)
	if err != nil {
		return false, fmt.Errorf("%w: %w", errScopeUnavailable, err)
	}
	c.mu.Lock()
	c.scope[cid] = ok
	c.mu.Unlock()
	return ok, nil
}

// kill drops the connection. The first reason given is the one logged.
func (c *conn) kill(reason string) {
	c.mu.Lock()
	if c.killReason == "" {
		c.killReason = reason
	}
	c.mu.Unlock()
	c.cancel()
	if cl := c.cl.Load(); cl != nil {
		cl.Stop(errors.New(reason))
	}
	c.nc.Close()
}

// refuse logs why a client broke the rules and drops it.
func (c *conn) refuse(what string, args ...any) {
	c.log.Warn("dropping client: "+what, args...)
	c.kill(what)
}

// finish runs after mochi is done with the connection.
func (c *conn) finish(err error) {
	s := c.s
	c.cancel()
	c.nc.Close()
	c.wg.Wait()

	c.mu.Lock()
	if c.expiry != nil {
		c.expiry.Stop()
	}
	acks, children, reason := c.acks, c.children, c.killReason
	c.acks, c.children = nil, nil
	c.mu.Unlock()
	for _, ch := range acks {
		ch <- ErrConnectionLost // written, never acknowledged
	}
	if cl := c.cl.Load(); cl != nil {
		s.clients.Delete(cl)
	}

	a := c.auth.Load()
	if a == nil {
		if errors.Is(err, errConnectTooLarge) {
			c.log.Warn("refusing connection", "error", err)
		}
		return // else refused at CONNECT, already logged
	}
	if c.up.Load() {
		s.mu.Lock()
		if s.direct[a.id.ClientID()] == c {
			delete(s.direct, a.id.ClientID())
		}
		for cid, ss := range children {
			if s.viaEdge[cid] == ss {
				delete(s.viaEdge, cid)
			}
		}
		s.mu.Unlock()
		for _, ss := range children {
			ss.end()
			s.cfg.Backend.Disconnected(ss)
		}
		a.self.end()
		s.cfg.Backend.Disconnected(a.self)
	}
	if reason == "" {
		switch {
		case err == nil:
			reason = "client disconnected"
		case errors.Is(err, io.EOF):
			reason = "connection closed by client"
		case errors.Is(err, packets.ErrPacketTooLarge):
			reason = fmt.Sprintf("message too large (limit %d bytes)", s.cfg.MaxMessageSize)
			if s.cfg.Observer != nil {
				s.cfg.Observer.ObserveRefused(RefusedTooLarge, 1)
			}
		case errors.Is(err, packets.ErrSessionTakenOver):
			reason = "session taken over by a new connection"
		default:
			reason = err.Error()
		}
	}
	c.log.Info("client disconnected", "reason", reason)
}

// publish serves one PUBLISH from the client (see hook.OnPublish).
func (c *conn) publish(pk packets.Packet) {
	if len(pk.Payload) > c.s.cfg.MaxMessageSize { // let through by OnPacketRead
		if o := c.s.cfg.Observer; o != nil {
			o.ObserveRefused(RefusedTooLarge, 1)
		}
		c.refuseForGood(pk, edgeproto.RefusedTooLarge, fmt.Sprintf("message of %d bytes, limit %d", len(pk.Payload), c.s.cfg.MaxMessageSize))
		return
	}
	r, err := c.classify(pk.TopicName)
	if err != nil {
		if errors.Is(err, errScopeUnavailable) {
			// The registry may answer on the next connection.
			c.refuse("publish not checked", "topic", pk.TopicName, "error", err)
			return
		}
		reason := edgeproto.RefusedInvalid
		if errors.Is(err, errNotInScope) {
			reason = edgeproto.RefusedNotInScope
		}
		c.refuseForGood(pk, reason, err.Error())
		return
	}
	ack := pk.FixedHeader.Qos == 1
	var at time.Time
	if ack && c.s.cfg.Observer != nil {
		at = time.Now()
	}
	switch r.kind {
	case reqTelemetry:
		msg := &message.Message{DeviceID: r.deviceID, ModuleID: r.moduleID, Body: pk.Payload}
		toMessage(r.bag, msg)
		// Connection ids come from the authenticated identity (or the
		// scope-checked identity an edge acts for), never the client.
		msg.System.ConnDeviceID = r.deviceID
		msg.System.ConnModuleID = r.moduleID
		c.enqueue(pubItem{msg: msg, size: len(pk.Payload), pid: pk.PacketID, ack: ack, at: at})
		return
	case reqMethodResponse:
		c.methodResponse(message.ClientID(r.deviceID, r.moduleID), r.rid, r.status, pk.Payload)
	default:
		payload := pk.Payload
		c.request(func(ctx context.Context) { c.serveRequest(ctx, r, payload) })
	}
	if ack {
		// PUBACKs leave in PUBLISH order [MQTT-4.6.0-2], so even a request
		// that is not telemetry is acknowledged through the pipeline.
		c.enqueue(pubItem{pid: pk.PacketID, ack: true, at: at})
	}
}

// takesRefusals reports whether a refusal of pk for good can be told to
// the client rather than ending its connection: an edge that asked for
// refusal notices, and a QoS 1 publish whose PUBACK the notice explains.
func (c *conn) takesRefusals(pk packets.Packet) bool {
	return c.refusals() && pk.FixedHeader.Qos == 1
}

// refusals reports whether the client is an edge that asked to be told
// of refusals (edgeproto.CapRefusals).
func (c *conn) refusals() bool {
	a := c.auth.Load()
	return a != nil && a.refusals
}

// refuseForGood refuses a publish that sending again cannot mend. An
// edge that takes refusals is told why, then gets the PUBACK, in order,
// and drains on; any other client is dropped, as MQTT 3.1.1 offers no
// other answer.
func (c *conn) refuseForGood(pk packets.Packet, reason, msg string) {
	if !c.takesRefusals(pk) {
		c.refuse("publish not allowed", "topic", truncate(pk.TopicName), "reason", reason, "error", msg)
		return
	}
	c.log.Warn("edge message refused for good; the edge is told and sets it aside",
		"topic", truncate(pk.TopicName), "reason", reason, "error", msg)
	c.enqueue(pubItem{pid: pk.PacketID, ack: true, refusal: &edgeproto.Refusal{PacketID: pk.PacketID, Reason: reason, Message: msg}})
}

func (c *conn) enqueue(it pubItem) {
	// Capped at the whole budget: a body larger than it (a MaxMessageSize
	// set above pipelineBytes) waits for an empty pipeline, not forever.
	it.units = min(it.size/budgetUnit, cap(c.budget))
	for range it.units {
		select {
		case c.budget <- struct{}{}:
		case <-c.ctx.Done():
			return
		}
	}
	select {
	case c.tq <- it:
	case <-c.ctx.Done():
	}
}

func (c *conn) request(f func(context.Context)) {
	select {
	case c.rq <- f:
	case <-c.ctx.Done():
	}
}

// runTelemetry is the connection's ordered pipeline: it hands everything
// queued to the backend in one call, then writes the PUBACKs in order.
func (c *conn) runTelemetry(cl *mqtt.Client, via Identity) {
	defer c.wg.Done()
	max := c.s.cfg.BatchMax
	batch := make([]pubItem, 0, max)
	var acks []byte
	for {
		batch = batch[:0]
		select {
		case it := <-c.tq:
			batch = append(batch, it)
		case <-c.ctx.Done():
			return
		}
		size := batch[0].size
	fill:
		for len(batch) < max && size < batchBytes {
			select {
			case it := <-c.tq:
				batch = append(batch, it)
				size += it.size
			default:
				break fill
			}
		}
		var msgs []*message.Message
		for _, it := range batch {
			if it.msg != nil {
				msgs = append(msgs, it.msg)
			}
		}
		if len(msgs) > 0 {
			ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.BackendTimeout)
			err := c.s.cfg.Backend.Telemetry(ctx, via, msgs)
			cancel()
			if err != nil {
				c.s.observeRefusal(err, len(msgs))
				if c.ctx.Err() == nil {
					// MQTT 3.1.1 has no negative PUBACK: the client learns
					// by the dropped connection and resends what is unacked.
					c.refuse("telemetry refused by backend; not acknowledged", "messages", len(msgs), "error", err)
				}
				return
			}
		}
		if !c.tellRefusals(batch) {
			return
		}
		if err := writePubacks(cl, batch, &acks); err != nil {
			return // the connection is gone; finish cleans up
		}
		for _, it := range batch {
			for range it.units {
				<-c.budget
			}
		}
		if o := c.s.cfg.Observer; o != nil {
			o.ObserveAccepted(len(msgs))
			now := time.Now()
			for _, it := range batch {
				if it.ack {
					o.ObservePuback(now.Sub(it.at))
				}
			}
		}
	}
}

// tellRefusals publishes the batch's refusal notices, before its
// PUBACKs, so each reaches the edge ahead of the PUBACK it explains. An
// edge that cannot get them (no $outpost/res/# subscription) is dropped:
// a PUBACK alone would tell it the message was delivered.
func (c *conn) tellRefusals(batch []pubItem) bool {
	for _, it := range batch {
		if it.refusal == nil {
			continue
		}
		body, err := json.Marshal(it.refusal)
		if err == nil {
			_, err = c.send(edgeproto.TopicRefusal, body, 0)
		}
		if err != nil {
			if c.ctx.Err() == nil {
				c.refuse("publish not allowed, and the refusal could not be told", "reason", it.refusal.Reason, "error", err)
			}
			return false
		}
	}
	return true
}

// writePubacks writes the batch's PUBACKs, in order, with one write: one
// TLS record and one syscall per batch instead of per message, which is
// most of the server's CPU under load. It takes the client's lock as
// mochi's WritePacket does, so it never interleaves with another packet.
// mochi buffers output (Net.outbuf) only for its own routed publishes,
// which device clients never get (OnACLCheck refuses them), so nothing is
// queued ahead of this. TestMochiWriteContract holds mochi to both.
func writePubacks(cl *mqtt.Client, batch []pubItem, buf *[]byte) error {
	b := (*buf)[:0]
	for _, it := range batch {
		if it.ack {
			b = mqttwire.AppendPuback(b, it.pid)
		}
	}
	*buf = b
	if len(b) == 0 {
		return nil
	}
	if cl.Closed() {
		return mqtt.ErrConnectionClosed
	}
	cl.Lock()
	defer cl.Unlock()
	_, err := cl.Net.Conn.Write(b)
	return err
}

func (c *conn) runRequests() {
	defer c.wg.Done()
	for {
		select {
		case f := <-c.rq:
			ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.BackendTimeout)
			f(ctx)
			cancel()
		case <-c.ctx.Done():
			return
		}
	}
}

// target is the identity a request acts for: the connection's own, or
// one an edge acts for (scope already checked by classify).
func (c *conn) target(r request) Identity {
	a := c.auth.Load()
	if r.deviceID == a.id.DeviceID && r.moduleID == a.id.ModuleID {
		return a.id
	}
	return Identity{DeviceID: r.deviceID, ModuleID: r.moduleID, AuthMethod: AuthOnBehalfOf, Via: a.id.ClientID()}
}

// send writes a PUBLISH to this client if it subscribed to a filter
// matching topicName, at the lower of qos and the granted QoS. For QoS 1
// the returned channel yields the PUBACK (nil) or why none will come.
func (c *conn) send(topicName string, payload []byte, qos byte) (<-chan error, error) {
	cl := c.cl.Load()
	if cl == nil || c.ctx.Err() != nil {
		return nil, ErrNotConnected
	}
	granted, err := deliverable(cl, topicName)
	if err != nil {
		return nil, err
	}
	qos = min(qos, granted)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topicName,
		Payload:     payload,
	}
	var ch chan error
	if qos > 0 {
		ch = make(chan error, 1)
		c.mu.Lock()
		pid, err := c.nextPIDLocked()
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		c.acks[pid] = ch
		c.mu.Unlock()
		pk.PacketID = pid
	}
	if err := cl.WritePacket(pk); err != nil {
		if qos > 0 {
			c.mu.Lock()
			if c.acks != nil {
				delete(c.acks, pk.PacketID)
			}
			c.mu.Unlock()
		}
		return nil, writeError(err)
	}
	if qos == 0 {
		ch = make(chan error, 1)
		ch <- nil
	}
	return ch, nil
}

// writeError tells apart why a PUBLISH failed to go out: refused before
// any byte was written (closed connection, or a packet the client cannot
// take), or a failed network write, after which the client may hold it.
func writeError(err error) error {
	var code packets.Code
	switch {
	case errors.Is(err, mqtt.ErrConnectionClosed):
		return ErrNotConnected
	case errors.As(err, &code):
		return fmt.Errorf("write to client: %w", err)
	default:
		return fmt.Errorf("write to client: %w (%w)", ErrConnectionLost, err)
	}
}

// nextPIDLocked picks a packet id not awaiting a PUBACK. mochi never
// publishes to device clients itself (the gateway routes nothing through
// it), so these ids cannot collide with its own.
func (c *conn) nextPIDLocked() (uint16, error) {
	if c.acks == nil {
		return 0, ErrNotConnected
	}
	for range 1 << 16 {
		c.lastPID++
		if c.lastPID == 0 {
			c.lastPID = 1
		}
		if _, busy := c.acks[c.lastPID]; !busy {
			return c.lastPID, nil
		}
	}
	return 0, errors.New("65535 messages awaiting acknowledgement")
}

// puback completes an outbound QoS 1 publish.
func (c *conn) puback(pid uint16) {
	c.mu.Lock()
	ch := c.acks[pid]
	delete(c.acks, pid)
	c.mu.Unlock()
	if ch != nil {
		ch <- nil
	}
}

// deliverable is the one check on every message written to a client:
// topicName must be a topic name (no wildcards: a name is never taken
// for a filter) matching a filter the client was granted, and the best
// QoS granted for it is returned. The filters were authorised when
// granted (OnSubscribe, or established for inherited ones) and only ever
// match the client's own topics, or those of an edge's scope.
func deliverable(cl *mqtt.Client, topicName string) (byte, error) {
	if !topic.ValidTopicName(topicName) {
		return 0, fmt.Errorf("topic name %q: %w", truncate(topicName), errBadTopicName)
	}
	var qos byte
	found := false
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if topic.Match(filter, topicName) {
			found = true
			qos = max(qos, sub.Qos)
		}
	}
	if !found {
		return 0, ErrNotSubscribed
	}
	return qos, nil
}

var errBadTopicName = errors.New("not a valid topic name (empty, too long, or has + # or NUL)")

// grant records the filters of the SUBSCRIBE being processed, which
// OnSubscribe allowed, and those it refused without dropping the client;
// nil clears them once mochi is done with it.
func (c *conn) grant(subs packets.Subscriptions, refused []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.granted = c.granted[:0]
	for _, sub := range subs {
		c.granted = append(c.granted, sub.Filter)
	}
	c.refusedSubs = append(c.refusedSubs[:0], refused...)
}

// takeGranted consumes one grant, or one refusal, of filter: mochi checks
// each filter of a SUBSCRIBE once, between OnSubscribe and OnSubscribed.
func (c *conn) takeGranted(filter string) (granted, refused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := slices.Index(c.granted, filter); i >= 0 {
		c.granted = slices.Delete(c.granted, i, i+1)
		return true, false
	}
	if i := slices.Index(c.refusedSubs, filter); i >= 0 {
		c.refusedSubs = slices.Delete(c.refusedSubs, i, i+1)
		return false, true
	}
	return false, false
}

// newCall registers a pending method call and returns its $rid.
func (c *conn) newCall(target string) (string, *call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.acks == nil {
		return "", nil, ErrNotConnected
	}
	c.ridSeq++
	rid := fmt.Sprintf("%x", c.ridSeq)
	cl := &call{target: target, ch: make(chan methodResult, 1)}
	c.calls[rid] = cl
	return rid, cl, nil
}

func (c *conn) endCall(rid string) {
	c.mu.Lock()
	delete(c.calls, rid)
	c.mu.Unlock()
}

// methodResponse hands a device's method response to the waiting call.
func (c *conn) methodResponse(target, rid string, status int, payload []byte) {
	c.mu.Lock()
	cl := c.calls[rid]
	if cl != nil && cl.target == target {
		delete(c.calls, rid)
	}
	c.mu.Unlock()
	if cl == nil || cl.target != target {
		c.log.Debug("method response matches no pending call (late, or after a timeout)", "rid", rid, "identity", target)
		return
	}
	cl.ch <- methodResult{status: status, payload: payload}
}
