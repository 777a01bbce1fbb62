package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/certs"
	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/netfault"
	"outpost/internal/poll"
	"outpost/internal/sas"
	"outpost/internal/status"
	"outpost/internal/topic"
)

const (
	testHost = "hub.test" // what TLS verifies; the link dials 127.0.0.1
	testEdge = "edge1"
)

// received is one telemetry message as the fake hub got it.
type received struct {
	device, module string
	edgeID         string
	key            edgeproto.ReplayKey
	seq            uint64
	conn           int // which connection of the edge brought it (1, 2, …)
	body           []byte
}

// fakeHub is a small stand-in for the hub's device endpoint: mochi on
// TLS, accepting only the edge, PUBACKing telemetry, answering $outpost
// requests and on-behalf-of twin requests.
type fakeHub struct {
	t    testing.TB
	srv  *mqtt.Server
	addr string
	ca   *certs.CA
	key  string

	mu sync.Mutex
	// mu guards the following fields.
	edge      *mqtt.Client
	connects  int
	got       []received
	twins     map[string]string // client id -> twin document
	reported  map[string]int64
	pid       uint16
	pubacks   map[uint16]time.Time         // C2D packet id -> when the edge acked it
	methodRes map[string]chan methodResult // by $rid
	refuse    bool                         // refuse connects (bad credentials)
	presence  []presenceSeen               // presence reports, in order
	// presenceHold, when set, holds every presence report unanswered
	// until it is closed.
	presenceHold chan struct{}
	// storeNext is the next sequence the fake hub answers a store
	// position with, if past the edge's; positions holds what it was
	// asked, in order.
	storeNext uint64
	positions []edgeproto.StorePosition
	// judge, when set, decides on each telemetry message: refuse it for
	// good with a notice (reason), or drop the connection over it
	// without a PUBACK (drop), as the hub does on a transient failure.
	judge func(device string) (reason string, drop bool)
}

// presenceSeen is a presence report as the fake hub got it.
type presenceSeen struct {
	conn int // which connection of the edge brought it
	edgeproto.PresenceReport
}

type methodResult struct {
	status int
	body   []byte
}

func newFakeHub(t testing.TB) *fakeHub {
	t.Helper()
	ca, err := certs.NewRootCA("fake hub root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, _, err := ca.IssueServer([]string{testHost}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHub{
		t:         t,
		addr:      ln.Addr().String(),
		ca:        ca,
		key:       sas.GenerateKey(),
		twins:     map[string]string{},
		reported:  map[string]int64{},
		pubacks:   map[uint16]time.Time{},
		methodRes: map[string]chan methodResult{},
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1
	h.srv = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 slog.New(slog.DiscardHandler),
		SysTopicResendInterval: 3600,
	})
	if err := h.srv.AddHook(&hubHook{h: h}, nil); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.AddListener(listeners.NewNet("tls", ln)); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	// Not srv.Close: mochi's Close races (in its own fields) with a
	// connection it is still establishing, which the race detector
	// reports. Closing the listener and the clients ends the same.
	t.Cleanup(func() {
		_ = ln.Close()
		for _, cl := range h.srv.Clients.GetAll() {
			cl.Stop(errors.New("fake hub closed"))
		}
	})
	return h
}

func (h *fakeHub) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(h.ca.Cert)
	return p
}

func (h *fakeHub) received() []received {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]received(nil), h.got...)
}

func (h *fakeHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.got)
}

func (h *fakeHub) client() *mqtt.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.edge
}

// subscribed reports whether the edge's session holds exactly filter.
func (h *fakeHub) subscribed(filter string) bool {
	cl := h.client()
	if cl == nil || cl.Closed() {
		return false
	}
	_, ok := cl.State.Subscriptions.Get(filter)
	return ok
}

// send publishes to the edge if one of its subscriptions matches, as the
// real gateway does, and returns the packet id used (QoS 1).
func (h *fakeHub) send(topicName string, payload []byte, qos byte) (uint16, error) {
	cl := h.client()
	if cl == nil {
		return 0, errors.New("edge not connected")
	}
	matched := false
	for f := range cl.State.Subscriptions.GetAll() {
		if topic.Match(f, topicName) {
			matched = true
		}
	}
	if !matched {
		return 0, fmt.Errorf("edge did not subscribe for %s", topicName)
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topicName, Payload: payload}
	if qos > 0 {
		h.mu.Lock()
		h.pid++
		pk.PacketID = h.pid
		h.mu.Unlock()
	}
	return pk.PacketID, cl.WritePacket(pk)
}

