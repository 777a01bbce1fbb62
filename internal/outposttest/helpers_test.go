package outposttest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/message"
)

// publisher numbers a device's messages (property Seq, from 1) and
// remembers which the edge acknowledged.
type publisher struct {
	c  *client.Client
	id string

	mu sync.Mutex
	// mu guards the following fields.
	next  int
	acked []int
	fails []error // send attempts that got no PUBACK
}

func newPublisher(c *client.Client) *publisher {
	return &publisher{c: c, id: c.DeviceID(), next: 1}
}

func seqMessage(seq int) *message.Message {
	return &message.Message{
		Body:       fmt.Appendf(nil, `{"seq":%d}`, seq),
		Properties: map[string]string{Seq: strconv.Itoa(seq)},
	}
}

// try sends the next message once and reports the outcome; a message
// without a PUBACK is sent again, with the same Seq, by the next try.
func (p *publisher) try(ctx context.Context) error {
	p.mu.Lock()
	seq := p.next
	p.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := p.c.Send(sctx, seqMessage(seq))
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil && ctx.Err() != nil {
		return err // stopped by the caller: not a send that failed
	}
	if err != nil {
		p.fails = append(p.fails, err)
		return err
	}
	p.acked = append(p.acked, seq)
	p.next++
	return nil
}

// sendN sends n messages, each until acknowledged, riding out
// reconnects of the client.
func (p *publisher) sendN(t testing.TB, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for sent := 0; sent < n; {
		if err := p.try(ctx); err != nil {
			if ctx.Err() != nil || errors.Is(err, client.ErrClosed) {
				t.Fatalf("%s: sent %d of %d: %v", p.id, sent, n, err)
			}
			// Not connected, or the connection dropped: wait for the
			// client's own reconnect, then send the same message again.
			if werr := p.c.WaitConnected(ctx); werr != nil {
				t.Fatalf("%s: no reconnect after %v: %v", p.id, err, werr)
			}
			continue
		}
		sent++
	}
}

func (p *publisher) ackedSeqs() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.acked...)
}

func (p *publisher) ackedLen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

func (p *publisher) failures() []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]error(nil), p.fails...)
}

// fleet is publishers sending in the background, each one message every
// interval, until stop.
type fleet struct {
	pubs   []*publisher
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startFleet(t testing.TB, every time.Duration, pubs ...*publisher) *fleet {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{pubs: pubs, cancel: cancel}
	for _, p := range pubs {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				// A send is not cut short by stop: it finishes (acked or
				// failed), so every message sent is accounted for.
				if p.try(context.Background()) != nil && ctx.Err() == nil {
					_ = p.c.WaitConnected(ctx)
				}
			}
		}()
	}
	t.Cleanup(f.stop)
	return f
}

func (f *fleet) stop() {
	f.cancel()
	f.wg.Wait()
}

// awaitMore waits until every publisher has n more acknowledged messages
// than it had when called.
func (f *fleet) awaitMore(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	base := make([]int, len(f.pubs))
	for i, p := range f.pubs {
		base[i] = p.ackedLen()
	}
	CheckFor(t, timeout, 10*time.Millisecond, func() error {
		for i, p := range f.pubs {
			if got := p.ackedLen() - base[i]; got < n {
				return fmt.Errorf("%s: %d of %d more acknowledged", p.id, got, n)
			}
		}
		return nil
	})
}

func ackedBy(pubs ...*publisher) map[string][]int {
	out := map[string][]int{}
	for _, p := range pubs {
		out[p.id] = append(out[p.id], p.ackedSeqs()...)
	}
	return out
}

// story is the common start: a hub, an edge with children, running and
// synced, and a monitor on the hub's telemetry.
type story struct {
	env  *Env
	node *EdgeNode
	mon  *Monitor
}

func newStory(t *testing.T, children []string, opts ...EdgeOption) story {
	t.Helper()
	env := NewEnv(t)
	env.CreateEdge("edge1")
	for _, id := range children {
		env.CreateDevice(id)
	}
	if len(children) > 0 {
		env.AddChildren("edge1", children...)
	}
	node := env.StartEdge(t, "edge1", opts...)
	return story{env: env, node: node, mon: env.Monitor(t)}
}
