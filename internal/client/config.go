package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"outpost/internal/message"
	"outpost/internal/sas"
)

// Transport selects how the MQTT stream reaches the hub.
type Transport int

const (
	// MQTT is MQTT over TLS, port 8883 unless the host names another.
	MQTT Transport = iota
	// MQTTWebSocket is MQTT over a secure WebSocket at /$iothub/websocket,
	// port 443 unless the host names another; it passes proxies that only
	// allow HTTPS.
	MQTTWebSocket
)

func (t Transport) String() string {
	switch t {
	case MQTT:
		return "mqtt"
	case MQTTWebSocket:
		return "mqtt-ws"
	}
	return "transport(" + strconv.Itoa(int(t)) + ")"
}

// Protocol constants shared with the server side.
const (
	APIVersion    = "2021-04-12"
	ClientType    = "outpost-go/0.1"
	WebSocketPath = "/$iothub/websocket"

	defaultMQTTPort = "8883"
	defaultWSPort   = "443"
)

// Defaults for Config fields left zero.
const (
	DefaultTokenTTL    = time.Hour
	DefaultKeepAlive   = 180 * time.Second // what the Azure SDKs send
	DefaultMaxInFlight = 64
)

// Config configures a Client. Only ConnectionString is required.
type Config struct {
	// ConnectionString is a device or module connection string: HostName,
	// DeviceId, optional ModuleId and GatewayHostName, and one of
	// SharedAccessKey, SharedAccessSignature or x509=true.
	ConnectionString string
	// RootCAs verifies the server; nil means the system roots.
	RootCAs *x509.CertPool
	// Certificate is the client certificate for X.509 authentication
	// (connection strings with x509=true require it).
	Certificate *tls.Certificate
	Transport   Transport
	// TokenTTL is the lifetime of the SAS tokens signed with
	// SharedAccessKey. The client reconnects with a fresh token after 80%
	// of it, as the Azure SDKs do. At least one second.
	TokenTTL time.Duration
	Logger   *slog.Logger
	// KeepAlive is the MQTT keepalive; a dead link is noticed within it.
	KeepAlive time.Duration
	// MaxInFlight bounds the telemetry messages awaiting PUBACK.
	MaxInFlight int
	// DialAddr, when set, is the host:port dialed instead of the one from
	// the connection string; TLS still verifies the connection string's
	// host (an edge's --upstream-addr).
	DialAddr string
	// Dialer opens the TCP connection; nil means a net.Dialer.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock used for token expiry; nil means time.Now.
	Now func() time.Time
}

// endpoint is everything derived from the connection string and Config
// that does not change between connections.
type endpoint struct {
	cs         sas.ConnectionString
	clientID   string
	username   string
	dialAddr   string // host:port that the socket goes to
	serverName string // TLS name checked in the server certificate
	wsURL      string // for MQTTWebSocket
}

func (cfg *Config) fill() error {
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.TokenTTL < time.Second {
		return errors.New("client config: TokenTTL under one second")
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.KeepAlive < time.Second || cfg.KeepAlive > 65535*time.Second {
		return errors.New("client config: KeepAlive must be between 1 s and 65535 s")
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlight < 0 || cfg.MaxInFlight > 32768 {
		return errors.New("client config: MaxInFlight must be between 1 and 32768")
	}
	switch cfg.Transport {
	case MQTT, MQTTWebSocket:
	default:
		return fmt.Errorf("client config: unknown transport %d", cfg.Transport)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Dialer == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		cfg.Dialer = d.DialContext
	}
	return nil
}

func newEndpoint(cfg *Config) (*endpoint, error) {
	cs, err := sas.ParseConnectionString(cfg.ConnectionString)
	if err != nil {
		return nil, err
	}
	if cs.IsService() {
		return nil, errors.New("client config: a service connection string cannot connect as a device")
	}
	if cs.X509 && cfg.Certificate == nil {
		return nil, errors.New("client config: x509=true needs Config.Certificate")
	}
	e := &endpoint{cs: cs, clientID: message.ClientID(cs.DeviceID, cs.ModuleID)}
	e.username = cs.HostName + "/" + e.clientID + "/?api-version=" + APIVersion +
		"&DeviceClientType=" + url.QueryEscape(ClientType)

	target := cs.HostName
	if cs.GatewayHostName != "" {
		target = cs.GatewayHostName
	}
	port := defaultMQTTPort
	if cfg.Transport == MQTTWebSocket {
		port = defaultWSPort
	}
	host, p, err := splitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("client config: host %q: %w", target, err)
	}
	if p != "" {
		port = p
	}
	e.serverName = host
	hostPort := net.JoinHostPort(host, port)
	e.dialAddr = hostPort
	if cfg.DialAddr != "" {
		if _, _, err := net.SplitHostPort(cfg.DialAddr); err != nil {
			return nil, fmt.Errorf("client config: DialAddr: %w", err)
		}
		e.dialAddr = cfg.DialAddr
	}
	u := url.URL{Scheme: "wss", Host: hostPort, Path: WebSocketPath}
	e.wsURL = u.String()
	return e, nil
}

// splitHostPort accepts "host", "host:port", "v6", "[v6]" and
// "[v6]:port".
func splitHostPort(s string) (host, port string, err error) {
	if h, p, err := net.SplitHostPort(s); err == nil {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return "", "", fmt.Errorf("bad port %q", p)
		}
		host, port = h, p
	} else if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		host = s[1 : len(s)-1]
	} else {
		host = s
	}
	switch {
	case host == "":
		return "", "", errors.New("empty host")
	case strings.ContainsAny(host, "[]/\\@?#% \t\r\n"):
		return "", "", errors.New("bad host")
	case strings.Contains(host, ":") && net.ParseIP(host) == nil:
		return "", "", errors.New("bad host:port")
	}
	return host, port, nil
}

func (e *endpoint) tlsConfig(cfg *Config) *tls.Config {
	t := &tls.Config{
		ServerName: e.serverName,
		RootCAs:    cfg.RootCAs,
		MinVersion: tls.VersionTLS12,
	}
	if cfg.Certificate != nil {
		t.Certificates = []tls.Certificate{*cfg.Certificate}
	}
	return t
}

// renewable reports whether the client signs its own tokens, and so must
// reconnect before they expire.
func (e *endpoint) renewable() bool {
	return e.cs.SharedAccessKey != "" && !e.cs.X509
}

// password returns the MQTT password for a connection made now and the
// time at which the client should reconnect to renew it (zero: never).
func (e *endpoint) password(cfg *Config) (pw string, renewAt time.Time, err error) {
	if e.cs.X509 {
		return "", time.Time{}, nil
	}
	now := cfg.Now()
	tok, err := e.cs.Token(now.Add(cfg.TokenTTL))
	if err != nil {
		return "", time.Time{}, err
	}
	if e.renewable() {
		renewAt = now.Add(cfg.TokenTTL * 8 / 10)
	}
	return tok, renewAt, nil
}
