package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edge"
	"outpost/internal/edgeserver"
	"outpost/internal/gateway"
	"outpost/internal/identity"
	"outpost/internal/manifest"
	"outpost/internal/service"
	"outpost/internal/twin"
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
	stateDir        string
	rates           gateway.Rates
}

// runEdge runs the edge hub (`outpost edge --connection-string …`),
// applies a deployment manifest (`outpost edge set-modules …`) or shows a
// running edge's state (`outpost edge status …`). As in IoT
// Edge, the storage folder may come from the storageFolder environment
// variable; the flag wins over it, and both win over the edgeHub
// module's env.storageFolder of the last deployment the edge fetched.
func runEdge(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "set-modules":
			return runEdgeSetModules(ctx, args[1:])
		case "status":
			return runEdgeStatus(ctx, args[1:])
		}
	}
	var f edgeFlags
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: outpost edge --connection-string CS [flags]     run the edge hub
       outpost edge status --edge-url https://HOST:PORT   show a running edge's link, queues and routes
       outpost edge set-modules --device-id EDGE --content deployment.json
                                                        apply a deployment manifest

flags of outpost edge:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.connString, "connection-string", "", "the edge device's connection string: HostName=…;DeviceId=…;SharedAccessKey=… (required)")
	fs.StringVar(&f.storageFolder, "storage-folder", "", "folder for the message store and caches (default: $storageFolder)")
	fs.StringVar(&f.upstreamAddr, "upstream-addr", "", "host:port of the hub's MQTT listener (default: HostName's host, port 8883; TLS still verifies HostName)")
	fs.StringVar(&f.hubCA, "hub-ca", "", "PEM file of the hub's root CA (the hub's DIR/ca.pem; default: $OUTPOST_CA, else the system roots)")
	fs.StringVar(&f.hostname, "hostname", "", "the edge's host name, as children put it in GatewayHostName (default: this machine's host name)")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", edge.DefaultMQTTAddr, "MQTT over TLS listen address")
	fs.StringVar(&f.httpsAddr, "https-addr", edge.DefaultHTTPSAddr, "HTTPS listen address (device HTTPS, MQTT over WebSocket, /status)")
	fs.Int64Var(&f.maxStorageBytes, "max-storage-bytes", 0, "cap on stored messages in bytes; 0 means no cap")
	fs.DurationVar(&f.identityRefresh, "identity-refresh", edge.DefaultIdentityRefresh, "how often to re-sync identities while online")
	fs.StringVar(&f.edgeCACert, "edge-ca-cert", "", "PEM file of your own edge CA certificate (default: the hub signs one at first sync)")
	fs.StringVar(&f.edgeCAKey, "edge-ca-key", "", "PEM file of your own edge CA's private key")
	fs.StringVar(&f.stateDir, "state-dir", "", "folder where the edge keeps the edgeHub environment of its last deployment (default: the user's config folder/outpost)")
	addRateFlags(fs, &f.rates)
	if err := parseServerFlags(fs, args); err != nil {
		return err
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	if err := startPprof(); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg.Logger = log
	envFile := f.envFile()
	cfg.OnEdgeHubEnv = func(env map[string]string) {
		if err := writeDeploymentEnv(envFile, env); err != nil {
			log.Error("saving the edgeHub environment of the deployment", "file", envFile, "error", err)
			return
		}
		if sf := env["storageFolder"]; sf != "" && sf != cfg.StorageDir {
			log.Warn("the deployment sets the edgeHub storageFolder; it applies at the next start unless --storage-folder or $storageFolder is set",
				"storageFolder", sf, "inUse", cfg.StorageDir)
		}
	}

	s, err := edgeserver.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	// Run ends with ctx, so Background lets its error (a never-synced
	// edge's) be the one reported.
	if err := s.AwaitReady(context.Background()); err != nil {
		return err
	}
	fmt.Printf("edge ready: mqtt=%s https=%s\n", s.Edge().MQTTAddr(), s.Edge().HTTPSAddr())
	if err := s.Wait(); err != nil {
		return err
	}
	return s.Close()
}

// config checks the flags and turns them into the edge server's
// options.
func (f edgeFlags) config() (edgeserver.Config, error) {
	cfg := edgeserver.Config{ConnectionString: f.connString}
	if f.connString == "" {
		return cfg, errors.New("edge: --connection-string is required")
	}
	if err := checkRates("edge", &f.rates); err != nil {
		return cfg, err
	}
	cfg.Rates = f.rates
	if _, err := f.identity(); err != nil {
		return cfg, fmt.Errorf("edge: --connection-string: %w", err)
	}
	cfg.StorageDir = f.storageFolder
	if cfg.StorageDir == "" {
		cfg.StorageDir = os.Getenv("storageFolder")
	}
	if cfg.StorageDir == "" {
		env, err := readDeploymentEnv(f.envFile())
		if err != nil {
			return cfg, fmt.Errorf("edge: %w", err)
		}
		if sf := env["storageFolder"]; sf != "" {
			fmt.Fprintf(os.Stderr, "edge: storage folder %s, from the edgeHub env.storageFolder of the last deployment\n", sf)
			cfg.StorageDir = sf
		}
	}
	if cfg.StorageDir == "" {
		return cfg, errors.New("edge: --storage-folder (or the storageFolder environment variable, or a deployment's edgeHub env.storageFolder) is required")
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

// identity is the hub and device id of the connection string, which
// name the edge's deployment env file.
func (f edgeFlags) identity() (edge.Config, error) {
	var c edge.Config
	err := edge.ParseConnectionString(f.connString, &c)
	return c, err
}

// envFile is this edge's deployment env file (see deploymentEnvFile).
func (f edgeFlags) envFile() string {
	c, _ := f.identity()
	return deploymentEnvFile(f.stateDir, c.HubHostName, c.DeviceID)
}

// deploymentEnvFile is where the edge keeps the edgeHub environment of
// its last deployment: outside the storage folder, since it may name the
// storage folder. The name hashes hub and device id, which are not safe
// as file names.
func deploymentEnvFile(stateDir, hubHost, deviceID string) string {
	if stateDir == "" {
		if d, err := os.UserConfigDir(); err == nil {
			stateDir = filepath.Join(d, "outpost")
		} else {
			stateDir = filepath.Join(os.TempDir(), "outpost")
		}
	}
	sum := sha256.Sum256([]byte(hubHost + "/" + deviceID))
	return filepath.Join(stateDir, "edge-"+hex.EncodeToString(sum[:16])+".json")
}

type deploymentEnv struct {
	EdgeHubEnv map[string]string `json:"edgeHubEnv"`
}

func readDeploymentEnv(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read deployment env: %w", err)
	}
	var d deploymentEnv
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("deployment env %s is corrupt: %w", file, err)
	}
	return d.EdgeHubEnv, nil
}

