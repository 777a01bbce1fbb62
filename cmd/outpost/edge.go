package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edge"
)

type edgeFlags struct {
	connString      string
	storageFolder   string
	upstreamAddr    string
	hubCA           string
	hostname        string
	mqttAddr        string
	httpsAddr       string
	maxStorageBytes int64
	identityRefresh time.Duration
	edgeCACert      string
	edgeCAKey       string
}

// runEdge runs the edge hub. As in IoT Edge, the storage folder may come
// from the storageFolder environment variable; the flag wins.
func runEdge(ctx context.Context, args []string) error {
	var f edgeFlags
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	fs.StringVar(&f.connString, "connection-string", "", "the edge device's connection string: HostName=…;DeviceId=…;SharedAccessKey=… (required)")
	fs.StringVar(&f.storageFolder, "storage-folder", "", "folder for the message store and caches (default: $storageFolder)")
	fs.StringVar(&f.upstreamAddr, "upstream-addr", "", "host:port to dial for the hub, when it differs from HostName (TLS still verifies HostName)")
	fs.StringVar(&f.hubCA, "hub-ca", "", "PEM file of the hub's root CA (the hub's DIR/ca.pem; default: $OUTPOST_CA, else the system roots)")
	fs.StringVar(&f.hostname, "hostname", "", "the edge's host name, as children put it in GatewayHostName (default: this machine's host name)")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", edge.DefaultMQTTAddr, "MQTT over TLS listen address")
	fs.StringVar(&f.httpsAddr, "https-addr", edge.DefaultHTTPSAddr, "HTTPS listen address (device HTTPS, MQTT over WebSocket, /status)")
	fs.Int64Var(&f.maxStorageBytes, "max-storage-bytes", 0, "cap on stored messages in bytes; 0 means no cap")
	fs.DurationVar(&f.identityRefresh, "identity-refresh", edge.DefaultIdentityRefresh, "how often to re-sync identities while online")
	fs.StringVar(&f.edgeCACert, "edge-ca-cert", "", "PEM file of your own edge CA certificate (default: the hub signs one at first sync)")
	fs.StringVar(&f.edgeCAKey, "edge-ca-key", "", "PEM file of your own edge CA's private key")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("edge: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg.NewUplink = edge.NewUpstreamLink

	e, err := edge.New(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	errc := make(chan error, 1)
	go func() { errc <- e.Run(ctx) }()
	select {
	case <-e.Ready():
		fmt.Printf("edge ready: mqtt=%s https=%s\n", e.MQTTAddr(), e.HTTPSAddr())
	case err := <-errc:
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	return e.Close()
}

// config checks the flags and turns them into an edge.Config.
func (f edgeFlags) config() (edge.Config, error) {
	var cfg edge.Config
	if f.connString == "" {
		return cfg, errors.New("edge: --connection-string is required")
	}
	if err := edge.ParseConnectionString(f.connString, &cfg); err != nil {
		return cfg, fmt.Errorf("edge: --connection-string: %w", err)
	}
	cfg.StorageDir = f.storageFolder
	if cfg.StorageDir == "" {
		cfg.StorageDir = os.Getenv("storageFolder")
	}
	if cfg.StorageDir == "" {
		return cfg, errors.New("edge: --storage-folder (or the storageFolder environment variable) is required")
	}
	caFile := f.hubCA
	if caFile == "" {
		caFile = os.Getenv("OUTPOST_CA")
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return cfg, fmt.Errorf("edge: hub CA: %w", err)
		}
		pool, err := certs.Pool(pem)
		if err != nil {
			return cfg, fmt.Errorf("edge: hub CA %s: %w", caFile, err)
		}
		cfg.HubCA = pool
	}
	if (f.edgeCACert == "") != (f.edgeCAKey == "") {
		return cfg, errors.New("edge: --edge-ca-cert and --edge-ca-key go together")
	}
	if f.maxStorageBytes < 0 {
		return cfg, errors.New("edge: --max-storage-bytes must not be negative")
	}
	if f.identityRefresh <= 0 {
		return cfg, errors.New("edge: --identity-refresh must be positive")
	}
	cfg.UpstreamAddr = f.upstreamAddr
	cfg.Hostname = f.hostname
	cfg.MQTTAddr = f.mqttAddr
	cfg.HTTPSAddr = f.httpsAddr
	cfg.MaxStorageBytes = f.maxStorageBytes
	cfg.IdentityRefresh = f.identityRefresh
	cfg.EdgeCACert = f.edgeCACert
	cfg.EdgeCAKey = f.edgeCAKey
	return cfg, nil
}
