package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"outpost/internal/certs"
	"outpost/internal/identity"
	"outpost/internal/sas"
	"outpost/internal/service"
)

// apiVersion goes into the MQTT user name, as the Azure SDKs send it.
const apiVersion = "2021-04-12"

// tokenTTL is the lifetime of the SAS tokens in the creds files: longer
// than any run, short enough not to matter if a file is left behind.
const tokenTTL = time.Hour

// cred is one line of an mqttload --creds file. mqttload substitutes
// clientId for {id} in its topic template, so clientId is the device id and
// the default template devices/{id}/messages/events/ is the device's own
// telemetry topic.
type cred struct {
	ClientID string `json:"clientId"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// deviceCred signs a device SAS token for d at hubHost (the HostName of the
// hub's connection strings, with its port). A child of an edge uses the
// same credentials at its gateway: the user name names the hub.
func deviceCred(hubHost string, d identity.Device, now time.Time) (cred, error) {
	key := d.Authentication.SymmetricKey.PrimaryKey
	if key == "" {
		return cred{}, fmt.Errorf("device %s has no primary key", d.DeviceID)
	}
	tok, err := sas.Sign(sas.DeviceResource(hubHost, d.DeviceID, ""), key, "", now.Add(tokenTTL))
	if err != nil {
		return cred{}, fmt.Errorf("device %s: %w", d.DeviceID, err)
	}
	return cred{
		ClientID: d.DeviceID,
		Username: hubHost + "/" + d.DeviceID + "/?api-version=" + apiVersion,
		Password: tok,
	}, nil
}

func writeCreds(path string, creds []cred) error {
	var b strings.Builder
	for _, c := range creds {
		line, err := json.Marshal(c)
		if err != nil {
			return err
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write creds: %w", err)
	}
	return nil
}

// openHub returns a service client for the hub whose --data-dir is dir,
// from the connection string and CA the hub wrote there.
func openHub(dir string) (*service.Client, error) {
	f, err := os.Open(filepath.Join(dir, "service-connection-string"))
	if err != nil {
		return nil, fmt.Errorf("hub dir: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return nil, fmt.Errorf("hub dir: %s/service-connection-string is empty", dir)
	}
	return service.New(service.Config{
		ConnectionString: strings.TrimSpace(sc.Text()),
		CAFile:           filepath.Join(dir, certs.CAFile),
	})
}

// createDevices creates count devices named prefix00, prefix01, … and
// returns them with the keys the hub generated.
func createDevices(ctx context.Context, svc *service.Client, prefix string, count int) ([]identity.Device, error) {
	devs := make([]identity.Device, 0, count)
	for i := range count {
		d, err := svc.CreateDevice(ctx, identity.Device{DeviceID: fmt.Sprintf("%s%02d", prefix, i)})
		if err != nil {
			return nil, fmt.Errorf("create device: %w", err)
		}
		devs = append(devs, d)
	}
	return devs, nil
}

func credsFor(hubHost string, devs []identity.Device) ([]cred, error) {
	now := time.Now()
	creds := make([]cred, 0, len(devs))
	for _, d := range devs {
		c, err := deviceCred(hubHost, d, now)
		if err != nil {
			return nil, err
		}
		creds = append(creds, c)
	}
	return creds, nil
}

func provisionHubCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("provision-hub", flag.ContinueOnError)
	hubDir := fs.String("hub-dir", "", "the hub's --data-dir (required)")
	n := fs.Int("devices", 10, "devices to create")
	prefix := fs.String("prefix", "dev", "device id prefix")
	out := fs.String("out", "", "mqttload creds file to write (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *hubDir == "" || *out == "" || *n < 1 {
		return errors.New("provision-hub: need --hub-dir, --out and --devices >= 1")
	}
	svc, err := openHub(*hubDir)
	if err != nil {
		return err
	}
	devs, err := createDevices(ctx, svc, *prefix, *n)
	if err != nil {
		return err
	}
	creds, err := credsFor(svc.HostName(), devs)
	if err != nil {
		return err
	}
	return writeCreds(*out, creds)
}

// provisionEdgeCmd creates an edge device and its children, writes the
// children's creds (their tokens name the hub, as a child's do behind a
// transparent gateway) and the edge's connection string.
func provisionEdgeCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("provision-edge", flag.ContinueOnError)
	hubDir := fs.String("hub-dir", "", "the hub's --data-dir (required)")
	edgeID := fs.String("edge-id", "edge1", "edge device id")
	n := fs.Int("children", 10, "children to create under the edge")
	out := fs.String("out", "", "mqttload creds file for the children (required)")
	csFile := fs.String("edge-cs", "", "file to write the edge's connection string to (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *hubDir == "" || *out == "" || *csFile == "" || *n < 1 {
		return errors.New("provision-edge: need --hub-dir, --out, --edge-cs and --children >= 1")
	}
	svc, err := openHub(*hubDir)
	if err != nil {
		return err
	}
	cs, creds, err := provisionEdge(ctx, svc, *edgeID, *n)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*csFile, []byte(cs+"\n"), 0o600); err != nil {
		return fmt.Errorf("write edge connection string: %w", err)
	}
	return writeCreds(*out, creds)
}

func provisionEdge(ctx context.Context, svc *service.Client, edgeID string, children int) (string, []cred, error) {
	edge, err := svc.CreateEdgeDevice(ctx, edgeID)
	if err != nil {
		return "", nil, fmt.Errorf("create edge: %w", err)
	}
	devs, err := createDevices(ctx, svc, "child", children)
	if err != nil {
		return "", nil, err
	}
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = d.DeviceID
	}
	if err := svc.AddChildren(ctx, edgeID, ids, false); err != nil {
		return "", nil, fmt.Errorf("add children: %w", err)
	}
	creds, err := credsFor(svc.HostName(), devs)
	if err != nil {
		return "", nil, err
	}
	return service.DeviceConnectionString(edge, svc.HostName(), ""), creds, nil
}

// certsCmd makes a CA and a server certificate for localhost and
// 127.0.0.1 in dir (ca.pem, server.pem, server-key.pem), for mosquitto's
// TLS listener: the peer of a TLS target should pay for TLS too.
func certsCmd(args []string) error {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to write the files to (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("certs: need --dir")
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	ca, _, err := certs.LoadOrCreateCA(*dir, "outpost bench CA")
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if _, err := certs.LoadOrCreateServerCert(*dir, ca, []string{"localhost", "127.0.0.1"}); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}
