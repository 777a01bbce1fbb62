package netfault

import (
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Faults degrade a link that is up, as a poor WAN or a mobile link
// would; the zero value is a clean link. They apply to both directions
// of every connection, open ones included, from the next chunk on.
type Faults struct {
	// Latency delays every chunk by Latency plus a random part of
	// Jitter. Bytes keep their order, as TCP's do: a chunk is never
	// delivered before the one read before it.
	Latency, Jitter time.Duration
	// Bandwidth caps each direction of each connection, in bytes a
	// second; 0 is no cap.
	Bandwidth int
	// SliceMax, when above 0, splits what is forwarded into writes of 1
	// to SliceMax bytes (random sizes), SliceDelay apart, so the peer
	// reads packets cut at any byte.
	SliceMax   int
	SliceDelay time.Duration
	// ResetAfter, when above 0, resets a connection (RST to both ends)
	// once it has carried, both directions together, a random number of
	// bytes between ResetAfter/2 and 3*ResetAfter/2, drawn per
	// connection: a link that keeps breaking in the middle of a transfer.
	ResetAfter int64
}

// SetFaults puts f in force; Faults{} makes the link clean again.
func (p *Proxy) SetFaults(f Faults) { p.faults.Store(&f) }

// Resets counts the connections ResetAfter has reset.
func (p *Proxy) Resets() int { return int(p.resets.Load()) }

// BlackHole makes the link accept and never answer: new connections are
// accepted but never reach the target, every byte on open and new ones
// is dropped, and nothing is closed. A dial succeeds; the handshake
// after it hangs. Restore ends it and closes those connections.
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if p.ln != nil && !p.stalled.Load() {
		p.cuts++
	}
	p.stalled.Store(true)
	p.blackHoled.Store(true)
	if p.ln == nil {
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			return // the port was taken meanwhile: the link stays cut
		}
		p.startLocked(ln)
	}
}

// swallow holds an accepted connection open, reading and dropping all it
// sends, until Restore, Cut or Close closes it.
func (p *Proxy) swallow(c net.Conn) {
	if !p.track(c) {
		_ = c.Close()
		return
	}
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	_ = c.Close()
	p.untrack(c)
}

// chunk is bytes read from one end, due at the other at due.
type chunk struct {
	b   []byte
	due time.Time
}

// maxChunk bounds one read, so that pacing under a bandwidth cap is
// smooth and a reset can fall within a transfer.
const maxChunk = 16 << 10

// pair is one proxied connection: client c, target up. Each direction
// runs a reader, which stamps chunks with their due time, and a writer,
// which delivers them; the first direction to end ends both.
type pair struct {
	p      *Proxy
	c, up  net.Conn
	done   chan struct{}
	once   sync.Once
	budget int64 // bytes until a reset; 0 for none
	moved  atomic.Int64
}

func (p *Proxy) newPair(c, up net.Conn) *pair {
	pr := &pair{p: p, c: c, up: up, done: make(chan struct{})}
	if f := p.faults.Load(); f != nil && f.ResetAfter > 0 {
		pr.budget = f.ResetAfter/2 + rand.Int64N(f.ResetAfter+1)
	}
	return pr
}

// run forwards both directions until one ends.
func (pr *pair) run() {
	var wg sync.WaitGroup
	for _, d := range [][2]net.Conn{{pr.up, pr.c}, {pr.c, pr.up}} {
		ch := make(chan chunk, 64)
		wg.Go(func() { pr.read(d[1], ch) })
		wg.Go(func() { pr.write(d[0], ch) })
	}
	wg.Wait()
}

// end closes both connections once; reset makes it an RST.
func (pr *pair) end(reset bool) {
	pr.once.Do(func() {
		close(pr.done)
		for _, c := range []net.Conn{pr.c, pr.up} {
			if tc, ok := c.(*net.TCPConn); ok && reset {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
		}
	})
}

func (pr *pair) read(src net.Conn, out chan<- chunk) {
	defer close(out)
	var last time.Time
	for {
		buf := make([]byte, maxChunk)
		n, err := src.Read(buf)
		if n > 0 {
			if pr.budget > 0 && pr.moved.Add(int64(n)) >= pr.budget {
				pr.p.resets.Add(1)
				pr.end(true)
				return
			}
			due := time.Now()
			if f := pr.p.faults.Load(); f != nil && (f.Latency > 0 || f.Jitter > 0) {
				due = due.Add(f.Latency)
				if f.Jitter > 0 {
					due = due.Add(rand.N(f.Jitter))
				}
				if due.Before(last) {
					due = last // TCP delivers in order
				}
				last = due
			}
			select {
			case out <- chunk{b: buf[:n], due: due}:
			case <-pr.done:
				return
			}
		}
		if err != nil {
			// Not end: what was read before the close is still on its way
			// (write ends the pair once it has written it), as TCP
			// delivers the data before the FIN.
			return
		}
	}
}

func (pr *pair) write(dst net.Conn, in <-chan chunk) {
	var paced time.Time // when the bandwidth cap lets the next byte go
	for ch := range in {
		if !pr.sleepUntil(ch.due) {
			return
		}
		b := ch.b
		for len(b) > 0 {
			f := pr.p.faults.Load()
			if f == nil {
				f = &Faults{}
			}
			n := len(b)
			if f.SliceMax > 0 {
				n = min(n, 1+rand.IntN(f.SliceMax))
			}
			if f.Bandwidth > 0 {
				// At most a tenth of a second's worth at a time, so pacing
				// is smooth.
				n = min(n, max(f.Bandwidth/10, 1))
				if !pr.sleepUntil(paced) {
					return
				}
				paced = later(paced, time.Now()).Add(time.Duration(n) * time.Second / time.Duration(f.Bandwidth))
			}
			if pr.p.stalled.Load() {
				b = nil // a black hole: dropped, nothing closed
				break
			}
			if _, err := dst.Write(b[:n]); err != nil {
				pr.end(false)
				return
			}
			b = b[n:]
			if len(b) > 0 && f.SliceDelay > 0 && !pr.sleepUntil(time.Now().Add(f.SliceDelay)) {
				return
			}
		}
	}
	pr.end(false)
}

// sleepUntil waits until t, and reports false if the pair ended first.
func (pr *pair) sleepUntil(t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		select {
		case <-pr.done:
			return false
		default:
			return true
		}
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-pr.done:
		return false
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