func (h *fakeHub) pubackAt(id uint16) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	at, ok := h.pubacks[id]
	return at, ok
}

// handle serves a publish from the edge.
func (h *fakeHub) handle(cl *mqtt.Client, pk packets.Packet) {
	name := pk.TopicName
	if ext, rid, ok, err := edgeproto.ParseRequest(name); ok {
		if err != nil {
			h.t.Errorf("fake hub: %v", err)
			return
		}
		reply := func(status int, body []byte) {
			_, _ = h.send(edgeproto.ResponseTopic(status, rid), body, 0)
		}
		if ext == edgeproto.ReqPresence {
			h.presenceRequest(pk.Payload, reply)
			return
		}
		reply(h.extension(ext, pk.Payload))
		return
	}
	tp, err := topic.Parse(name)
	if err != nil {
		h.t.Errorf("fake hub: bad topic %q: %v", name, err)
		return
	}
	switch tp.Kind {
	case topic.KindTelemetry:
		k, eid, err := edgeproto.TakeReplayKey(tp.Bag)
		if err != nil {
			h.t.Errorf("fake hub: telemetry without a replay key: %q: %v", name, err)
			return
		}
		h.mu.Lock()
		h.got = append(h.got, received{device: tp.DeviceID, module: tp.ModuleID, edgeID: eid,
			key: k, seq: k.Seq, conn: h.connects, body: append([]byte(nil), pk.Payload...)})
		h.mu.Unlock()
	case topic.KindTwinGet:
		cid := tp.ClientID()
		h.mu.Lock()
		doc, ok := h.twins[cid]
		h.mu.Unlock()
		if !ok {
			_, _ = h.send(topic.OBOTwinResponse(cid, http.StatusNotFound, tp.RID, 0), errNoTwin.MQTTBody(), 0)
			return
		}
		_, _ = h.send(topic.OBOTwinResponse(cid, http.StatusOK, tp.RID, 0), []byte(doc), 0)
	case topic.KindTwinReported:
		cid := tp.ClientID()
		h.mu.Lock()
		h.reported[cid]++
		v := h.reported[cid]
		h.mu.Unlock()
		_, _ = h.send(topic.OBOTwinResponse(cid, http.StatusNoContent, tp.RID, v), nil, 0)
	case topic.KindMethodResponse:
		h.mu.Lock()
		ch := h.methodRes[tp.RID]
		h.mu.Unlock()
		if ch != nil {
			ch <- methodResult{status: tp.Status, body: append([]byte(nil), pk.Payload...)}
		}
	default:
		h.t.Errorf("fake hub: unexpected publish %q", name)
	}
}

// presenceRequest records a presence report and answers it, unless
// reports are held: then it answers once they are released, off the
// publish path, as a slow hub would.
func (h *fakeHub) presenceRequest(payload []byte, reply func(int, []byte)) {
	var r edgeproto.PresenceReport
	if err := json.Unmarshal(payload, &r); err != nil {
		h.t.Errorf("fake hub: presence report %s: %v", payload, err)
		reply(http.StatusBadRequest, []byte(`{"errorCode":400000}`))
		return
	}
	h.mu.Lock()
	h.presence = append(h.presence, presenceSeen{conn: h.connects, PresenceReport: r})
	hold := h.presenceHold
	h.mu.Unlock()
	if hold == nil {
		reply(http.StatusOK, []byte(`{}`))
		return
	}
	go func() {
		<-hold
		reply(http.StatusOK, []byte(`{}`))
	}()
}

// presenceReports returns the presence reports received so far.
func (h *fakeHub) presenceReports() []presenceSeen {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.presence)
}

