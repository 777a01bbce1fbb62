// Package edgeserver runs the edge hub as a process does: it turns the
// options of `outpost edge` (its connection string, storage folder, hub
// CA, listen addresses, limits) into an edge.Config, gives the edge its
// real upstream link and runs it. `outpost edge`, `outpost demo` and the
// in-process edges of outposttest all start the edge through it, so the
// edge's wiring exists once, as hubserver's does for the hub.
package edgeserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/edge"
	"outpost/internal/gateway"
)

// Config is what `outpost edge`'s flags say, typed; the fields after
// Logger have no flag and serve the in-process edges of tests and the
// demo. Zero fields take edge.New's defaults.
type Config struct {
	// ConnectionString is the edge device's:
	// HostName=…;DeviceId=…;SharedAccessKey=…. Required.
	ConnectionString string
	// StorageDir holds the store (queues, caches). Required.
	StorageDir string
	// UpstreamAddr is the dial address of the hub's MQTT listener
	// (default: HostName's host, port 8883).
	UpstreamAddr string
	// HubCA verifies the hub; nil means the system roots.
	HubCA *x509.CertPool
	// Hostname is the edge's TLS host name, which children put in
	// GatewayHostName (default: this machine's host name).
	Hostname string
	// MQTTAddr and HTTPSAddr are listen addresses (defaults
	// edge.DefaultMQTTAddr and edge.DefaultHTTPSAddr).
	MQTTAddr  string
	HTTPSAddr string
	// MaxStorageBytes caps stored messages; 0 means no cap.
	MaxStorageBytes int64
	// IdentityRefresh is how often identities are re-synced while
	// online (default edge.DefaultIdentityRefresh).
	IdentityRefresh time.Duration
	// EdgeCACert and EdgeCAKey are PEM files of the operator's own edge
	// CA; empty, the hub signs one at first sync.
	EdgeCACert string
	EdgeCAKey  string
	// Rates bound each child's connection and the connections started
	// a second.
	Rates gateway.Rates
	// OnEdgeHubEnv receives the edgeHub environment of each deployment
	// the edge fetched (see edge.Config.OnEdgeHubEnv).
	OnEdgeHubEnv func(env map[string]string)
	Logger       *slog.Logger

	// KeepAlive bounds how long a silent upstream link goes unnoticed.
	KeepAlive time.Duration
	// Now is the edge's clock (store, link, device endpoint).
	Now func() time.Time
	// StorageFS and MinFreeStorageBytes: the store's file system and
	// the free space it keeps (see edge.Config).
	StorageFS           vfs.FS
	MinFreeStorageBytes int64
}

// EdgeConfig checks cfg and turns it into the edge's configuration, with
// the real upstream link.
func (cfg Config) EdgeConfig() (edge.Config, error) {
	var ec edge.Config
	if cfg.ConnectionString == "" {
		return ec, errors.New("edge: no connection string")
	}
	if err := edge.ParseConnectionString(cfg.ConnectionString, &ec); err != nil {
		return ec, fmt.Errorf("edge: %w", err)
	}
	ec.StorageDir = cfg.StorageDir
	ec.UpstreamAddr = cfg.UpstreamAddr
	ec.HubCA = cfg.HubCA
	ec.Hostname = cfg.Hostname
	ec.MQTTAddr, ec.HTTPSAddr = cfg.MQTTAddr, cfg.HTTPSAddr
	ec.MaxStorageBytes = cfg.MaxStorageBytes
	ec.IdentityRefresh = cfg.IdentityRefresh
	ec.EdgeCACert, ec.EdgeCAKey = cfg.EdgeCACert, cfg.EdgeCAKey
	ec.Rates = cfg.Rates
	ec.OnEdgeHubEnv = cfg.OnEdgeHubEnv
	ec.Logger = cfg.Logger
	ec.KeepAlive = cfg.KeepAlive
	ec.Now = cfg.Now
	ec.StorageFS, ec.MinFreeStorageBytes = cfg.StorageFS, cfg.MinFreeStorageBytes
	ec.NewUplink = edge.NewUpstreamLink
	return ec, nil
}

// Server is a running edge. Stop it with Close.
type Server struct {
	e    *edge.Edge
	done chan struct{} // closed when Run returned
	err  error         // Run's result, set before done closes

	closeOnce sync.Once
	closeErr  error
}

// Start opens the edge (validating cfg, loading what earlier runs kept)
// and runs it until ctx ends or Close. It does not wait for the edge to
// serve: one that never synced serves only after its first sync, so a
// caller waits with AwaitReady when it wants to.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	ec, err := cfg.EdgeConfig()
	if err != nil {
		return nil, err
	}
	e, err := edge.New(ec)
	if err != nil {
		return nil, err
	}
	s := &Server{e: e, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = e.Run(ctx)
	}()
	return s, nil
}

// Edge is the running edge.
func (s *Server) Edge() *edge.Edge { return s.e }

// AwaitReady waits until the edge serves clients. It returns Run's
// error if Run ended first, and ctx's if ctx ends first.
func (s *Server) AwaitReady(ctx context.Context) error {
	select {
	case <-s.e.Ready():
		return nil
	case <-s.done:
		if s.err == nil {
			return errors.New("edge stopped before serving")
		}
		return s.err
	case <-ctx.Done():
		return fmt.Errorf("edge not serving: %w", ctx.Err())
	}
}

// Done is closed when the edge stopped running (its context ended, Close,
// or a failure); Wait then returns why.
func (s *Server) Done() <-chan struct{} { return s.done }

// Wait waits until the edge stops running and returns Run's result:
// nil once its context ended, edge.ErrClosed after Close.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

// Close stops the edge, waits for Run and closes the store. It returns
// Run's error, if any other than edge.ErrClosed, else the store's. It is
// safe to call more than once; every call returns the first one's outcome.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		cerr := s.e.Close()
		<-s.done
		switch {
		case s.err != nil && !errors.Is(s.err, edge.ErrClosed):
			s.closeErr = s.err
		case cerr != nil:
			s.closeErr = fmt.Errorf("close edge: %w", cerr)
		}
	})
	return s.closeErr
}
