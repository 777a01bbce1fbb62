package gateway

import (
	"net/http"
	"time"
)

// Defaults of HTTPTimeouts.
const (
	DefaultHTTPReadHeaderTimeout = 10 * time.Second
	DefaultHTTPIdleTimeout       = 120 * time.Second
)

// HTTPTimeouts bound the HTTPS connections of the hub and the edge while
// they carry no request, so that connections left open by clients that
// went away, or opened and never used, do not pile up.
type HTTPTimeouts struct {
	// ReadHeader bounds the TLS handshake and the reading of a request's
	// headers. Default DefaultHTTPReadHeaderTimeout.
	ReadHeader time.Duration
	// Idle bounds a keep-alive connection between two requests (HTTP/1.1)
	// or with no stream open (HTTP/2). Default DefaultHTTPIdleTimeout:
	// longer than clients keep an idle connection themselves (90 s for
	// Go's default transport), so that the server's close does not race
	// a client reusing the connection for a request that cannot be
	// retried.
	Idle time.Duration
}

// Apply sets t's timeouts, defaults for zero fields, on s. WriteTimeout
// stays zero on purpose: it bounds a whole response, and would fail the
// answer to a direct method, written when the device replies, up to
// 300 s later. ReadTimeout stays zero too: it would only bound reading
// the request body (net/http clears the deadline once the body is read,
// and gorilla/websocket on an upgrade, so streams and MQTT over
// WebSocket would survive it), and a device on a slow link may take
// minutes to send a large one.
func (t HTTPTimeouts) Apply(s *http.Server) {
	s.ReadHeaderTimeout = t.ReadHeader
	if s.ReadHeaderTimeout <= 0 {
		s.ReadHeaderTimeout = DefaultHTTPReadHeaderTimeout
	}
	s.IdleTimeout = t.Idle
	if s.IdleTimeout <= 0 {
		s.IdleTimeout = DefaultHTTPIdleTimeout
	}
	s.ReadTimeout, s.WriteTimeout = 0, 0
}
