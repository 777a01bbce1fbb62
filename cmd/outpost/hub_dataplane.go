package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/hub"
	"outpost/internal/hub/api"
	"outpost/internal/hub/dataplane"
)

// devicePlane is the hub's device endpoint and data plane, served next to
// the service API.
type devicePlane struct {
	plane    *dataplane.Plane
	gw       *gateway.Server
	mqttDone chan struct{}
}

// startDevicePlane plugs the device endpoint into the hub's listeners: on
// srv's mux the device HTTPS API, MQTT over WebSocket at
// /$iothub/websocket and the data plane's routes (methods, C2D, events);
// and MQTT over TLS on f.mqttAddr, whose address it records in
// srv.mqttAddr. Serving errors go to srv.errc.
func startDevicePlane(h *hub.Hub, creds *hub.Credentials, f hubFlags, log *slog.Logger, srv *hubServers) (*devicePlane, error) {
	plane, err := dataplane.New(dataplane.Config{
		Hub:      h,
		CA:       creds.CA,
		Policies: []api.Policy{{Name: hub.ServicePolicy, PrimaryKey: creds.ServiceKey}},
		Logger:   log.With("component", "dataplane"),
	})
	if err != nil {
		return nil, err
	}
	gw, err := gateway.New(gateway.Config{
		Backend:     plane,
		HubHostName: f.hostname,
		TLS:         &tls.Config{Certificates: []tls.Certificate{creds.ServerCert}, MinVersion: tls.VersionTLS12},
		Logger:      log,
	})
	if err != nil {
		plane.Close()
		return nil, err
	}
	plane.SetGateway(gw)
	d := &devicePlane{plane: plane, gw: gw, mqttDone: make(chan struct{})}
	gw.RegisterDeviceHTTP(srv.mux)
	plane.RegisterREST(srv.mux)

	l, err := gw.ListenMQTTTLS(f.mqttAddr)
	if err != nil {
		close(d.mqttDone)
		d.close()
		return nil, err
	}
	srv.mqttAddr = l.Addr()
	go func() {
		defer close(d.mqttDone)
		if err := gw.ServeMQTT(l); err != nil && !errors.Is(err, gateway.ErrServerClosed) {
			select {
			case srv.errc <- fmt.Errorf("mqtt: %w", err):
			default:
			}
		}
	}()
	return d, nil
}

// shutdown drops device connections, waiting for them up to ctx, then
// stops the data plane. It is safe to call more than once.
func (d *devicePlane) shutdown(ctx context.Context) error {
	err := d.gw.Shutdown(ctx)
	<-d.mqttDone
	return errors.Join(err, d.plane.Close())
}

func (d *devicePlane) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = d.shutdown(ctx)
}
