package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"outpost/internal/gateway"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/status"
)

// liveSession is a session this replica holds, with what it started for
// it: the method subscription and the C2D delivery.
type liveSession struct {
	s gateway.Session
	// presence is the session's id in the registry's presence records;
	// empty for an identity reached through an edge, which the edge
	// reports itself.
	presence string
	sub      *nats.Subscription
	cancel   context.CancelFunc
	once     sync.Once
}

// stop ends the method subscription and the C2D delivery. Only the first
// call does anything; it reports a failed unsubscribe.
//
// The subscription is drained, not dropped: a request NATS already routed
// to it (in the client's queue, or on its way before the server saw the
// unsubscribe) still runs serveMethod, which answers notConnected now that
// ctx is done. Dropped, it went unanswered and its caller waited the
// response timeout and the hop's slack for nothing.
func (l *liveSession) stop() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		if l.sub != nil {
			if uerr := l.sub.Drain(); uerr != nil && !errors.Is(uerr, nats.ErrConnectionClosed) && !errors.Is(uerr, nats.ErrBadSubscription) && !errors.Is(uerr, nats.ErrConnectionDraining) {
				err = fmt.Errorf("unsubscribe %s: %w", l.s.Identity().ClientID(), uerr)
			}
		}
	})
	return err
}

// Connected makes the session reachable for method calls from any
// replica, announces it to callers waiting for it, and starts sending a
// device its C2D queue.
func (p *Plane) Connected(s gateway.Session) {
	id := s.Identity()
	cid := id.ClientID()
	ctx, cancel := context.WithCancel(p.ctx)
	l := &liveSession{s: s, cancel: cancel}
	if id.Via == "" {
		l.presence = p.h.Instance() + "." + strconv.FormatUint(p.sessSeq.Add(1), 36)
	}
	// A queue group: while an old session of the identity lingers (on
	// this replica or another), each call still reaches one session, so
	// a notConnected answer from one cannot hide a delivery by another.
	sub, err := p.nc.QueueSubscribe(methodSubject(cid), "method", func(m *nats.Msg) { p.serveMethod(ctx, l, m) })
	if err != nil {
		p.log.Error("subscribe for direct methods", "identity", cid, "err", err)
	}
	l.sub = sub
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = l.stop() // never announced: nothing to report
		return
	}
	old := p.live[cid]
	p.live[cid] = l
	p.mu.Unlock()
	if old != nil {
		if err := old.stop(); err != nil {
			p.log.Warn("replaced session", "err", err)
		}
		// Its Disconnected will find it replaced: end the children its
		// edge reported over it now. Those the new link reports again
		// are written after this.
		if isEdgeLink(old) {
			p.pres.edgeGone(id.DeviceID, old.presence)
		}
	}
	if l.presence != "" {
		p.pres.connected(id.DeviceID, id.ModuleID, l.presence)
	}
	if isEdgeLink(l) {
		// The edge runtime's own modules live as long as its link, as
		// IoT Hub shows $edgeAgent and $edgeHub; the link's end ends them
		// with the children it reported.
		p.pres.reported(id.DeviceID, l.presence, &edgePresence{connected: []clientRef{
			{id.DeviceID, identity.EdgeAgent}, {id.DeviceID, identity.EdgeHub}}})
	}
	if err := p.nc.Publish(presenceSubject(cid), nil); err != nil {
		p.log.Warn("announce connection", "identity", cid, "err", err)
	}
	if id.ModuleID == "" && p.goStart() {
		go func() {
			defer p.wg.Done()
			p.deliverC2D(ctx, s)
		}()
	}
}

// Disconnected stops what Connected started, unless a newer session of
// the same identity has replaced it already.
func (p *Plane) Disconnected(s gateway.Session) {
	cid := s.Identity().ClientID()
	p.mu.Lock()
	l := p.live[cid]
	if l == nil || l.s != s {
		p.mu.Unlock()
		return
	}
	delete(p.live, cid)
	p.mu.Unlock()
	if err := l.stop(); err != nil {
		p.log.Warn("session ended", "err", err)
	}
	if l.presence != "" {
		p.pres.disconnected(s.Identity().DeviceID, s.Identity().ModuleID, l.presence)
	}
	if isEdgeLink(l) {
		p.pres.edgeGone(s.Identity().DeviceID, l.presence)
	}
}

