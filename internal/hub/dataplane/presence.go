package dataplane

import (
	"context"
	"hash/maphash"
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
)

type presenceEvent struct {
	kind            presenceKind
	deviceID, modID string
	session         string // for presConnected and presDisconnected
	activityKey     string // for presActivity: the pending entry to clear
}

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
	w.enqueue(presenceEvent{kind: presActivity, deviceID: deviceID, modID: moduleID, activityKey: key})
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
			wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			w.write(wctx, ev)
			cancel()
		}
	}
}

func (w *presenceWriter) write(ctx context.Context, ev presenceEvent) {
	h := w.p.h
	var err error
	switch ev.kind {
	case presConnected:
		err = h.SetConnected(ctx, ev.deviceID, ev.modID, ev.session)
	case presDisconnected:
		err = h.SetDisconnected(ctx, ev.deviceID, ev.modID, ev.session)
	case presActivity:
		w.pending.Delete(ev.activityKey)
		err = h.TouchActivity(ctx, ev.deviceID, ev.modID)
	}
	w.queued.Add(-1)
	if err != nil {
		w.p.log.Warn("record presence", "device", ev.deviceID, "module", ev.modID, "err", err)
	}
}
