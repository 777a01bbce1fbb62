package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"outpost/internal/edgeproto"
	"outpost/internal/status"
)

// Local direct methods: a module or child connected to an Outpost edge
// calls a method on another client of that edge (a child device, or a
// module of the edge), also while the edge is offline. The call is the
// edge's "invoke" extension request, $outpost/req/invoke/?$rid=, answered
// on $outpost/res/{status}/?$rid= (see the edge's docs/edge-local.md). It
// is built on the raw Publish/Subscribe API; the state it needs lives in
// a registry keyed weakly by *Client, so a collected client takes its
// entry with it.

// InvokeError is a method call the edge refused: 404 DeviceNotOnline
// (the target is not connected within the connect timeout), 404
// DeviceNotFound/ModuleNotFound (not in the edge's scope), 504
// GatewayTimeout (no answer within the response timeout), 400 for a bad
// request.
type InvokeError struct {
	Status  int
	Code    string // e.g. "DeviceNotOnline"
	Message string
}

func (e *InvokeError) Error() string {
	return fmt.Sprintf("invoke method: status %d %s: %s", e.Status, e.Code, e.Message)
}

// MethodCall is a local direct method call.
type MethodCall struct {
	DeviceID, ModuleID string
	MethodName         string
	// Payload is JSON; nil sends null.
	Payload []byte
	// ResponseTimeout is how long the target may take (whole seconds,
	// rounded up); 0 means 30 s. The edge bounds one request to 30 s.
	ResponseTimeout time.Duration
	// ConnectTimeout is how long to wait for the target to connect; 0
	// fails at once when it is not connected.
	ConnectTimeout time.Duration
}

// MethodResult is the target's answer.
type MethodResult struct {
	Status  int
	Payload []byte // JSON
}

// InvokeMethod calls method name on deviceID (or its module moduleID)
// through the edge this client is connected to, waiting up to timeout for
// the answer (0: 30 s). A target that is not connected fails at once with
// an *InvokeError of status 404.
func (c *Client) InvokeMethod(ctx context.Context, deviceID, moduleID, name string, payload []byte, timeout time.Duration) (status int, resp []byte, err error) {
	res, err := c.Invoke(ctx, MethodCall{DeviceID: deviceID, ModuleID: moduleID, MethodName: name, Payload: payload, ResponseTimeout: timeout})
	return res.Status, res.Payload, err
}

// Invoke makes a local direct method call; see InvokeMethod.
func (c *Client) Invoke(ctx context.Context, call MethodCall) (MethodResult, error) {
	if call.DeviceID == "" || call.MethodName == "" {
		return MethodResult{}, errors.New("invoke method: need a device id and a method name")
	}
	if call.ResponseTimeout < 0 || call.ConnectTimeout < 0 {
		return MethodResult{}, errors.New("invoke method: negative timeout")
	}
	payload := call.Payload
	if len(payload) == 0 {
		payload = []byte("null")
	}
	if !json.Valid(payload) {
		return MethodResult{}, errors.New("invoke method: payload is not JSON")
	}
	respT, connT := seconds(call.ResponseTimeout), seconds(call.ConnectTimeout)
	body, err := json.Marshal(struct {
		DeviceID   string          `json:"deviceId"`
		ModuleID   string          `json:"moduleId,omitempty"`
		MethodName string          `json:"methodName"`
		Payload    json.RawMessage `json:"payload"`
		RespT      int             `json:"responseTimeoutInSeconds,omitempty"`
		ConnT      int             `json:"connectTimeoutInSeconds,omitempty"`
	}{call.DeviceID, call.ModuleID, call.MethodName, payload, respT, connT})
	if err != nil {
		return MethodResult{}, fmt.Errorf("invoke method: %w", err)
	}
	inv, err := invokerOf(c)
	if err != nil {
		return MethodResult{}, err
	}
	// The reply is QoS 0 and lost with the connection: bound the wait by
	// what the edge may take, so such a call fails rather than hangs.
	effective := respT
	if effective == 0 {
		effective = 30
	}
	wait := time.Duration(effective+connT+5) * time.Second
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()

	rid := "i" + strconv.FormatUint(inv.rid.Add(1), 10)
	ch := make(chan extReply, 1)
	inv.mu.Lock()
	inv.wait[rid] = ch
	inv.mu.Unlock()
	defer func() {
		inv.mu.Lock()
		delete(inv.wait, rid)
		inv.mu.Unlock()
	}()
	if err := c.Publish(ctx, edgeproto.RequestTopic(edgeproto.ReqInvoke, rid), 0, body); err != nil {
		return MethodResult{}, fmt.Errorf("invoke method: %w", err)
	}
	var rep extReply
	select {
	case rep = <-ch:
	case <-ctx.Done():
		return MethodResult{}, fmt.Errorf("invoke method: %w", ctx.Err())
	}
	if rep.status != 200 {
		return MethodResult{}, extError(rep)
	}
	var res struct {
		Status  int             `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(rep.body, &res); err != nil {
		return MethodResult{}, fmt.Errorf("invoke method: bad reply: %w", err)
	}
	return MethodResult{Status: res.Status, Payload: res.Payload}, nil
}

// seconds rounds d up to whole seconds.
func seconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// extError reads an extension's error reply, written by
// status.Error.MQTTBody.
func extError(rep extReply) error {
	se := status.FromMQTT(rep.status, rep.body)
	return &InvokeError{Status: se.Status, Code: se.Code, Message: se.Message}
}

type extReply struct {
	status int
	body   []byte
}

// invoker holds one client's calls in flight.
type invoker struct {
	rid  atomic.Uint64
	once sync.Once
	err  error

	mu   sync.Mutex
	wait map[string]chan extReply // by $rid
}

// invokers maps a weak *Client to its invoker; a cleanup deletes the
// entry when the client is collected.
var invokers sync.Map

// invokerOf returns c's invoker, subscribing c to extension replies the
// first time. The subscription precedes the first request on the same
// connection, so the edge (which serves a connection's packets in order)
// never answers before it.
func invokerOf(c *Client) (*invoker, error) {
	key := weak.Make(c)
	v, ok := invokers.Load(key)
	if !ok {
		var loaded bool
		v, loaded = invokers.LoadOrStore(key, &invoker{wait: map[string]chan extReply{}})
		if !loaded {
			runtime.AddCleanup(c, func(k weak.Pointer[Client]) { invokers.Delete(k) }, key)
		}
	}
	inv := v.(*invoker)
	inv.once.Do(func() {
		inv.err = c.Subscribe(edgeproto.ResFilter, 0, inv.reply)
	})
	if inv.err != nil {
		return nil, fmt.Errorf("invoke method: %w", inv.err)
	}
	return inv, nil
}

// reply runs on the client's dispatcher: it hands a reply to its waiter.
func (inv *invoker) reply(t string, payload []byte) {
	status, rid, ok, err := edgeproto.ParseResponse(t)
	if !ok || err != nil {
		return
	}
	inv.mu.Lock()
	ch := inv.wait[rid]
	delete(inv.wait, rid)
	inv.mu.Unlock()
	if ch != nil {
		ch <- extReply{status: status, body: append([]byte(nil), payload...)}
	}
}
