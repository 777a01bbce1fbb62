package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/hubserver"
)

type hubFlags struct {
	dataDir   string
	hostname  string
	mqttAddr  string
	plainAddr string
	httpsAddr string
	natsURL   string
	// edgeLoopbackNames: see hubserver.Config.EdgeLoopbackNames.
	edgeLoopbackNames bool
	rates             gateway.Rates
}

func runHub(ctx context.Context, args []string) error {
	var f hubFlags
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	fs.StringVar(&f.dataDir, "data-dir", "", "directory for the hub's state, CA, certificates and keys (required)")
	fs.StringVar(&f.hostname, "hostname", hubserver.DefaultHostname, "the hub's host name, as devices and connection strings name it")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", hubserver.DefaultMQTTAddr, "MQTT over TLS listen address")
	fs.StringVar(&f.plainAddr, "mqtt-plain-addr", "", "also serve MQTT over plain TCP here; for local tests only (default: off)")
	fs.StringVar(&f.httpsAddr, "https-addr", hubserver.DefaultHTTPSAddr, "HTTPS listen address (service REST API, device HTTPS, MQTT over WebSocket)")
	fs.StringVar(&f.natsURL, "nats-url", "", "external NATS cluster to keep state in, instead of the embedded server")
	fs.BoolVar(&f.edgeLoopbackNames, "edge-loopback-names", false, "let edge CAs carry localhost and 127.0.0.1, which the hub's certificate carries too; only when the hub, its edges and devices share one machine")
	addRateFlags(fs, &f.rates)
	if err := parseServerFlags(fs, args); err != nil {
		return err
	}
	if f.dataDir == "" {
		return errors.New("hub: --data-dir is required")
	}
	if err := checkRates("hub", &f.rates); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := startPprof(); err != nil {
		return fmt.Errorf("hub: %w", err)
	}

	srv, err := hubserver.Start(ctx, hubserver.Config{
		DataDir:           f.dataDir,
		Hostname:          f.hostname,
		MQTTAddr:          f.mqttAddr,
		MQTTPlainAddr:     f.plainAddr,
		HTTPSAddr:         f.httpsAddr,
		NATSURL:           f.natsURL,
		EdgeLoopbackNames: f.edgeLoopbackNames,
		Rates:             f.rates,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	fmt.Println(srv.ConnectionString())
	if a := srv.MQTTPlainAddr(); a != nil {
		fmt.Printf("hub serves MQTT over plain TCP on %s: for local tests only\n", a)
	}
	fmt.Printf("hub ready: https=%s mqtt=%s\n", srv.HTTPSAddr(), srv.MQTTAddr())

	var serveErr error
	select {
	case <-ctx.Done():
	case err := <-srv.Err():
		serveErr = fmt.Errorf("hub: %w", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(serveErr, srv.Shutdown(shutCtx))
}
