package netfault

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// server runs handle for every connection to a listener on 127.0.0.1
// until the test ends, and counts the connections it accepted.
func server(t *testing.T, handle func(net.Conn)) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	return ln.Addr().String(), &accepted
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestLatencyWithJitter(t *testing.T) {
	p := newProxy(t, echoServer(t))
	const latency, jitter = 40 * time.Millisecond, 30 * time.Millisecond
	p.SetFaults(Faults{Latency: latency, Jitter: jitter})
	c := dial(t, p.Addr())
	r := bufio.NewReader(c)

	start := time.Now()
	if got, err := roundTrip(c, r, "ping"); err != nil || got != "ping" {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	rtt := time.Since(start)
	t.Logf("round trip %v (latency %v, jitter %v each way)", rtt, latency, jitter)
	if rtt < 2*latency {
		t.Errorf("round trip %v, want at least %v", rtt, 2*latency)
	}

	// Lines written one by one are chunks of their own, each with its
	// own jitter: they must still arrive in order.
	const n = 40
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		for i := range n {
			if _, err := fmt.Fprintf(c, "%d\n", i); err != nil {
				return
			}
			time.Sleep(time.Millisecond) // spread the writes over the jitter
		}
	}()
	for i := range n {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if got, _ := strconv.Atoi(line[:len(line)-1]); got != i {
			t.Fatalf("line %d arrived as %q: reordered", i, line)
		}
	}

	p.SetFaults(Faults{})
	start = time.Now()
	if _, err := roundTrip(c, r, "clean"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= latency {
		t.Errorf("round trip %v after the faults were cleared", d)
	}
}

func TestBandwidth(t *testing.T) {
	p := newProxy(t, echoServer(t))
	const bw = 64 << 10
	p.SetFaults(Faults{Bandwidth: bw})
	c := dial(t, p.Addr())
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<10) // 32 KiB
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	go func() { _, _ = c.Write(data) }()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	t.Logf("%d bytes echoed in %v under %d B/s each way", len(data), d, bw)
	if !bytes.Equal(got, data) {
		t.Fatal("data changed on the way")
	}
	// Both directions pipeline, so the echo takes about len/bw.
	if want := time.Duration(len(data)) * time.Second / bw * 8 / 10; d < want {
		t.Errorf("echo took %v, want at least %v", d, want)
	}
}

func TestSlicedWrites(t *testing.T) {
	const size = 600
	type result struct {
		reads int
		data  []byte
	}
	done := make(chan result, 1)
	addr, _ := server(t, func(c net.Conn) {
		var res result
		buf := make([]byte, 4096)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for len(res.data) < size {
			n, err := c.Read(buf)
			if n > 0 {
				res.reads++
				res.data = append(res.data, buf[:n]...)
			}
			if err != nil {
				break
			}
		}
		done <- res
	})
	p := newProxy(t, addr)
	p.SetFaults(Faults{SliceMax: 8, SliceDelay: 200 * time.Microsecond})
	c := dial(t, p.Addr())
	data := bytes.Repeat([]byte("sliced!"), size/7+1)[:size]
	if _, err := c.Write(data); err != nil { // one write, one segment
		t.Fatal(err)
	}
	res := <-done
	t.Logf("one write of %d bytes read in %d pieces", size, res.reads)
	if !bytes.Equal(res.data, data) {
		t.Fatal("data changed on the way")
	}
	// At most 8 bytes a slice: 75 slices at least. Reads may merge
	// slices that arrive close together, so ask for far fewer.
	if res.reads < 15 {
		t.Errorf("%d reads; want the write sliced into many", res.reads)
	}
}