// writeDeploymentEnv replaces the file atomically.
func writeDeploymentEnv(file string, env map[string]string) error {
	b, err := json.MarshalIndent(deploymentEnv{EdgeHubEnv: env}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".edge-env-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// runEdgeSetModules is `outpost edge set-modules --device-id EDGE
// --content deployment.json`, as `az iot edge set-modules`: it validates
// an IoT Edge deployment manifest and writes each module's desired
// properties into that module's twin at the hub, replacing what was
// there. Modules the manifest names that have no identity yet get one,
// as IoT Edge's agent would create them, so they can authenticate to
// the edge.
func runEdgeSetModules(ctx context.Context, args []string) error {
	c := newHubCommand("edge set-modules", "--device-id EDGE --content deployment.json")
	d := c.requiredString("device-id", "the edge device's id")
	content := c.requiredString("content", "the deployment manifest, a JSON file")
	var m *manifest.Manifest
	c.check(func() error {
		data, err := os.ReadFile(*content)
		if err != nil {
			return fmt.Errorf("read --content: %w", err)
		}
		m, err = manifest.Parse(data)
		return err
	})
	return c.run(args, func(s *service.Client) (any, error) { return nil, setModules(ctx, s, *d, m) })
}

// setModules writes the manifest's desired properties into the module
// twins of edge device d.
func setModules(ctx context.Context, c *service.Client, d string, m *manifest.Manifest) error {
	dev, err := c.GetDevice(ctx, d)
	if err != nil {
		return fmt.Errorf("device %s: %w", d, err)
	}
	if !dev.IsEdge() {
		return fmt.Errorf("device %s is not an IoT Edge device (create it with --edge-enabled)", d)
	}
	names := make([]string, 0, len(m.Desired))
	for n := range m.Desired {
		names = append(names, n)
	}
	// The system modules first, $edgeHub last of them: the edge applies
	// routes and TTL as soon as $edgeHub changes.
	sort.Slice(names, func(i, j int) bool {
		rank := func(n string) int {
			switch n {
			case manifest.EdgeAgent:
				return 0
			case manifest.EdgeHub:
				return 2
			}
			return 1
		}
		if rank(names[i]) != rank(names[j]) {
			return rank(names[i]) < rank(names[j])
		}
		return names[i] < names[j]
	})
	for _, n := range names {
		if n != manifest.EdgeAgent && n != manifest.EdgeHub {
			if _, err := c.GetModule(ctx, d, n); service.IsNotFound(err) {
				if _, err := c.CreateModule(ctx, identity.Module{DeviceID: d, ModuleID: n}); err != nil {
					return fmt.Errorf("create module %s: %w", n, err)
				}
			} else if err != nil {
				return fmt.Errorf("module %s: %w", n, err)
			}
		}
		if err := replaceDesired(ctx, c, d, n, m.Desired[n]); err != nil {
			return fmt.Errorf("module %s twin: %w", n, err)
		}
	}
	ttl := "default"
	if m.TTL > 0 {
		ttl = fmt.Sprintf("%d s", int64(m.TTL/time.Second))
	}
	fmt.Fprintf(stdout, "deployment applied to %s: %d module twins, %d routes, store-and-forward TTL %s\n",
		d, len(names), len(m.Routes.Routes), ttl)
	return nil
}

// replaceDesired makes a twin's desired properties exactly desired: a
// PATCH of the differences, removed properties as null, conditional on
// the etag read (retried when another writer got there first).
func replaceDesired(ctx context.Context, c *service.Client, deviceID, moduleID string, desired map[string]any) error {
	for attempt := 0; ; attempt++ {
		t, err := c.GetTwin(ctx, deviceID, moduleID)
		if err != nil {
			return err
		}
		cur := t.Properties.Desired
		if cur == nil {
			cur = map[string]any{}
		}
		patch := twin.Diff(cur, desired)
		if len(patch) == 0 {
			return nil
		}
		_, err = c.UpdateTwin(ctx, deviceID, moduleID, service.NewTwinPatch(nil, patch), t.ETag)
		if err == nil || !service.IsPreconditionFailed(err) || attempt >= 4 {
			return err
		}
	}
}