// isEdgeLink reports whether l is an edge's own link, whose end ends the
// connections of the children it reported.
func isEdgeLink(l *liveSession) bool {
	id := l.s.Identity()
	return l.presence != "" && id.Edge && id.ModuleID == ""
}

// methodCall and methodReply travel between replicas.
type methodCall struct {
	Name      string `json:"name"`
	Payload   []byte `json:"payload"`
	TimeoutMs int64  `json:"timeoutMs"`
}

type methodReply struct {
	Status  int    `json:"status"`
	Payload []byte `json:"payload"`
	Error   string `json:"error,omitempty"`
}

const (
	// replyNotConnected: the request did not reach the device; the
	// caller may try again within its connect timeout.
	replyNotConnected = "notConnected"
	// replyLost: the request reached the device, which dropped before
	// answering. Never sent again: a method runs at most once.
	replyLost    = "lost"
	replyTimeout = "timeout"
)

// serveMethod runs a method call that another replica (or this one)
// forwarded to the session held here.
func (p *Plane) serveMethod(ctx context.Context, l *liveSession, m *nats.Msg) {
	var call methodCall
	if err := json.Unmarshal(m.Data, &call); err != nil || call.TimeoutMs <= 0 {
		respond(m, methodReply{Error: "bad method request"})
		return
	}
	if !p.goStart() {
		respond(m, methodReply{Error: replyNotConnected})
		return
	}
	go func() {
		defer p.wg.Done()
		if ctx.Err() != nil {
			// The session ended (or was replaced) before the request
			// went out.
			respond(m, methodReply{Error: replyNotConnected})
			return
		}
		cctx, cancel := context.WithTimeout(ctx, time.Duration(call.TimeoutMs)*time.Millisecond)
		defer cancel()
		status, payload, err := l.s.InvokeMethod(cctx, call.Name, call.Payload)
		rep := methodReply{Status: status, Payload: payload}
		switch {
		case err == nil:
			p.pres.activity(l.s.Identity().DeviceID, l.s.Identity().ModuleID)
		case errors.Is(err, context.DeadlineExceeded):
			rep.Error = replyTimeout
		case errors.Is(err, gateway.ErrNotConnected), errors.Is(err, gateway.ErrNotSubscribed):
			rep.Error = replyNotConnected
		case errors.Is(err, gateway.ErrConnectionLost), errors.Is(err, context.Canceled):
			// Canceled: the session ended while the request, already
			// sent, waited for its answer.
			rep.Error = replyLost
		default:
			rep.Error = err.Error()
		}
		respond(m, rep)
	}()
}

func respond(m *nats.Msg, rep methodReply) {
	b, _ := json.Marshal(rep)
	_ = m.Respond(b)
}

// subscribeRetry is how soon a call is retried while the device is
// connected but has not subscribed to methods yet.
const subscribeRetry = 200 * time.Millisecond

var (
	errDeviceNotOnline = func(cid string) error {
		return &status.Error{Status: http.StatusNotFound, Code: status.CodeDeviceNotOnline,
			Message: fmt.Sprintf("device %s is not connected, or not subscribed to methods", cid)}
	}
	errDroppedCall = func(cid, name string) error {
		return &status.Error{Status: http.StatusNotFound, Code: status.CodeDeviceNotOnline,
			Message: fmt.Sprintf("%s disconnected before answering method %s; it is not sent again", cid, name)}
	}
	errGatewayTimeout = func(cid, name string) error {
		return &status.Error{Status: http.StatusGatewayTimeout, Code: status.CodeGatewayTimeout,
			Message: fmt.Sprintf("%s did not answer method %s in time", cid, name)}
	}
)

