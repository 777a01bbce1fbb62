package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/mqttwire"
	"outpost/internal/topic"
)

const edgeHubModule = "$edgeHub"

// session is one connection's worth of work. Its goroutines end with it;
// Link.session owns it and waits for them in stop.
type session struct {
	l      *Link
	c      *mconn
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	events chan func() // desired patches, in arrival order

	pubacks atomic.Uint64 // PUBACKs of drained entries
	// credits holds the window's unused credits; window is its size,
	// grown only by ackLoop (credit).
	credits chan struct{}
	window  int
	ackWake chan struct{}
	// storeAcked is, per endpoint, 1 + the highest sequence acked in the
	// store; only the store-ack loop (then stop) uses it.
	storeAcked map[string]uint64

	ackMu sync.Mutex
	// ackMu guards drained: per endpoint, 1 + the highest store sequence
	// whose PUBACK arrived with all published before it.
	drained map[string]uint64

	mu sync.Mutex
	// mu guards the following fields.
	subs     map[string]*subState
	attached map[string]attachment // what the reconciler subscribed for
	c2d      map[string][]c2dItem  // per-device C2D queues being delivered
}

// subState is a filter subscribed, or being subscribed, on this connection.
type subState struct {
	done chan struct{}
	err  error
}

func newSession(ctx context.Context, l *Link, c *mconn) *session {
	s := &session{
		l:        l,
		c:        c,
		events:   make(chan func(), 256),
		ackWake:  make(chan struct{}, 1),
		drained:  map[string]uint64{},
		subs:     map[string]*subState{},
		attached: map[string]attachment{},
		c2d:      map[string][]c2dItem{},

		storeAcked: map[string]uint64{},
	}
	s.window = min(initialWindow, l.cfg.Window)
	s.credits = make(chan struct{}, l.cfg.Window)
	for range s.window {
		s.credits <- struct{}{}
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	return s
}

func (s *session) start() {
	s.c.start(s.inbound)
	inflight := make(chan flight, s.l.cfg.Window-1)
	s.wg.Go(func() { s.runEvents() })
	s.wg.Go(func() { s.reconcile() })
	s.wg.Go(func() { s.reportPresence() })
	s.wg.Go(func() { s.publishLoop(inflight) })
	s.wg.Go(func() { s.ackLoop(inflight) })
	s.wg.Go(func() { s.storeAckLoop() })
}

// stop ends the session: the connection first, so nothing new arrives,
// then its goroutines; acks that arrived are written to the store so only
// what was in flight is sent again.
func (s *session) stop(graceful bool) {
	s.cancel()
	s.c.close(graceful)
	s.wg.Wait()
	s.flushStoreAck()
	s.l.rewind()
}

// inbound handles a PUBLISH from the parent, on the reader goroutine.
func (s *session) inbound(p mqttwire.Packet) {
	ackNow := p.QoS > 0
	defer func() {
		if ackNow {
			_ = s.c.puback(p.ID)
		}
	}()
	if strings.HasPrefix(p.Topic, edgeproto.TopicRefusal) {
		var r edgeproto.Refusal
		if err := json.Unmarshal(p.Payload, &r); err != nil || r.PacketID == 0 || r.Reason == "" {
			// Its PUBACK will read as a delivery: say so loudly.
			s.l.log.Warn("unreadable refusal notice from the hub", "body", clip(string(p.Payload)), "error", err)
			return
		}
		s.c.markRefused(r.PacketID, &PermanentRefusal{Reason: r.Reason, Message: r.Message})
		return
	}
	if status, rid, ok, err := edgeproto.ParseResponse(p.Topic); ok {
		if err != nil {
			s.l.log.Debug("bad extension reply topic", "topic", clip(p.Topic), "error", err)
			return
		}
		s.l.resolve(rid, reply{status: status, body: p.Payload})
		return
	}
	tp, err := topic.Parse(p.Topic)
	if err != nil {
		s.l.log.Debug("unknown topic from parent", "topic", clip(p.Topic), "error", err)
		return
	}
	switch {
	case tp.Kind == topic.KindTwinResponse && tp.OnBehalfOf != "":
		s.l.resolve(tp.RID, reply{status: tp.Status, version: tp.Version, body: p.Payload})
	case tp.Kind == topic.KindC2D:
		if p.QoS > 0 {
			ackNow = false // acked once the child has it
		}
		s.queueC2D(tp, p)
	case tp.Kind == topic.KindMethodRequest && tp.OnBehalfOf != "":
		s.wg.Go(func() { s.invoke(tp, p.Payload) })
	case tp.Kind == topic.KindTwinDesired && tp.OnBehalfOf != "":
		d, m, v, body := tp.DeviceID, tp.ModuleID, tp.Version, p.Payload
		fn := func() { s.l.cfg.Local.DesiredPatch(d, m, v, body) }
		if d == s.l.cfg.DeviceID && m == edgeHubModule {
			fn = func() { s.l.cfg.Local.EdgeHubDesired(body) }
		}
		s.event(fn)
	default:
		s.l.log.Debug("unexpected topic from parent", "topic", clip(p.Topic))
	}
}

// event queues fn for the events goroutine, which keeps desired patches
// in the order the parent sent them.
func (s *session) event(fn func()) {
	select {
	case s.events <- fn:
	case <-s.ctx.Done():
	}
}

func (s *session) runEvents() {
	for {
		select {
		case fn := <-s.events:
			fn()
		case <-s.ctx.Done():
			return
		}
	}
}

// c2dItem is a C2D message waiting for its child.
type c2dItem struct {
	id  uint16
	qos byte
	msg *message.Message
}

// queueC2D delivers C2D messages of one device in order, on a goroutine
// per device that has some pending, so a slow child holds up only itself.
func (s *session) queueC2D(tp topic.Topic, p mqttwire.Packet) {
	d := tp.DeviceID
	msg := &message.Message{DeviceID: d, Body: p.Payload}
	topic.ToMessage(tp.Bag, msg)
	s.mu.Lock()
	q, busy := s.c2d[d]
	s.c2d[d] = append(q, c2dItem{id: p.ID, qos: p.QoS, msg: msg})
	s.mu.Unlock()
	if !busy {
		s.wg.Go(func() { s.deliverC2D(d) })
	}
}

func (s *session) deliverC2D(d string) {
	for {
		s.mu.Lock()
		q := s.c2d[d]
		if len(q) == 0 {
			delete(s.c2d, d)
			s.mu.Unlock()
			return
		}
		it := q[0]
		s.c2d[d] = q[1:]
		s.mu.Unlock()
		if s.ctx.Err() != nil {
			continue // unacked: the hub delivers it again
		}
		if err := s.l.cfg.Local.DeliverC2D(s.ctx, d, it.msg); err != nil {
			s.l.log.Info("c2d not delivered locally; left for redelivery", "device", d, "error", err)
			continue
		}
		if it.qos > 0 {
			_ = s.c.puback(it.id)
		}
	}
}

func (s *session) invoke(tp topic.Topic, payload []byte) {
	status, resp, err := s.l.cfg.Local.InvokeMethod(s.ctx, tp.DeviceID, tp.ModuleID, tp.MethodName, payload)
	if err != nil {
		if s.ctx.Err() != nil {
			return // the link went down; the hub fails the call
		}
		status = http.StatusNotFound
		if errors.Is(err, context.DeadlineExceeded) {
			status = http.StatusGatewayTimeout
		}
		resp, _ = json.Marshal(map[string]string{"message": err.Error()})
		s.l.log.Info("method failed locally", "identity", tp.OnBehalfOf, "method", tp.MethodName, "error", err)
	}
	if err := s.c.publish0(topic.OBOMethodResponse(tp.OnBehalfOf, status, tp.RID), resp); err != nil {
		s.l.log.Debug("method response not sent", "identity", tp.OnBehalfOf, "error", err)
	}
}
