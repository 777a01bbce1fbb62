package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"outpost/internal/client"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/service"
)

// runSimulate is `outpost simulate`: simulated devices sending telemetry.
//
// With a service connection string it creates (or reuses) the devices
// {prefix}0 … {prefix}N-1 through the service API and runs N of them; with
// a device connection string it runs that one device. Every message is
// JSON, {"deviceId":…,"seq":n,"temperature":…}, with seq also in the
// application property "seq": a per-device sequence number from 1, so a
// reader can spot gaps and duplicates. Progress goes to stderr each
// second.
//
// Transport: a HostName with a port other than 8883 names the hub's HTTPS
// listener (DESIGN: connection strings carry the HTTPS port), so the
// devices then use MQTT over WebSocket on it, unless GatewayHostName
// names the MQTT endpoint to dial (an edge); --transport overrides.
func runSimulate(ctx context.Context, args []string) error {
	c := newCommand("simulate", "--connection-string CS [--count N] [--rate R] [--messages M] [--duration S] [--transport auto|mqtt|ws] [--ca FILE]")
	cs := c.requiredString("connection-string", "a service connection string (creates devices) or a device connection string")
	count := c.Int("count", 1, "number of devices (service connection string only)")
	rate := c.Float64("rate", 1, "messages per second, per device")
	messages := c.Int("messages", 0, "stop each device after this many messages (0: run until interrupted)")
	duration := c.Duration("duration", 0, "stop after this long (0: run until interrupted)")
	prefix := c.String("prefix", "sim-", "device id prefix for created devices")
	transport := c.String("transport", "auto", "auto, mqtt (TLS, port 8883 unless HostName names one) or ws (MQTT over WebSocket)")
	ca := c.String("ca", "", caUsage)
	if err := c.parse(args); err != nil {
		return err
	}
	if *count < 1 || *count > 10000 {
		return fmt.Errorf("--count: want 1 to 10000, not %d", *count)
	}
	if *rate <= 0 || *rate > 10000 {
		return fmt.Errorf("--rate: want a rate above 0 and at most 10000, not %v", *rate)
	}
	if *messages < 0 {
		return fmt.Errorf("--messages: want 0 or more, not %d", *messages)
	}
	parsed, err := sas.ParseConnectionString(*cs)
	if err != nil {
		return err
	}
	caFile := orEnv(*ca, envCA)
	sim := simulation{rate: *rate, messages: *messages, transport: *transport, out: stderr}
	if caFile != "" {
		if sim.roots, err = service.LoadCA(caFile); err != nil {
			return err
		}
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	var strs []string
	if parsed.IsService() {
		svc, err := service.New(service.Config{ConnectionString: *cs, RootCAs: sim.roots})
		if err != nil {
			return err
		}
		if strs, err = ensureSimDevices(ctx, svc, *prefix, *count, sim.out); err != nil {
			return err
		}
	} else {
		if *count != 1 {
			return errors.New("--count needs a service connection string: a device connection string is one device")
		}
		strs = []string{*cs}
	}
	return sim.run(ctx, strs)
}

// ensureSimDevices creates the simulated devices that do not exist yet
// and returns their connection strings.
func ensureSimDevices(ctx context.Context, svc *service.Client, prefix string, n int, out io.Writer) ([]string, error) {
	strs := make([]string, n)
	created := 0
	for i := range n {
		id := prefix + strconv.Itoa(i)
		d, err := svc.CreateDevice(ctx, identity.Device{DeviceID: id})
		if service.IsConflict(err) {
			d, err = svc.GetDevice(ctx, id)
		} else if err == nil {
			created++
		}
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", id, err)
		}
		if d.Authentication.SymmetricKey.PrimaryKey == "" {
			return nil, fmt.Errorf("device %s exists but has no SAS key to simulate it with", id)
		}
		strs[i] = service.DeviceConnectionString(d, svc.HostName(), "")
	}
	fmt.Fprintf(out, "simulating %d devices (%d created, %d already there)\n", n, created, n-created)
	return strs, nil
}

type simulation struct {
	rate      float64
	messages  int
	transport string
	roots     *x509.CertPool // nil: the system roots
	out       io.Writer

	sent, failed atomic.Uint64
}

func (s *simulation) run(ctx context.Context, strs []string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(strs))
	for _, cs := range strs {
		cfg, err := s.clientConfig(cs)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.device(ctx, cfg); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start, last, lastN := time.Now(), time.Now(), uint64(0)
	for {
		select {
		case <-done:
			s.progress(start, last, lastN, true)
			select {
			case err := <-errc:
				return err
			default:
				return nil
			}
		case now := <-tick.C:
			s.progress(start, last, lastN, false)
			last, lastN = now, s.sent.Load()
		}
	}
}

func (s *simulation) progress(start, last time.Time, lastN uint64, final bool) {
	n := s.sent.Load()
	rate := float64(n-lastN) / max(time.Since(last).Seconds(), 1e-3)
	word := "sent"
	if final {
		word, rate = "done:", float64(n)/max(time.Since(start).Seconds(), 1e-3)
	}
	fmt.Fprintf(s.out, "%s %d messages (%.0f msg/s), %d failed\n", word, n, rate, s.failed.Load())
}

func (s *simulation) clientConfig(cs string) (client.Config, error) {
	cfg := client.Config{ConnectionString: cs, RootCAs: s.roots}
	parsed, err := sas.ParseConnectionString(cs)
	if err != nil {
		return cfg, err
	}
	switch s.transport {
	case "mqtt":
		cfg.Transport = client.MQTT
	case "ws":
		cfg.Transport = client.MQTTWebSocket
	case "auto":
		// A gateway's port is its MQTT port (PROTOCOL.md); only the hub's
		// HostName carries the HTTPS port.
		if parsed.GatewayHostName != "" {
			break
		}
		if _, port, err := net.SplitHostPort(parsed.HostName); err == nil && port != "8883" {
			cfg.Transport = client.MQTTWebSocket
		}
	default:
		return cfg, fmt.Errorf("--transport: want auto, mqtt or ws, not %q", s.transport)
	}
	return cfg, nil
}

// device runs one simulated device until ctx ends or its messages are
// sent. Failed sends are counted and the device goes on: the client
// reconnects by itself.
func (s *simulation) device(ctx context.Context, cfg client.Config) error {
	c, err := client.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("device %s: %w", c.DeviceID(), err)
	}
	every := time.Duration(float64(time.Second) / s.rate)
	tick := time.NewTicker(every)
	defer tick.Stop()
	temp := 20 + rand.Float64()*5
	for seq := 1; s.messages == 0 || seq <= s.messages; seq++ {
		temp += rand.Float64() - 0.5
		body, _ := json.Marshal(map[string]any{"deviceId": c.DeviceID(), "seq": seq, "temperature": float64(int(temp*100)) / 100})
		msg := &message.Message{Body: body, Properties: map[string]string{"seq": strconv.Itoa(seq)},
			System: message.System{ContentType: "application/json", ContentEncoding: "utf-8"}}
		if err := c.Send(ctx, msg); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.failed.Add(1)
		} else {
			s.sent.Add(1)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}
