// Package hubserver runs the cloud hub as a process does: it bootstraps
// the credentials in the data directory, opens the hub's state, and
// serves the service REST API, the data plane's routes and the device
// endpoint (device HTTPS and MQTT over WebSocket on the HTTPS listener,
// MQTT over TLS on its own). `outpost hub` and `outpost demo` both start
// the hub through it, so the wiring exists once.
package hubserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/hub/api"
	"outpost/internal/hub/dataplane"
)

// Defaults for Config fields left empty.
const (
	DefaultHostname  = "localhost"
	DefaultMQTTAddr  = ":8883"
	DefaultHTTPSAddr = ":443"
)

// Config configures a Server.
type Config struct {
	// DataDir holds the CA, the server certificate, the service key and,
	// without NATSURL, the embedded JetStream store. Required.
	DataDir string
	// Hostname is the hub's host name, as devices and connection strings
	// name it. Default DefaultHostname.
	Hostname string
	// MQTTAddr and HTTPSAddr are listen addresses; 127.0.0.1:0 picks a
	// free loopback port. Defaults DefaultMQTTAddr and DefaultHTTPSAddr.
	MQTTAddr  string
	HTTPSAddr string
	// MQTTPlainAddr, when set, also serves MQTT over plain TCP there: for
	// local tests only, since tokens then cross the wire in clear.
	MQTTPlainAddr string
	// NATSURL, when set, keeps the state in an external NATS cluster
	// instead of the embedded server.
	NATSURL string
	// EdgeLoopbackNames lets edge CAs carry localhost and 127.0.0.1, for
	// setups where the hub, its edges and their devices share one
	// machine (see dataplane.Config.EdgeLoopbackNames).
	EdgeLoopbackNames bool
	// HTTPTimeouts bound idle and half-sent connections of the HTTPS
	// listener; zero fields take the gateway's defaults.
	HTTPTimeouts gateway.HTTPTimeouts
	// Rates bound each device connection and the connections started a
	// second; zero fields take the gateway's defaults.
	Rates  gateway.Rates
	Logger *slog.Logger
}

// Server is a running hub. Stop it with Shutdown.
type Server struct {
	cfg   Config
	log   *slog.Logger
	creds *hub.Credentials
	roots *x509.CertPool
	hub   *hub.Hub
	plane *dataplane.Plane
	gw    *gateway.Server
	https *http.Server
	// streams is cancelled when Shutdown begins, so that long-lived
	// requests (an events stream) end instead of holding Shutdown.
	streams context.CancelFunc

	httpsAddr, mqttAddr net.Addr
	plainAddr           net.Addr // nil unless MQTTPlainAddr is set
	host                string   // HostName of connection strings

	errc  chan error // the first serving error
	serve sync.WaitGroup

	shutdownOnce sync.Once
	shutdownErr  error
}

