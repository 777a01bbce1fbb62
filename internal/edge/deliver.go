package edge

import (
	"context"
	"errors"
	"slices"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/gateway"
)

const (
	// deliverBatch bounds the messages in flight to one local client.
	deliverBatch = 32
	// deliverRetryMax caps the wait before retrying a client that has
	// not subscribed yet (it connects, then subscribes).
	deliverRetryMax = time.Second
)

// worker delivers one local sink (all its priority endpoints) to one
// session of its consumer.
type worker struct {
	sess   gateway.Session
	eps    []string
	cancel context.CancelFunc
	done   chan struct{}
}

// localSink is a local destination and the store endpoints that hold
// messages for it, one per route priority.
type localSink struct {
	c   consumer
	eps []string // sorted
}

// localSinks lists the sinks that deliver to local clients, keyed by
// sink name: those the routes name and those whose endpoints still hold
// messages.
func (e *Edge) localSinks() map[string]*localSink {
	out := map[string]*localSink{}
	add := func(ep string) {
		c, ok := e.consumerOf(ep)
		if !ok {
			return
		}
		s, _, _ := splitEndpoint(ep)
		ls := out[s.String()]
		if ls == nil {
			ls = &localSink{c: c}
			out[s.String()] = ls
		}
		if !slices.Contains(ls.eps, ep) {
			ls.eps = append(ls.eps, ep)
		}
	}
	for _, r := range e.routeTable().Routes {
		add(e.storeEndpoint(r))
	}
	for ep := range e.st.Stats() {
		add(ep)
	}
	for _, ls := range out {
		slices.Sort(ls.eps)
	}
	return out
}

// startDeliveries makes sure each local sink whose consumer is connected
// has a worker on that consumer's current session.
func (e *Edge) startDeliveries() {
	sinks := e.localSinks()
	e.mu.Lock()
	defer e.mu.Unlock()
	for name, ls := range sinks {
		if s := e.sessions[ls.c.clientID()]; s != nil {
			e.startWorkerLocked(name, ls, s)
		}
	}
}

func (e *Edge) startWorkerLocked(name string, ls *localSink, s gateway.Session) {
	if e.stopping || e.runCtx == nil {
		return
	}
	prev := e.workers[name]
	if prev != nil && prev.sess == s && slices.Equal(prev.eps, ls.eps) {
		return
	}
	if prev != nil {
		prev.cancel()
	}
	ctx, cancel := context.WithCancel(e.runCtx)
	w := &worker{sess: s, eps: ls.eps, cancel: cancel, done: make(chan struct{})}
	e.workers[name] = w
	c := ls.c
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(w.done)
		defer cancel()
		if prev != nil {
			// Two readers of one endpoint would deliver out of order.
			<-prev.done
		}
		e.deliver(ctx, w.eps, c, w.sess)
		e.mu.Lock()
		if e.workers[name] == w {
			delete(e.workers, name)
		}
		e.mu.Unlock()
	}()
}

func (e *Edge) stopWorkersLocked(s gateway.Session) {
	for name, w := range e.workers {
		if w.sess == s {
			w.cancel()
			delete(e.workers, name)
		}
	}
}

// deliver sends the messages of a sink's endpoints to s, the highest
// priority first and each endpoint in stored order, a window at a time,
// acking each in the store once the client acknowledged it. It returns
// when ctx ends or the session is gone; what was not acknowledged stays
// stored for the client's return (within TTL).
func (e *Edge) deliver(ctx context.Context, eps []string, c consumer, s gateway.Session) {
	readers := make(map[string]*store.Reader, len(eps))
	list := make([]*store.Reader, 0, len(eps))
	for _, ep := range eps {
		r, err := e.st.NewReader(ep)
		if err != nil {
			e.log.Error("local delivery: open endpoint", "endpoint", ep, "error", err)
			return
		}
		readers[ep] = r
		list = append(list, r)
	}
	var wait time.Duration
	for {
		entries, err := e.st.NextByPriority(ctx, list, deliverBatch)
		if err != nil || len(entries) == 0 {
			return
		}
		ep := entries[0].Endpoint
		r := readers[ep]
		// Send in order, stopping at the first send that fails at once
		// (not subscribed yet): sending the rest would deliver them ahead
		// of it if the client subscribes meanwhile.
		acks := make([]<-chan error, 0, len(entries))
		var failed error
	send:
		for _, en := range entries {
			var ch <-chan error
			if c.input != "" {
				en.Msg.System.InputName = c.input
				ch = s.SendInput(c.input, en.Msg)
			} else {
				ch = s.SendC2D(en.Msg)
			}
			select {
			case err := <-ch:
				done := make(chan error, 1)
				done <- err
				acks = append(acks, done)
				if err != nil && !errors.Is(err, gateway.ErrMessageTooLarge) {
					break send
				}
			default:
				acks = append(acks, ch)
			}
		}
		var last uint64
	collect:
		for i, ch := range acks {
			select {
			case err := <-ch:
				if errors.Is(err, gateway.ErrMessageTooLarge) {
					// Can never be delivered; intake should have refused it.
					e.log.Error("local delivery: dropping message too large for the client", "endpoint", ep, "seq", entries[i].Seq)
					err = nil
				}
				if err != nil {
					failed = err
					break collect
				}
				last = entries[i].Seq
			case <-ctx.Done():
				return
			}
		}
		if last != 0 {
			if err := r.Ack(last); err != nil {
				e.log.Error("local delivery: ack", "endpoint", ep, "error", err)
				return
			}
		}
		if failed == nil {
			wait = 0
			continue
		}
		if errors.Is(failed, gateway.ErrNotConnected) || errors.Is(failed, gateway.ErrConnectionLost) {
			return
		}
		// Typically ErrNotSubscribed: the client connected and has not
		// subscribed to its inputs (or C2D) yet.
		r.Rewind()
		wait = min(max(2*wait, 50*time.Millisecond), deliverRetryMax)
		e.log.Debug("local delivery: client not ready", "endpoint", ep, "error", failed, "retryIn", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}
