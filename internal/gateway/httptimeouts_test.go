package gateway

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"outpost/internal/topic"
)

func TestHTTPTimeoutsDefaults(t *testing.T) {
	s := &http.Server{ReadTimeout: time.Second, WriteTimeout: time.Second}
	HTTPTimeouts{}.Apply(s)
	if s.ReadHeaderTimeout != DefaultHTTPReadHeaderTimeout || s.IdleTimeout != DefaultHTTPIdleTimeout {
		t.Errorf("timeouts %v header, %v idle; want the defaults", s.ReadHeaderTimeout, s.IdleTimeout)
	}
	if s.ReadTimeout != 0 || s.WriteTimeout != 0 {
		t.Errorf("read timeout %v, write timeout %v: they would cut direct methods and slow uploads", s.ReadTimeout, s.WriteTimeout)
	}
	HTTPTimeouts{ReadHeader: time.Second, Idle: 2 * time.Second}.Apply(s)
	if s.ReadHeaderTimeout != time.Second || s.IdleTimeout != 2*time.Second {
		t.Errorf("timeouts %v header, %v idle; want 1s, 2s", s.ReadHeaderTimeout, s.IdleTimeout)
	}
}

// TestHTTPTimeouts serves the device HTTPS endpoint as the hub and the
// edge do (ServeTLS, so HTTP/2 too) with small timeouts: connections that
// carry no request are closed, a MQTT over WebSocket session is not.
func TestHTTPTimeouts(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := newEnv(t)
	e.be.addDevice("dev1", device{})
	srv := &http.Server{
		Handler:   e.srv.DeviceHTTPHandler(),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{e.pki.server}},
		ErrorLog:  log.New(io.Discard, "", 0), // the handshake timeouts below
	}
	HTTPTimeouts{ReadHeader: timeout, Idle: timeout}.Apply(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	addr := ln.Addr().String()

	// The session opens first, so it has outlived both timeouts once the
	// cases below have seen their connections closed.
	opts := e.pahoOptions("dev1", e.token("dev1", time.Hour))
	opts.Servers = nil
	opts.AddBroker("wss://" + addr + WebSocketPath)
	ws, err := e.connect(opts)
	if err != nil {
		t.Fatal(err)
	}
	in := make(inbox, 1)
	wait(t, ws.Subscribe(topic.FilterTwinResponses, 0, in.handler))

	dialTLS := func(t *testing.T, protos ...string) *tls.Conn {
		t.Helper()
		cfg := e.pki.clientTL.Clone()
		cfg.NextProtos = protos
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	tests := []struct {
		name string
		// open returns a connection the server should close, and what
		// to read from.
		open func(t *testing.T) (net.Conn, io.Reader)
	}{
		{"silent TCP connection", func(t *testing.T) (net.Conn, io.Reader) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c, c
		}},
		{"partial request header", func(t *testing.T) (net.Conn, io.Reader) {
			c := dialTLS(t)
			if _, err := io.WriteString(c, "GET /nothing HTTP/1.1\r\nHost: localhost\r\nX-Half"); err != nil {
				t.Fatal(err)
			}
			return c, c
		}},
		{"idle HTTP/1.1 keep-alive", func(t *testing.T) (net.Conn, io.Reader) {
			c := dialTLS(t)
			if _, err := io.WriteString(c, "GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.Close {
				t.Fatal("the server closed the connection after the request; want keep-alive")
			}
			return c, br
		}},
		{"idle HTTP/2 connection", func(t *testing.T) (net.Conn, io.Reader) {
			c := dialTLS(t, "h2")
			if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
				t.Fatalf("negotiated %q; want h2", p)
			}
			// The client preface and an empty SETTINGS frame.
			if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
				t.Fatal(err)
			}
			return c, c
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, r := tc.open(t)
			// Far above the timeout: reaching it means nothing closes
			// the connection.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, r)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the server left the connection open")
			}
		})
	}

	wait(t, ws.Publish(topic.TwinGet("after"), 0, false, ""))
	if m := in.next(t); !strings.HasPrefix(m.Topic(), "$iothub/twin/res/200/?$rid=after") {
		t.Fatalf("WebSocket session: topic %q", m.Topic())
	}
}
