// Package wsconn carries MQTT over a WebSocket as a net.Conn, for the
// gateway (server side), the device SDK and the test devices (client
// side), so that the framing rules exist once.
package wsconn

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

// Subprotocol is what the IoT SDKs ask for on $iothub/websocket.
const Subprotocol = "mqtt"

// ErrTextFrame is a text message on an MQTT stream, which MQTT over
// WebSocket forbids.
var ErrTextFrame = errors.New("websocket: text frame on an MQTT connection")

// Conn presents a WebSocket carrying MQTT as a byte stream: each Write
// is one binary message, and reads run across message boundaries, since
// MQTT packets need not align with them.
type Conn struct {
	ws *websocket.Conn

	rmu sync.Mutex // guards r; one reader at a time
	r   io.Reader  // current message; nil between messages

	wmu sync.Mutex // gorilla allows one concurrent writer; guards writes and the write deadline
}

// New wraps an established WebSocket.
func New(ws *websocket.Conn) *Conn { return &Conn{ws: ws} }

// Dial opens url (wss://host/$iothub/websocket) with the "mqtt"
// subprotocol; dial opens the socket (it may ignore the address and use
// its own), and TLS checks the URL's host.
func Dial(ctx context.Context, url string, tc *tls.Config, timeout time.Duration,
	dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*Conn, error) {
	d := websocket.Dialer{
		NetDialContext:   dial,
		TLSClientConfig:  tc,
		Subprotocols:     []string{Subprotocol},
		HandshakeTimeout: timeout,
	}
	ws, resp, err := d.DialContext(ctx, url, http.Header{})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("websocket: %w (HTTP %s)", err, resp.Status)
		}
		return nil, fmt.Errorf("websocket: %w", err)
	}
	if ws.Subprotocol() != Subprotocol {
		ws.Close()
		return nil, errors.New("websocket: server did not accept the mqtt subprotocol")
	}
	return New(ws), nil
}

func (c *Conn) Read(p []byte) (int, error) {
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
				return 0, ErrTextFrame
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

func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close closes the socket without a close frame, as a TCP stream ends.
func (c *Conn) Close() error                      { return c.ws.Close() }
func (c *Conn) LocalAddr() net.Addr               { return c.ws.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr              { return c.ws.RemoteAddr() }
func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline first sets the socket's deadline, which frees a Write
// blocked on it, then gorilla's own, a plain field its writer reads for
// every frame: it must not change while a frame is written (mochi
// refreshes deadlines from its read loop while PUBACKs are written from
// the pipeline).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	err := c.ws.UnderlyingConn().SetWriteDeadline(t)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return errors.Join(err, c.ws.SetWriteDeadline(t))
}

func (c *Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}
