package gateway

import (
	"net/http"

	"github.com/gorilla/websocket"

	"outpost/internal/wsconn"
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
		s.serveConn(wsconn.New(ws), "mqtt-ws", r.TLS)
	})
}
