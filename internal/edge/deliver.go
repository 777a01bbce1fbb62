package edge

import (
	"context"
	"errors"
	"time"

	"outpost/internal/gateway"
)

const (
	// deliverBatch bounds the messages in flight to one local client.
	deliverBatch = 32
	// deliverRetryMax caps the wait before retrying a client that has
	// not subscribed yet (it connects, then subscribes).
	deliverRetryMax = time.Second
)

// worker delivers one local endpoint to one session of its consumer.
type worker struct {
	sess   gateway.Session
	cancel context.CancelFunc
	done   chan struct{}
}

// localEndpoints lists the endpoints that deliver to local clients: those
// the routes name and those already holding messages.
func (e *Edge) localEndpoints() map[string]consumer {
	out := map[string]consumer{}
	add := func(ep string) {
		if c, ok := e.consumerOf(ep); ok {
			out[ep] = c
		}
	}
	for _, r := range e.routeTable().Routes {
		add(r.Sink.String())
	}
	for ep := range e.st.Stats() {
		add(ep)
	}
	return out
}

// startDeliveries makes sure each local endpoint whose consumer is
// connected has a worker on that consumer's current session.
func (e *Edge) startDeliveries() {
	eps := e.localEndpoints()
	e.mu.Lock()
	defer e.mu.Unlock()
	for ep, c := range eps {
		if s := e.sessions[c.clientID()]; s != nil {
			e.startWorkerLocked(ep, c, s)
		}
	}
}

func (e *Edge) startWorkerLocked(ep string, c consumer, s gateway.Session) {
	if e.stopping || e.runCtx == nil {
		return
	}
	prev := e.workers[ep]
	if prev != nil && prev.sess == s {
		return
	}
	if prev != nil {
		prev.cancel()
	}
	ctx, cancel := context.WithCancel(e.runCtx)
	w := &worker{sess: s, cancel: cancel, done: make(chan struct{})}
	e.workers[ep] = w
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(w.done)
		defer cancel()
		if prev != nil {
			// Two readers of one endpoint would deliver out of order.
			<-prev.done
		}
		e.deliver(ctx, ep, c, w.sess)
		e.mu.Lock()
		if e.workers[ep] == w {
			delete(e.workers, ep)
		}
		e.mu.Unlock()
	}()
}

func (e *Edge) stopWorkersLocked(s gateway.Session) {
	for ep, w := range e.workers {
		if w.sess == s {
			w.cancel()
			delete(e.workers, ep)
		}
	}
}

// deliver sends ep's messages in stored order to s, a window at a time,
// acking each in the store once the client acknowledged it. It returns
// when ctx ends or the session is gone; what was not acknowledged stays
// stored for the client's return (within TTL).
func (e *Edge) deliver(ctx context.Context, ep string, c consumer, s gateway.Session) {
	r, err := e.st.NewReader(ep)
	if err != nil {
		e.log.Error("local delivery: open endpoint", "endpoint", ep, "error", err)
		return
	}
	var wait time.Duration
	for {
		entries, err := r.Next(ctx, deliverBatch)
		if err != nil {
			return
		}
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
		if errors.Is(failed, gateway.ErrNotConnected) {
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
