package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// startEmbedded runs one JetStream-enabled nats-server inside the process.
// It does not listen on any port: the hub reaches it through an in-process
// pipe, so the only way in is through the hub itself.
func startEmbedded(cfg Config) (*server.Server, error) {
	opts := &server.Options{
		ServerName:   "outpost-hub",
		JetStream:    true,
		StoreDir:     filepath.Join(cfg.DataDir, "jetstream"),
		DontListen:   true,
		NoSigs:       true,
		SyncInterval: cfg.SyncInterval,
		SyncAlways:   cfg.SyncAlways,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("create nats server: %w", err)
	}
	srv.SetLoggerV2(natsLogger{cfg.Logger.With("component", "nats")}, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("start nats server: not ready after 30s")
	}
	return srv, nil
}

// connect opens the hub's client connection, in-process when srv is set.
// The connection retries forever: a hub replica outlives short outages of an
// external cluster rather than failing its callers for good.
func connect(cfg Config, srv *server.Server) (*nats.Conn, error) {
	log := cfg.Logger
	opts := []nats.Option{
		nats.Name("outpost-hub"),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
	}
	url := cfg.NATSURL
	if srv != nil {
		opts = append(opts, nats.InProcessServer(srv))
		url = ""
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	return nc, nil
}

// natsLogger routes nats-server's log lines into slog. Notices (the
// startup banner among them) go to debug; Fatalf logs at error level
// instead of exiting: a library never ends the process.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) { n.log(slog.LevelDebug, format, v) }
func (n natsLogger) Warnf(format string, v ...any)   { n.log(slog.LevelWarn, format, v) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.log(slog.LevelError, format, v) }
func (n natsLogger) Errorf(format string, v ...any)  { n.log(slog.LevelError, format, v) }
func (n natsLogger) Debugf(format string, v ...any)  { n.log(slog.LevelDebug, format, v) }
func (n natsLogger) Tracef(format string, v ...any)  { n.log(slog.LevelDebug-4, format, v) }

func (n natsLogger) log(level slog.Level, format string, v []any) {
	if !n.l.Enabled(context.Background(), level) {
		return
	}
	n.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
}