// extension answers $outpost requests as the hub's device backend would.
func (h *fakeHub) extension(name string, payload []byte) (int, []byte) {
	switch name {
	case edgeproto.ReqStorePosition:
		var pos edgeproto.StorePosition
		if err := json.Unmarshal(payload, &pos); err != nil || pos.Check() != nil {
			return http.StatusBadRequest, []byte(`{"errorCode":400000}`)
		}
		h.mu.Lock()
		h.positions = append(h.positions, pos)
		next := max(h.storeNext, pos.Next)
		h.mu.Unlock()
		b, _ := json.Marshal(edgeproto.StorePositionReply{Next: next})
		return http.StatusOK, b
	case edgeproto.ReqSyncIdentities:
		snap := identity.ScopeSnapshot{HubHostName: testHost, RootCA: string(h.ca.CertPEM), SyncedAt: time.Unix(1700000000, 0).UTC()}
		snap.Edge.DeviceID = testEdge
		snap.Edge.Capabilities.IoTEdge = true
		snap.Devices = []identity.Device{{DeviceID: "child1"}}
		snap.Modules = []identity.Module{{DeviceID: testEdge, ModuleID: edgeHubModule}}
		b, _ := json.Marshal(snap)
		return http.StatusOK, b
	case edgeproto.ReqSignEdgeCA:
		csr, err := certs.ParseCSR(payload)
		if err != nil || csr.Subject.CommonName != testEdge {
			return errForeignCSR.Status, errForeignCSR.MQTTBody()
		}
		cert, err := h.ca.SignEdgeCA(payload, certs.CSRHosts(csr), 0)
		if err != nil {
			return http.StatusInternalServerError, []byte(`{"errorCode":500000}`)
		}
		b, _ := json.Marshal(map[string]string{"certificate": string(cert), "rootCA": string(h.ca.CertPEM)})
		return http.StatusOK, b
	}
	return http.StatusNotFound, []byte(`{"errorCode":404000}`)
}

// The fake hub's refusals in the hub's own shape, which the link reads
// back whole.
var (
	errNoTwin     = status.NotFound(status.CodeModuleNotFound, "no twin here")
	errForeignCSR = status.BadRequest(status.CodeArgumentInvalid, "the CSR names another edge")
)

// invoke calls a method on a client reached through the edge.
func (h *fakeHub) invoke(ctx context.Context, cid, name string, payload []byte) (methodResult, error) {
	rid := message.NewID()
	ch := make(chan methodResult, 1)
	h.mu.Lock()
	h.methodRes[rid] = ch
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.methodRes, rid)
		h.mu.Unlock()
	}()
	if _, err := h.send(topic.OBOMethodRequest(cid, name, rid), payload, 0); err != nil {
		return methodResult{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return methodResult{}, ctx.Err()
	}
}

type hubHook struct {
	mqtt.HookBase
	h *fakeHub
}

func (k *hubHook) ID() string { return "fake-hub" }

func (k *hubHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablished, mqtt.OnPacketRead, mqtt.OnPublish:
		return true
	}
	return false
}

func (k *hubHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	h := k.h
	h.mu.Lock()
	refuse := h.refuse
	h.mu.Unlock()
	if refuse || cl.ID != testEdge || string(pk.Connect.Username) != mqttUsername(testHost, testEdge) {
		return false
	}
	tok, err := sas.ParseToken(string(pk.Connect.Password))
	if err != nil || !tok.Verify(h.key) || !sas.MatchesDevice(tok, testHost, testEdge, "") {
		return false
	}
	return sas.Validate(tok, time.Now(), time.Minute) == nil
}

