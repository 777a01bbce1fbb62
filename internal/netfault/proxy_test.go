package netfault

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// echoServer echoes lines back until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, line string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return got[:len(got)-1], nil
}

func TestProxyCutRestore(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addr := p.Addr()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "hello"); err != nil || got != "hello" {
		t.Fatalf("before cut: %q, %v", got, err)
	}

	p.Cut()
	t.Run("open connection dropped", func(t *testing.T) {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := r.ReadString('\n')
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("read after cut: %v, want a connection error", err)
		}
	})
	t.Run("new connections refused", func(t *testing.T) {
		c2, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c2.Close()
			t.Fatal("dial during cut succeeded")
		}
	})
	t.Run("restore on the same address", func(t *testing.T) {
		if err := p.Restore(); err != nil {
			t.Fatal(err)
		}
		if p.Addr() != addr {
			t.Fatalf("addr changed: %s -> %s", addr, p.Addr())
		}
		c3, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c3.Close()
		if got, err := roundTrip(c3, bufio.NewReader(c3), "again"); err != nil || got != "again" {
			t.Fatalf("after restore: %q, %v", got, err)
		}
	})
	if p.Cuts() != 1 {
		t.Fatalf("cuts = %d, want 1", p.Cuts())
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	if err := p.Restore(); !errors.Is(err, ErrClosed) {
		t.Fatalf("restore after close: %v", err)
	}
}

func TestProxyStall(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "hello"); err != nil || got != "hello" {
		t.Fatalf("before stall: %q, %v", got, err)
	}
	p.Stall()
	if _, err := io.WriteString(c, "lost\n"); err != nil {
		t.Fatalf("write during stall: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err = r.ReadString('\n')
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read during stall: %v, want a timeout (silence)", err)
	}
	if err := p.Restore(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection that lived through a stall still works")
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, bufio.NewReader(c2), "again"); err != nil || got != "again" {
		t.Fatalf("after restore: %q, %v", got, err)
	}
}
