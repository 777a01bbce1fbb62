package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

func tlsClient(raw net.Conn, tc *tls.Config) *tls.Conn { return tls.Client(raw, tc) }

// dialWebSocket opens wss://host/$iothub/websocket with the "mqtt"
// subprotocol; the socket goes to dialAddr while TLS checks the URL's host.
func dialWebSocket(ctx context.Context, u, dialAddr string, tc *tls.Config,
	dial func(ctx context.Context, network, addr string) (net.Conn, error)) (net.Conn, error) {
	d := websocket.Dialer{
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dial(ctx, network, dialAddr)
		},
		TLSClientConfig:  tc,
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: 30 * time.Second,
	}
	ws, resp, err := d.DialContext(ctx, u, http.Header{})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("websocket: %w (HTTP %s)", err, resp.Status)
		}
		return nil, fmt.Errorf("websocket: %w", err)
	}
	if ws.Subprotocol() != "mqtt" {
		ws.Close()
		return nil, errors.New("websocket: server did not accept the mqtt subprotocol")
	}
	return &wsConn{ws: ws}, nil
}

// wsConn presents a WebSocket carrying MQTT as a byte stream: each Write
// is one binary message, and reads run across message boundaries, since
// MQTT packets need not align with them.
type wsConn struct {
	ws *websocket.Conn

	rmu sync.Mutex // guards r; one reader at a time
	r   io.Reader

	wmu sync.Mutex // gorilla allows one concurrent writer
}

// newWSConn wraps an established WebSocket.
func newWSConn(ws *websocket.Conn) *wsConn { return &wsConn{ws: ws} }

func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					return 0, io.EOF
				}
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errors.New("websocket: text message on an mqtt stream")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
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

func (c *wsConn) Close() error                      { return c.ws.Close() }
func (c *wsConn) LocalAddr() net.Addr               { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr              { return c.ws.RemoteAddr() }
func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline first sets the socket's deadline, which frees a Write
// blocked on it, then gorilla's own, which it applies to every frame and
// which must not change while a frame is written.
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	err := c.ws.UnderlyingConn().SetWriteDeadline(t)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return errors.Join(err, c.ws.SetWriteDeadline(t))
}

func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}