// Start bootstraps the credentials in cfg.DataDir (made on first start,
// reused after), opens the hub, listens and serves, and writes the
// service connection string to DataDir/service-connection-string. ctx
// bounds the start only; the server runs until Shutdown.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("hub: no data directory")
	}
	if cfg.Hostname == "" {
		cfg.Hostname = DefaultHostname
	}
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = DefaultMQTTAddr
	}
	if cfg.HTTPSAddr == "" {
		cfg.HTTPSAddr = DefaultHTTPSAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, errc: make(chan error, 1)}
	// Whatever started before a failure is stopped again.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	if s.creds, err = hub.Bootstrap(cfg.DataDir, cfg.Hostname); err != nil {
		return nil, err
	}
	s.roots = x509.NewCertPool()
	s.roots.AddCert(s.creds.CA.Cert)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start hub: %w", err)
	}
	if s.hub, err = hub.New(hub.Config{DataDir: cfg.DataDir, NATSURL: cfg.NATSURL, HostName: cfg.Hostname, Logger: s.log}); err != nil {
		return nil, err
	}
	undo = append(undo, func() { s.hub.Close() })
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start hub: %w", err)
	}

	policies := []api.Policy{{Name: hub.ServicePolicy, PrimaryKey: s.creds.ServiceKey}}
	if s.plane, err = dataplane.New(dataplane.Config{
		Hub:               s.hub,
		CA:                s.creds.CA,
		EdgeLoopbackNames: cfg.EdgeLoopbackNames,
		Policies:          policies,
		Logger:            s.log.With("component", "dataplane"),
	}); err != nil {
		return nil, err
	}
	undo = append(undo, func() { s.plane.Close() })
	m, err := s.plane.NewMetrics()
	if err != nil {
		return nil, err
	}
	gwCfg := gateway.Config{
		Backend:  s.plane,
		Observer: m,
		// The TLS listener yields only TLS connections; plain ones come
		// only from the MQTTPlainAddr listener.
		AllowPlainTCP: cfg.MQTTPlainAddr != "",
		HubHostName:   cfg.Hostname,
		TLS:           &tls.Config{Certificates: []tls.Certificate{s.creds.ServerCert}, MinVersion: tls.VersionTLS12},
		Logger:        s.log,
	}
	cfg.Rates.Apply(&gwCfg)
	if s.gw, err = gateway.New(gwCfg); err != nil {
		return nil, err
	}
	undo = append(undo, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.gw.Shutdown(sctx)
	})
	s.plane.SetGateway(s.gw)

	// One HTTPS listener carries the service API, the data plane's routes
	// (methods, C2D, events), the device HTTPS API and MQTT over
	// WebSocket; their patterns are disjoint.
	mux := http.NewServeMux()
	api.NewHandler(s.hub, api.Config{HostName: cfg.Hostname, Policies: policies, Logger: s.log}).Register(mux)
	s.gw.RegisterDeviceHTTP(mux)
	s.plane.RegisterREST(mux)
	mux.Handle("GET /metrics", s.plane.MetricsHandler(m))

	hl, err := net.Listen("tcp", cfg.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("listen https: %w", err)
	}
	undo = append(undo, func() { hl.Close() })
	ml, err := s.gw.ListenMQTTTLS(cfg.MQTTAddr)
	if err != nil {
		return nil, err
	}
	s.httpsAddr, s.mqttAddr = hl.Addr(), ml.Addr()
	var pl net.Listener
	if cfg.MQTTPlainAddr != "" {
		if pl, err = net.Listen("tcp", cfg.MQTTPlainAddr); err != nil {
			ml.Close()
			return nil, fmt.Errorf("listen plain mqtt: %w", err)
		}
		undo = append(undo, func() { pl.Close() })
		s.plainAddr = pl.Addr()
	}
	s.host = hostWithPort(cfg.Hostname, s.httpsAddr)
	if err := s.creds.WriteConnectionString(s.host); err != nil {
		ml.Close()
		return nil, err
	}

	base, cancel := context.WithCancel(context.Background())
	s.streams = cancel
	s.https = &http.Server{
		Handler: mux,
		// RequestClientCert: X.509 devices on the device HTTPS API and
		// over WebSocket; the gateway verifies them, not TLS.
		TLSConfig:   &tls.Config{Certificates: []tls.Certificate{s.creds.ServerCert}, MinVersion: tls.VersionTLS12, ClientAuth: tls.RequestClientCert},
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return base },
	}
	cfg.HTTPTimeouts.Apply(s.https)
	s.https.RegisterOnShutdown(cancel)
	s.serve.Add(2)
	go func() {
		defer s.serve.Done()
		if err := s.https.ServeTLS(hl, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.fail(fmt.Errorf("https: %w", err))
		}
	}()
	go func() {
		defer s.serve.Done()
		if err := s.gw.ServeMQTT(ml); err != nil && !errors.Is(err, gateway.ErrServerClosed) {
			s.fail(fmt.Errorf("mqtt: %w", err))
		}
	}()
	if pl != nil {
		s.log.Warn("serving MQTT over plain TCP: for local tests only", "addr", pl.Addr())
		s.serve.Add(1)
		go func() {
			defer s.serve.Done()
			if err := s.gw.ServeMQTT(pl); err != nil && !errors.Is(err, gateway.ErrServerClosed) {
				s.fail(fmt.Errorf("plain mqtt: %w", err))
			}
		}()
	}
	return s, nil
}

// MQTTPlainAddr is the plain-TCP MQTT listener's address, nil when
// Config.MQTTPlainAddr was empty.
func (s *Server) MQTTPlainAddr() net.Addr { return s.plainAddr }

func (s *Server) fail(err error) {
	select {
	case s.errc <- err:
	default:
	}
}

// Err yields the first error that stopped a listener. A hub process
// selects on it next to its signal.
func (s *Server) Err() <-chan error { return s.errc }

// HTTPSAddr is the listen address of the service API, device HTTPS and
// MQTT over WebSocket.
func (s *Server) HTTPSAddr() net.Addr { return s.httpsAddr }

// MQTTAddr is the listen address of MQTT over TLS.
func (s *Server) MQTTAddr() net.Addr { return s.mqttAddr }

// HostName is the HostName of the hub's connection strings: the host
// name, with the HTTPS port when it is not 443.
func (s *Server) HostName() string { return s.host }

// ConnectionString is the iothubowner service connection string.
func (s *Server) ConnectionString() string { return s.creds.ConnectionString(s.host) }

// CAFile is the PEM file of the root CA that devices, edges and the CLI
// trust.
func (s *Server) CAFile() string { return s.creds.CAFile() }

// RootCAs holds the hub's root CA.
func (s *Server) RootCAs() *x509.CertPool { return s.roots }

// Hub is the hub's state: registry, twins, query.
func (s *Server) Hub() *hub.Hub { return s.hub }

// Plane is the hub's data plane: telemetry reader, methods, C2D.
func (s *Server) Plane() *dataplane.Plane { return s.plane }

// Shutdown stops the listeners and drops device connections, waiting for
// them up to ctx, then closes the data plane and the hub's state. It is
// safe to call more than once; every call returns the first one's
// outcome.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		var errs []error
		if err := s.gw.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := s.https.Shutdown(ctx); err != nil {
			// Past the deadline, what is left is cut rather than waited for.
			s.https.Close()
			errs = append(errs, fmt.Errorf("https shutdown: %w", err))
		}
		s.streams()
		s.serve.Wait()
		errs = append(errs, s.plane.Close(), s.hub.Close())
		s.shutdownErr = errors.Join(errs...)
	})
	return s.shutdownErr
}

// hostWithPort is the HostName of connection strings: the host name,
// with the port when it is not HTTPS's default.
func hostWithPort(hostname string, addr net.Addr) string {
	port := 443
	if ta, ok := addr.(*net.TCPAddr); ok {
		port = ta.Port
	}
	if port == 443 {
		return hostname
	}
	return net.JoinHostPort(hostname, strconv.Itoa(port))
}
