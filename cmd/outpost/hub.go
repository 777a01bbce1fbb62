package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"outpost/internal/hub"
	"outpost/internal/hub/api"
)

type hubFlags struct {
	dataDir   string
	hostname  string
	mqttAddr  string
	httpsAddr string
	natsURL   string
}

func runHub(ctx context.Context, args []string) error {
	var f hubFlags
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	fs.StringVar(&f.dataDir, "data-dir", "", "directory for the hub's state, CA, certificates and keys (required)")
	fs.StringVar(&f.hostname, "hostname", "localhost", "the hub's host name, as devices and connection strings name it")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", ":8883", "MQTT over TLS listen address")
	fs.StringVar(&f.httpsAddr, "https-addr", ":443", "HTTPS listen address (service REST API, device HTTPS, MQTT over WebSocket)")
	fs.StringVar(&f.natsURL, "nats-url", "", "external NATS cluster to keep state in, instead of the embedded server")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("hub: unexpected argument %q", fs.Arg(0))
	}
	if f.dataDir == "" {
		return errors.New("hub: --data-dir is required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	creds, err := hub.Bootstrap(f.dataDir, f.hostname)
	if err != nil {
		return err
	}
	h, err := hub.New(hub.Config{DataDir: f.dataDir, NATSURL: f.natsURL, HostName: f.hostname, Logger: log})
	if err != nil {
		return err
	}
	defer h.Close()

	srv, err := startHubServers(h, creds, f, log)
	if err != nil {
		return err
	}
	defer srv.close()
	dev, err := startDevicePlane(h, creds, f, log, srv)
	if err != nil {
		return err
	}
	defer dev.close()

	host := hostWithPort(f.hostname, srv.httpsAddr)
	cs := creds.ConnectionString(host)
	if err := creds.WriteConnectionString(host); err != nil {
		return err
	}
	fmt.Println(cs)
	mqtt := "off"
	if srv.mqttAddr != nil {
		mqtt = srv.mqttAddr.String()
	}
	fmt.Printf("hub ready: https=%s mqtt=%s\n", srv.httpsAddr, mqtt)

	select {
	case <-ctx.Done():
	case err := <-srv.errc:
		return fmt.Errorf("hub: %w", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(dev.shutdown(shutCtx), srv.shutdown(shutCtx))
}

// hubServers are the hub's listeners. This is the seam the device
// endpoint plugs into: it registers its HTTPS routes on mux and, once it
// has a hub backend, adds the MQTT listener next to the HTTPS one.
type hubServers struct {
	mux       *http.ServeMux
	https     *http.Server
	httpsAddr net.Addr
	mqttAddr  net.Addr // nil while MQTT is not served
	errc      chan error
	done      chan struct{}
}

func startHubServers(h *hub.Hub, creds *hub.Credentials, f hubFlags, log *slog.Logger) (*hubServers, error) {
	mux := http.NewServeMux()
	api.NewHandler(h, api.Config{
		HostName: f.hostname,
		Policies: []api.Policy{{Name: hub.ServicePolicy, PrimaryKey: creds.ServiceKey}},
		Logger:   log,
	}).Register(mux)

	ln, err := net.Listen("tcp", f.httpsAddr)
	if err != nil {
		return nil, fmt.Errorf("listen https: %w", err)
	}
	s := &hubServers{
		mux:       mux,
		httpsAddr: ln.Addr(),
		errc:      make(chan error, 1),
		done:      make(chan struct{}),
		https: &http.Server{
			Handler:           mux,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{creds.ServerCert}, MinVersion: tls.VersionTLS12, ClientAuth: tls.RequestClientCert},
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}
	go func() {
		defer close(s.done)
		if err := s.https.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- err
		}
	}()
	return s, nil
}

func (s *hubServers) shutdown(ctx context.Context) error {
	err := s.https.Shutdown(ctx)
	<-s.done
	return err
}

func (s *hubServers) close() {
	s.https.Close()
	<-s.done
}

// hostWithPort is the HostName of connection strings: the host name, with
// the port when it is not HTTPS's default.
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