func badArgument(format string, args ...any) error {
	return &status.Error{Status: http.StatusBadRequest, Code: status.CodeArgumentInvalid, Message: fmt.Sprintf(format, args...)}
}

// InvokeMethod calls a direct method on a device or module connected to
// any replica and returns its answer. Errors are *status.Error:
// 400 for a bad request, 404 DeviceNotFound/ModuleNotFound, 404
// DeviceNotOnline when it is not connected (after waiting up to
// ConnectTimeoutInSeconds), 504 GatewayTimeout when it does not answer in
// ResponseTimeoutInSeconds.
func (p *Plane) InvokeMethod(ctx context.Context, deviceID, moduleID string, req gateway.MethodCall) (gateway.MethodResult, error) {
	payload, respT, connT, err := req.Check()
	if err != nil {
		return gateway.MethodResult{}, err
	}
	if moduleID == "" {
		if _, err := p.h.GetDevice(deviceID); err != nil {
			return gateway.MethodResult{}, err
		}
	} else if _, err := p.h.GetModule(deviceID, moduleID); err != nil {
		return gateway.MethodResult{}, err
	}
	cid := message.ClientID(deviceID, moduleID)
	data, _ := json.Marshal(methodCall{Name: req.MethodName, Payload: payload, TimeoutMs: respT.Milliseconds()})

	// Listen for the device's arrival before the first attempt, so a
	// connection between the two is not missed.
	connectBy := time.Now().Add(connT)
	var presence *nats.Subscription
	if connT > 0 {
		var err error
		if presence, err = p.nc.SubscribeSync(presenceSubject(cid)); err != nil {
			return gateway.MethodResult{}, fmt.Errorf("invoke method: %w", err)
		}
		defer presence.Unsubscribe()
	}
	for {
		// The serving replica enforces the response timeout; the slack
		// covers the hop there and back.
		rctx, cancel := context.WithTimeout(ctx, respT+5*time.Second)
		msg, err := p.nc.RequestWithContext(rctx, methodSubject(cid), data)
		cancel()
		var rep methodReply
		noResponders := errors.Is(err, nats.ErrNoResponders)
		switch {
		case noResponders:
			rep.Error = replyNotConnected
		case err != nil && ctx.Err() != nil:
			return gateway.MethodResult{}, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
			return gateway.MethodResult{}, errGatewayTimeout(cid, req.MethodName)
		case err != nil:
			return gateway.MethodResult{}, fmt.Errorf("invoke method: %w", err)
		default:
			if err := json.Unmarshal(msg.Data, &rep); err != nil {
				return gateway.MethodResult{}, fmt.Errorf("invoke method: bad reply: %w", err)
			}
		}
		switch rep.Error {
		case "":
			return gateway.MethodResult{Status: rep.Status, Payload: gateway.ResultPayload(rep.Payload)}, nil
		case replyTimeout:
			return gateway.MethodResult{}, errGatewayTimeout(cid, req.MethodName)
		case replyLost:
			return gateway.MethodResult{}, errDroppedCall(cid, req.MethodName)
		case replyNotConnected:
			left := time.Until(connectBy)
			if presence == nil || left <= 0 {
				return gateway.MethodResult{}, errDeviceNotOnline(cid)
			}
			if !noResponders {
				// Connected but not yet subscribed to methods, as a
				// device is between CONNACK and its SUBSCRIBE: try
				// again shortly.
				left = min(left, subscribeRetry)
			}
			wctx, cancel := context.WithTimeout(ctx, left)
			_, err := presence.NextMsgWithContext(wctx)
			cancel()
			if ctx.Err() != nil {
				return gateway.MethodResult{}, ctx.Err()
			}
			if err != nil && !time.Now().Before(connectBy) {
				return gateway.MethodResult{}, errDeviceNotOnline(cid)
			}
		default:
			return gateway.MethodResult{}, badArgument("%s", rep.Error)
		}
	}
}
