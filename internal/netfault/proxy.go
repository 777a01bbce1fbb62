// Package netfault injects network faults into tests: a TCP proxy whose
// link can be cut (every connection dropped, new ones refused), stalled
// or made a black hole, and restored, or degraded while up (latency with
// jitter, a bandwidth cap, writes sliced into small pieces, resets in the
// middle of a transfer: Faults), so code under test sees a real outage
// rather than a mock.
package netfault

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Restore on a closed proxy.
var ErrClosed = errors.New("proxy closed")

// Proxy forwards TCP connections from a listener on 127.0.0.1 to a target.
type Proxy struct {
	target string
	addr   string // fixed at New so that Restore listens on the same port
	wg     sync.WaitGroup
	// stalled makes open connections a black hole: bytes are read and
	// dropped, nothing is closed, as when a route disappears.
	stalled atomic.Bool
	// blackHoled makes new connections stalled too (BlackHole).
	blackHoled atomic.Bool
	faults     atomic.Pointer[Faults]
	resets     atomic.Int64

	mu sync.Mutex
	// mu guards the following fields.
	ln     net.Listener // nil while cut
	conns  map[net.Conn]struct{}
	closed bool
	cuts   int
}

// New starts a proxy to target, listening on 127.0.0.1:0.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	p := &Proxy{target: target, addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	p.startLocked(ln)
	return p, nil
}

// Addr is the address clients dial; it stays the same across cuts.
func (p *Proxy) Addr() string { return p.addr }

// Cuts returns how many times Cut took the link down.
func (p *Proxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

func (p *Proxy) startLocked(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go p.accept(ln)
}

func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by Cut or Close
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	if p.blackHoled.Load() {
		p.swallow(c)
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	if !p.track(c, up) {
		_ = c.Close()
		_ = up.Close()
		return
	}
	p.newPair(c, up).run()
	p.untrack(c, up)
}

// track registers a connection pair unless the link was cut meanwhile.
func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil || p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

// Cut takes the link down: the listener closes, so new connections are
// refused, and every open connection is closed with a reset, so both
// ends see the loss at once.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutLocked()
}

func (p *Proxy) cutLocked() {
	if p.ln == nil {
		p.dropConnsLocked() // a stalled link may still hold connections
		return
	}
	_ = p.ln.Close()
	p.ln = nil
	p.cuts++
	p.dropConnsLocked()
}

func (p *Proxy) dropConnsLocked() {
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST rather than FIN: the link is gone
		}
		_ = c.Close()
		delete(p.conns, c)
	}
}

// Stall makes the link silent without closing anything: open
// connections stay up but every byte is dropped, and new connections are
// refused. Only keepalives can tell; Restore ends it.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return
	}
	p.stalled.Store(true)
	_ = p.ln.Close()
	p.ln = nil
	p.cuts++
}

// Restore brings the link back, listening again on the same address.
// Faults stay in force. Connections that lived through a Stall or a
// BlackHole are closed: their streams lost
// bytes, so they cannot go on.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.stalled.Swap(false) {
		p.blackHoled.Store(false)
		p.dropConnsLocked()
	}
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("proxy restore: %w", err)
	}
	p.startLocked(ln)
	return nil
}

// Close cuts the link for good and waits for the proxy's goroutines.
// It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.cutLocked()
	p.closed = true
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}