func TestResetMidTransfer(t *testing.T) {
	p := newProxy(t, echoServer(t))
	const after = 8 << 10
	p.SetFaults(Faults{ResetAfter: after})
	c := dial(t, p.Addr())
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	chunk := bytes.Repeat([]byte("x"), 512)
	got := make([]byte, len(chunk))
	echoed := 0
	var err error
	for echoed < 4*after && err == nil {
		if _, err = c.Write(chunk); err == nil {
			if _, err = io.ReadFull(c, got); err == nil {
				echoed += len(chunk)
			}
		}
	}
	t.Logf("reset after %d bytes echoed: %v", echoed, err)
	if err == nil || isTimeout(err) {
		t.Fatalf("after %d bytes echoed: %v; want the connection reset", echoed, err)
	}
	// Both directions count: the reset comes by 3/2 ResetAfter in all.
	if echoed == 0 || 2*echoed > after*3/2 {
		t.Errorf("reset after %d bytes each way; want within (0, %d]", echoed, after*3/4)
	}
	if p.Resets() != 1 {
		t.Errorf("resets = %d, want 1", p.Resets())
	}
	// The link is up: a new connection works, with a budget of its own.
	c2 := dial(t, p.Addr())
	if got, err := roundTrip(c2, bufio.NewReader(c2), "again"); err != nil || got != "again" {
		t.Fatalf("after the reset: %q, %v", got, err)
	}
}

func TestBlackHole(t *testing.T) {
	addr, accepted := server(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	p := newProxy(t, addr)
	c := dial(t, p.Addr())
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "hello"); err != nil || got != "hello" {
		t.Fatalf("before: %q, %v", got, err)
	}

	p.BlackHole()
	silent := func(c net.Conn, r *bufio.Reader) {
		t.Helper()
		if _, err := io.WriteString(c, "lost\n"); err != nil {
			t.Fatalf("write into the black hole: %v", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := r.ReadString('\n'); !isTimeout(err) {
			t.Fatalf("read from the black hole: %v, want silence (a timeout)", err)
		}
	}
	silent(c, r)
	// A new connection is accepted, as by a host that never answers.
	c2 := dial(t, p.Addr())
	r2 := bufio.NewReader(c2)
	silent(c2, r2)
	if n := accepted.Load(); n != 1 {
		t.Errorf("target accepted %d connections, want 1: the black hole must not reach it", n)
	}

	if err := p.Restore(); err != nil {
		t.Fatal(err)
	}
	for i, rd := range []*bufio.Reader{r, r2} {
		_ = []net.Conn{c, c2}[i].SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := rd.ReadString('\n'); err == nil || isTimeout(err) {
			t.Errorf("connection %d that lived through the black hole: %v, want it closed", i, err)
		}
	}
	c3 := dial(t, p.Addr())
	if got, err := roundTrip(c3, bufio.NewReader(c3), "again"); err != nil || got != "again" {
		t.Fatalf("after restore: %q, %v", got, err)
	}

	// From a cut link too: the port accepts again, and answers nothing.
	p.Cut()
	p.BlackHole()
	c4 := dial(t, p.Addr())
	silent(c4, bufio.NewReader(c4))
	if err := p.Restore(); err != nil {
		t.Fatal(err)
	}
	c5 := dial(t, p.Addr())
	if got, err := roundTrip(c5, bufio.NewReader(c5), "back"); err != nil || got != "back" {
		t.Fatalf("after the second restore: %q, %v", got, err)
	}
}

// TestDataBeforeClose: what a server writes just before it closes reaches
// the client, then EOF, as over TCP, with and without latency. The proxy
// used to end the pair on the server's FIN, dropping the last bytes still
// on their way (an edge saw EOF where the hub had sent a refusing CONNACK).
func TestDataBeforeClose(t *testing.T) {
	want := bytes.Repeat([]byte("last words "), 1000)
	addr, _ := server(t, func(c net.Conn) { _, _ = c.Write(want) })
	for _, f := range []Faults{{}, {Latency: 50 * time.Millisecond}, {SliceMax: 100, SliceDelay: time.Millisecond}} {
		t.Run(fmt.Sprintf("%+v", f), func(t *testing.T) {
			p := newProxy(t, addr)
			p.SetFaults(f)
			for range 5 {
				c := dial(t, p.Addr())
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				got, err := io.ReadAll(c)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("read %d of %d bytes, then %v", len(got), len(want), err)
				}
				c.Close()
			}
		})
	}
}