func (k *hubHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

func (k *hubHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	k.h.mu.Lock()
	k.h.edge = cl
	k.h.connects++
	k.h.mu.Unlock()
}

func (k *hubHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Puback {
		k.h.mu.Lock()
		k.h.pubacks[pk.PacketID] = time.Now()
		k.h.mu.Unlock()
	}
	return pk, nil
}

func (k *hubHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	k.h.mu.Lock()
	judge := k.h.judge
	k.h.mu.Unlock()
	if tp, err := topic.Parse(pk.TopicName); judge != nil && err == nil && tp.Kind == topic.KindTelemetry {
		switch reason, drop := judge(tp.DeviceID); {
		case drop:
			cl.Stop(errors.New("transient failure"))
			return pk, packets.ErrRejectPacket
		case reason != "":
			// The notice goes out before mochi writes the PUBACK.
			body, _ := json.Marshal(edgeproto.Refusal{PacketID: pk.PacketID, Reason: reason, Message: "refused by the fake hub"})
			if _, err := k.h.send(edgeproto.TopicRefusal, body, 0); err != nil {
				k.h.t.Errorf("fake hub: refusal notice: %v", err)
			}
			return pk, packets.CodeSuccessIgnore
		}
	}
	k.h.handle(cl, pk)
	return pk, packets.CodeSuccessIgnore // PUBACK, but route nothing
}

// fakeLocal is the edge side of deliveries, with function fields.
type fakeLocal struct {
	deliverC2D     func(ctx context.Context, deviceID string, msg *message.Message) error
	invokeMethod   func(ctx context.Context, deviceID, moduleID, name string, payload []byte) (int, []byte, error)
	desiredPatch   func(deviceID, moduleID string, version int64, patch []byte)
	edgeHubDesired func(desired []byte)
}

func (f *fakeLocal) DeliverC2D(ctx context.Context, deviceID string, msg *message.Message) error {
	if f.deliverC2D == nil {
		return errors.New("no such child")
	}
	return f.deliverC2D(ctx, deviceID, msg)
}

func (f *fakeLocal) InvokeMethod(ctx context.Context, deviceID, moduleID, name string, payload []byte) (int, []byte, error) {
	if f.invokeMethod == nil {
		return 0, nil, errors.New("no such child")
	}
	return f.invokeMethod(ctx, deviceID, moduleID, name, payload)
}

func (f *fakeLocal) DesiredPatch(deviceID, moduleID string, version int64, patch []byte) {
	if f.desiredPatch != nil {
		f.desiredPatch(deviceID, moduleID, version, patch)
	}
}

func (f *fakeLocal) EdgeHubDesired(desired []byte) {
	if f.edgeHubDesired != nil {
		f.edgeHubDesired(desired)
	}
}

// env is a link to a fake hub through a cuttable proxy.
type env struct {
	t     testing.TB
	hub   *fakeHub
	proxy *netfault.Proxy
	store *store.Store
	local *fakeLocal
	link  *Link
	obs   forwardCounter

	mu     sync.Mutex
	states []timedState
	cancel context.CancelFunc
	done   chan struct{}
}

// forwardCounter counts ObserveForwarded calls.
type forwardCounter struct{ n atomic.Int64 }

func (c *forwardCounter) ObserveForwarded(time.Duration) { c.n.Add(1) }

type timedState struct {
	at time.Time
	st State
}

type envOpts struct {
	keepAlive time.Duration
	window    int
	endpoints func() []string // Config.Endpoints
	setAside  func(SetAside)  // Config.OnSetAside
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	hub := newFakeHub(t)
	proxy, err := netfault.New(hub.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	st, err := store.Open(store.Config{Dir: t.TempDir(), MinFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := &env{t: t, hub: hub, proxy: proxy, store: st, local: &fakeLocal{}}
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	e.link, err = New(Config{
		HubHostName: testHost,
		DeviceID:    testEdge,
		Key:         hub.key,
		Addr:        proxy.Addr(),
		RootCAs:     hub.roots(),
		Store:       st,
		Local:       e.local,
		Logger:      logger,
		KeepAlive:   o.keepAlive,
		Window:      o.window,
		Endpoints:   o.endpoints,
		Observer:    &e.obs,
		OnSetAside:  o.setAside,
		OnState: func(s State) {
			e.mu.Lock()
			e.states = append(e.states, timedState{time.Now(), s})
			e.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// start runs the link until the test ends.
func (e *env) start() {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		if err := e.link.Run(ctx); err != nil {
			e.t.Errorf("run: %v", err)
		}
	}()
	e.t.Cleanup(e.stop)
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.cancel = nil
}

// connectedAfter returns when the link reported Connected == want at or
// after t0, or zero.
func (e *env) stateAfter(t0 time.Time, want bool) time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.states {
		if !s.at.Before(t0) && s.st.Connected == want {
			return s.at
		}
	}
	return time.Time{}
}

// appendN appends n messages from device (module optional) in batches.
func (e *env) appendN(n int, device, module string, size int) {
	e.t.Helper()
	e.appendTo(Endpoint, n, device, module, size)
}

// appendTo appends n messages from device (module optional) to endpoint
// in batches, and returns their sequences.
func (e *env) appendTo(endpoint string, n int, device, module string, size int) []uint64 {
	e.t.Helper()
	body := make([]byte, size)
	const batch = 1000
	var seqs []uint64
	for i := 0; i < n; i += batch {
		recs := make([]store.Record, 0, batch)
		for j := i; j < min(i+batch, n); j++ {
			recs = append(recs, store.Record{Endpoint: endpoint, Msg: &message.Message{
				DeviceID: device, ModuleID: module, Body: body,
				Properties: map[string]string{"i": strconv.Itoa(j)},
				System:     message.System{MessageID: "m" + strconv.Itoa(j), ConnDeviceID: device},
			}})
		}
		s, err := e.store.AppendRecords(context.Background(), recs)
		if err != nil {
			e.t.Fatal(err)
		}
		seqs = append(seqs, s...)
	}
	return seqs
}

func (e *env) queued() int64 { return e.store.Stats()[Endpoint].Len }

// checkFor polls fn until it returns nil or timeout passes.
func checkFor(t testing.TB, timeout, interval time.Duration, fn func() error) {
	t.Helper()
	poll.Check(t, timeout, interval, fn)
}
