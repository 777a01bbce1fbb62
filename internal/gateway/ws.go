package gateway

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// WebSocketPath is where the IoT SDKs open MQTT over WebSocket
// (wss://{host}:443/$iothub/websocket).
const WebSocketPath = "/$iothub/websocket"

// WebSocketHandler serves MQTT over WebSocket (subprotocol "mqtt") for
// WebSocketPath on the HTTPS listener. Each connection runs in the
// handler's goroutine until it ends; Shutdown waits for them, since
// http.Server.Shutdown does not wait for hijacked connections.
func (s *Server) WebSocketHandler() http.Handler {
	up := websocket.Upgrader{
		// mqtt.js asks for "mqtt"; some older clients for "mqttv3.1".
		Subprotocols: []string{"mqtt", "mqttv3.1"},
		// Devices authenticate in CONNECT, not with cookies, so there is
		// nothing for a cross-origin page to borrow; SDKs in browsers
		// send an Origin that must be accepted.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if take(r.Context(), s.accepts, 1) != nil {
			return // the client went away while held back
		}
		if !s.startConn() {
			http.Error(w, "server shutting down", http.StatusServiceUnavailable)
			return
		}
		defer s.wg.Done()
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered the client
		}
		ws.SetReadLimit(int64(s.cfg.MaxMessageSize) + 128*1024)
		s.serveConn(&wsConn{ws: ws}, "mqtt-ws", r.TLS)
	})
}

// wsConn is a WebSocket carrying an MQTT byte stream, as a net.Conn.
// MQTT packets may span WebSocket messages and the reverse, so reads
// continue across message boundaries.
type wsConn struct {
	ws *websocket.Conn
	r  io.Reader // current message; nil between messages

	wmu sync.Mutex // gorilla allows one concurrent writer; guards writes and the write deadline
}

var errTextFrame = errors.New("websocket: text frame on an MQTT connection")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error                      { return c.ws.NetConn().Close() }
func (c *wsConn) LocalAddr() net.Addr               { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr              { return c.ws.RemoteAddr() }
func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline takes the write lock: gorilla's deadline is a plain
// field its writer reads, and mochi refreshes deadlines from the read
// loop while PUBACKs are written from the pipeline.
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.SetWriteDeadline(t)
}

func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}
