package dataplane

import (
	"context"
	"errors"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"outpost/internal/message"
)

// presenceShards is how many writers record connection state and
// activity. Events of one identity always go to the same writer, so
// they are written in the order the gateway reported them; several
// writers keep a connection storm from queueing behind one KV round trip.
const presenceShards = 4

type presenceKind int

const (
	presConnected presenceKind = iota + 1
	presDisconnected
	presActivity
	presReport   // an edge's presence report
	presEdgeGone // an edge's link ended: what it reported is over
)

// presenceEvent is one write to do. For presReport and presEdgeGone,
// deviceID is the edge's and session its link's, so they are written in
// order with each other and with the edge's own Connected.
type presenceEvent struct {
	kind            presenceKind
	deviceID, modID string
	session         string        // for all but presActivity
	report          *edgePresence // for presReport
}

// edgePresence is an edge's presence report, checked.
type edgePresence struct {
	full                    bool
	connected, disconnected []clientRef
}

// clientRef names a device (moduleID empty) or a module.
type clientRef struct{ deviceID, moduleID string }

// writeTimeout bounds one presence write.
const writeTimeout = 10 * time.Second

// viaSession is the session id of a child's connection through an edge:
// the edge link's session, so the end of that link ends it too.
func viaSession(edgeSession, clientID string) string { return edgeSession + "/" + clientID }

// presenceWriter records the gateway's presence events in the hub's
// registry off the connection goroutines, which must not wait for KV.
type presenceWriter struct {
	p      *Plane
	seed   maphash.Seed
	shards [presenceShards]presenceShard
	// pending holds the identities with an activity write queued, so a
	// burst of telemetry queues one write, not one per message.
	pending sync.Map
	// queued counts events not yet written, so tests know when the
	// registry has caught up.
	queued atomic.Int64
}

// presenceShard is an unbounded FIFO: Connected and Disconnected must
// never be dropped, and the queue is bounded in practice by the number
// of connections and identities.
type presenceShard struct {
	mu    sync.Mutex
	queue []presenceEvent
	wake  chan struct{}
}

func newPresenceWriter(p *Plane) *presenceWriter {
	w := &presenceWriter{p: p, seed: maphash.MakeSeed()}
	for i := range w.shards {
		w.shards[i].wake = make(chan struct{}, 1)
	}
	return w
}

// start runs the writers until the plane's context ends; they then
// write what is still queued (bounded by a timeout) and return.
func (w *presenceWriter) start() {
	for i := range w.shards {
		sh := &w.shards[i]
		p := w.p
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			w.run(sh)
		}()
	}
}

func (w *presenceWriter) enqueue(ev presenceEvent) {
	sh := &w.shards[maphash.String(w.seed, message.ClientID(ev.deviceID, ev.modID))%presenceShards]
	w.queued.Add(1)
	sh.mu.Lock()
	sh.queue = append(sh.queue, ev)
	sh.mu.Unlock()
	select {
	case sh.wake <- struct{}{}:
	default:
	}
}

func (w *presenceWriter) connected(deviceID, moduleID, session string) {
	w.enqueue(presenceEvent{kind: presConnected, deviceID: deviceID, modID: moduleID, session: session})
}

func (w *presenceWriter) disconnected(deviceID, moduleID, session string) {
	w.enqueue(presenceEvent{kind: presDisconnected, deviceID: deviceID, modID: moduleID, session: session})
}

// reported queues an edge's presence report, made on its link session.
func (w *presenceWriter) reported(edgeID, session string, r *edgePresence) {
	w.enqueue(presenceEvent{kind: presReport, deviceID: edgeID, session: session, report: r})
}

// edgeGone queues the end of the children an edge reported on session.
func (w *presenceWriter) edgeGone(edgeID, session string) {
	w.enqueue(presenceEvent{kind: presEdgeGone, deviceID: edgeID, session: session})
}

// activity queues an activity write unless the hub's record is recent
// enough or a write is queued already.
func (w *presenceWriter) activity(deviceID, moduleID string) {
	if !w.p.h.ActivityDue(deviceID, moduleID) {
		return
	}
	key := message.ClientID(deviceID, moduleID)
	if _, queued := w.pending.LoadOrStore(key, struct{}{}); queued {
		return
	}
	w.enqueue(presenceEvent{kind: presActivity, deviceID: deviceID, modID: moduleID})
}

func (w *presenceWriter) run(sh *presenceShard) {
	ctx := w.p.ctx
	for {
		sh.mu.Lock()
		batch := sh.queue
		sh.queue = nil
		sh.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-sh.wake:
				continue
			case <-ctx.Done():
			}
			// Closing: write what came in meanwhile, then stop. The hub
			// marks this instance's sessions Disconnected when it closes.
			sh.mu.Lock()
			batch = sh.queue
			sh.queue = nil
			sh.mu.Unlock()
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for _, ev := range batch {
				w.write(dctx, ev)
			}
			cancel()
			return
		}
		for _, ev := range batch {
			w.write(context.Background(), ev)
		}
	}
}

// write does one event's writes, each bounded by writeTimeout and all by
// parent.
func (w *presenceWriter) write(parent context.Context, ev presenceEvent) {
	h := w.p.h
	do := func(f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(parent, writeTimeout)
		defer cancel()
		return f(ctx)
	}
	var err error
	switch ev.kind {
	case presConnected:
		err = do(func(ctx context.Context) error { return h.SetConnected(ctx, ev.deviceID, ev.modID, ev.session) })
	case presDisconnected:
		err = do(func(ctx context.Context) error { return h.SetDisconnected(ctx, ev.deviceID, ev.modID, ev.session) })
	case presActivity:
		w.pending.Delete(message.ClientID(ev.deviceID, ev.modID))
		err = do(func(ctx context.Context) error { return h.TouchActivity(ctx, ev.deviceID, ev.modID) })
	case presReport:
		err = w.writeReport(ev, do)
	case presEdgeGone:
		prefix := viaSession(ev.session, "")
		err = do(func(ctx context.Context) error {
			return h.DisconnectVia(ctx, ev.deviceID, func(s string) bool { return strings.HasPrefix(s, prefix) })
		})
	}
	w.queued.Add(-1)
	if err != nil {
		w.p.log.Warn("record presence", "device", ev.deviceID, "module", ev.modID, "err", err)
	}
}

// writeReport records an edge's report. A full one ends the edge's
// Connected records of other link sessions (an earlier link of the edge,
// possibly to another hub instance) that this session has not reported:
// the edge's current set replaces them.
func (w *presenceWriter) writeReport(ev presenceEvent, do func(func(context.Context) error) error) error {
	h := w.p.h
	r := ev.report
	var errs []error
	for _, c := range r.connected {
		sess := viaSession(ev.session, message.ClientID(c.deviceID, c.moduleID))
		errs = append(errs, do(func(ctx context.Context) error {
			return h.SetConnectedVia(ctx, c.deviceID, c.moduleID, ev.deviceID, sess)
		}))
	}
	for _, c := range r.disconnected {
		sess := viaSession(ev.session, message.ClientID(c.deviceID, c.moduleID))
		errs = append(errs, do(func(ctx context.Context) error {
			return h.SetDisconnected(ctx, c.deviceID, c.moduleID, sess)
		}))
	}
	if r.full {
		prefix := viaSession(ev.session, "")
		errs = append(errs, do(func(ctx context.Context) error {
			return h.DisconnectVia(ctx, ev.deviceID, func(s string) bool { return !strings.HasPrefix(s, prefix) })
		}))
	}
	return errors.Join(errs...)
}
