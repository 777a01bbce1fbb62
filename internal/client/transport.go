package client

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"outpost/internal/wsconn"
)

func tlsClient(raw net.Conn, tc *tls.Config) *tls.Conn { return tls.Client(raw, tc) }

// dialWebSocket opens wss://host/$iothub/websocket with the "mqtt"
// subprotocol; the socket goes to dialAddr while TLS checks the URL's host.
func dialWebSocket(ctx context.Context, u, dialAddr string, tc *tls.Config,
	dial func(ctx context.Context, network, addr string) (net.Conn, error)) (net.Conn, error) {
	return wsconn.Dial(ctx, u, tc, 30*time.Second, func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dial(ctx, network, dialAddr)
	})
}
