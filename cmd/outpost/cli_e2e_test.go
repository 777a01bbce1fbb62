package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"outpost/internal/sas"
)

// TestCLIEndToEnd is the parent/child story of the IoT Edge offline docs,
// run as a new user would: build the binary, start `outpost hub` as a
// process, drive it with the admin commands and a shell pipeline, restart
// the hub and check that everything is still there.
func TestCLIEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a hub; skipped with -short")
	}
	if _, ok := commands()["hub"]; !ok {
		t.Skip("the hub command is not registered yet")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("needs bash for the shell pipeline")
	}
	if _, err := exec.LookPath("paste"); err != nil {
		t.Skip("needs paste for the shell pipeline")
	}
	binDir := t.TempDir()
	bin := filepath.Join(binDir, "outpost")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	dataDir := t.TempDir()
	hub := startHub(t, bin, dataDir, "127.0.0.1:0", "127.0.0.1:0")
	connStr, ca := hub.serviceConnectionString(t), hub.caPEM(t)
	cli := &cliRunner{bin: bin, env: append(os.Environ(),
		envHubConnectionString+"="+connStr,
		envCA+"="+filepath.Join(dataDir, "ca.pem"),
		"PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"),
	)}

	t.Run("create devices", func(t *testing.T) {
		out := cli.ok(t, "device-identity", "create", "--device-id", "edge-device1", "--edge-enabled")
		var d struct {
			DeviceID     string `json:"deviceId"`
			Capabilities struct {
				IoTEdge bool `json:"iotEdge"`
			} `json:"capabilities"`
			DeviceScope string `json:"deviceScope"`
		}
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("create printed %q: %v", out, err)
		}
		if d.DeviceID != "edge-device1" || !d.Capabilities.IoTEdge || d.DeviceScope == "" {
			t.Errorf("created %+v", d)
		}
		for _, id := range []string{"sensor-a", "sensor-b", "sensor-c"} {
			cli.ok(t, "device-identity", "create", "--device-id", id)
		}
		cli.ok(t, "device-identity", "create", "--device-id", "edge-device2", "--edge-enabled")
	})

	t.Run("create twice fails", func(t *testing.T) {
		cli.fails(t, "DeviceAlreadyExists", "device-identity", "create", "--device-id", "sensor-a")
	})

	t.Run("query and add children through a shell", func(t *testing.T) {
		script := `set -eo pipefail
list=$(outpost query -q "SELECT deviceId FROM devices WHERE capabilities.iotEdge = false" -o tsv | paste -sd,)
echo "list=$list"
outpost device-identity add-children --device-id edge-device1 --child-list "$list"`
		cmd := exec.Command(bash, "-c", script)
		cmd.Env = cli.env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("script: %v\n%s", err, out)
		}
		got := strings.Split(strings.TrimPrefix(strings.TrimSpace(string(out)), "list="), ",")
		slices.Sort(got)
		if want := []string{"sensor-a", "sensor-b", "sensor-c"}; !slices.Equal(got, want) {
			t.Errorf("query built the list %q, want %q", got, want)
		}
	})

	t.Run("list children", func(t *testing.T) {
		if got := cli.ok(t, "device-identity", "list-children", "--device-id", "edge-device1"); got != "sensor-a\nsensor-b\nsensor-c\n" {
			t.Errorf("list-children printed %q", got)
		}
		var ids []string
		if err := json.Unmarshal([]byte(cli.ok(t, "device-identity", "list-children", "--device-id", "edge-device1", "-o", "json")), &ids); err != nil {
			t.Fatal(err)
		}
		if len(ids) != 3 {
			t.Errorf("-o json gave %q", ids)
		}
	})

	t.Run("an edge device cannot be a child", func(t *testing.T) {
		cli.fails(t, "only non-edge devices can be children",
			"device-identity", "add-children", "--device-id", "edge-device1", "--child-list", "edge-device2")
	})

	t.Run("a second parent needs force", func(t *testing.T) {
		errOut := cli.fails(t, "already has parent",
			"device-identity", "add-children", "--device-id", "edge-device2", "--child-list", "sensor-a")
		if !strings.Contains(errOut, "--force") {
			t.Errorf("the error does not say how to proceed: %q", errOut)
		}
		cli.ok(t, "device-identity", "add-children", "--device-id", "edge-device2", "--child-list", "sensor-a", "--force")
		if got := cli.ok(t, "device-identity", "list-children", "--device-id", "edge-device2"); got != "sensor-a\n" {
			t.Errorf("edge-device2 children %q", got)
		}
		if got := cli.ok(t, "device-identity", "list-children", "--device-id", "edge-device1"); got != "sensor-b\nsensor-c\n" {
			t.Errorf("edge-device1 children %q", got)
		}
	})

	t.Run("remove children", func(t *testing.T) {
		cli.ok(t, "device-identity", "remove-children", "--device-id", "edge-device2", "--child-list", "sensor-a")
		cli.ok(t, "device-identity", "add-children", "--device-id", "edge-device1", "--child-list", "sensor-a, sensor-b")
		if got := cli.ok(t, "device-identity", "list-children", "--device-id", "edge-device1"); got != "sensor-a\nsensor-b\nsensor-c\n" {
			t.Errorf("edge-device1 children %q", got)
		}
	})

	t.Run("twin update and show", func(t *testing.T) {
		cli.ok(t, "device-twin", "update", "--device-id", "sensor-b", "--desired", `{"rate":5}`, "--tags", `{"site":"north"}`)
		var tw struct {
			Tags       map[string]any `json:"tags"`
			Properties struct {
				Desired map[string]any `json:"desired"`
			} `json:"properties"`
		}
		if err := json.Unmarshal([]byte(cli.ok(t, "device-twin", "show", "--device-id", "sensor-b")), &tw); err != nil {
			t.Fatal(err)
		}
		if tw.Tags["site"] != "north" || tw.Properties.Desired["rate"] != 5.0 {
			t.Errorf("twin after update: %+v", tw)
		}
		cli.fails(t, "PreconditionFailed", "device-twin", "update", "--device-id", "sensor-b", "--desired", `{"rate":6}`, "--etag", "bm90LWl0")
	})

	t.Run("modules", func(t *testing.T) {
		cli.ok(t, "module-identity", "create", "--device-id", "edge-device1", "--module-id", "filter")
		out := cli.ok(t, "module-identity", "list", "--device-id", "edge-device1", "-o", "tsv")
		if !strings.Contains(out, "filter") {
			t.Errorf("module list %q lacks filter", out)
		}
		cs := strings.TrimSpace(cli.ok(t, "device-identity", "connection-string", "show", "--device-id", "edge-device1", "--module-id", "filter"))
		parsed, err := sas.ParseConnectionString(cs)
		if err != nil || parsed.ModuleID != "filter" || parsed.SharedAccessKey == "" {
			t.Errorf("module connection string %q: %+v %v", cs, parsed, err)
		}
	})

	t.Run("connection string", func(t *testing.T) {
		cs := strings.TrimSpace(cli.ok(t, "device-identity", "connection-string", "show", "--device-id", "sensor-c", "--gateway-hostname", "edge-device1"))
		parsed, err := sas.ParseConnectionString(cs)
		if err != nil {
			t.Fatalf("%q: %v", cs, err)
		}
		hubCS, _ := sas.ParseConnectionString(connStr)
		if parsed.DeviceID != "sensor-c" || parsed.GatewayHostName != "edge-device1" || parsed.SharedAccessKey == "" || parsed.HostName != hubCS.HostName {
			t.Errorf("connection string %q", cs)
		}
	})

	t.Run("query formats", func(t *testing.T) {
		out := cli.ok(t, "query", "-q", "SELECT * FROM devices WHERE capabilities.iotEdge = true", "-o", "table")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.Contains(lines[0], "deviceId") {
			t.Errorf("table:\n%s", out)
		}
		if got := cli.ok(t, "query", "-q", "SELECT deviceId FROM devices", "--top", "2", "-o", "tsv"); strings.Count(got, "\n") != 2 {
			t.Errorf("--top 2 printed %q", got)
		}
	})

	t.Run("update and delete", func(t *testing.T) {
		cli.ok(t, "device-identity", "create", "--device-id", "temp")
		out := cli.ok(t, "device-identity", "update", "--device-id", "temp", "--status", "disabled")
		if !strings.Contains(out, `"status": "disabled"`) {
			t.Errorf("update printed %s", out)
		}
		cli.ok(t, "device-identity", "delete", "--device-id", "temp")
		cli.fails(t, "DeviceNotFound", "device-identity", "show", "--device-id", "temp")
	})

	t.Run("errors exit non-zero", func(t *testing.T) {
		cli.fails(t, "DeviceNotFound", "device-identity", "show", "--device-id", "nobody")
		cli.fails(t, "--device-id is required", "device-identity", "show")
		cli.fails(t, "flag provided but not defined", "device-identity", "list", "--nope")
		cli.fails(t, "invalid JSON", "device-twin", "update", "--device-id", "sensor-a", "--desired", "{")
	})

	before := cli.ok(t, "device-identity", "show", "--device-id", "sensor-c")
	hub.stop(t)

	t.Run("restart keeps everything", func(t *testing.T) {
		// Same addresses, so the connection string stays valid.
		hub2 := startHub(t, bin, dataDir, hub.httpsAddr, hub.mqttAddr)
		defer hub2.stop(t)
		if got := hub2.serviceConnectionString(t); got != connStr {
			t.Errorf("service connection string changed:\n%s\n%s", connStr, got)
		}
		if !bytes.Equal(hub2.caPEM(t), ca) {
			t.Error("ca.pem changed across the restart")
		}
		if got := cli.ok(t, "device-identity", "list-children", "--device-id", "edge-device1"); got != "sensor-a\nsensor-b\nsensor-c\n" {
			t.Errorf("children after restart %q", got)
		}
		if after := cli.ok(t, "device-identity", "show", "--device-id", "sensor-c"); !sameDevice(t, before, after) {
			t.Errorf("sensor-c changed:\n%s\n%s", before, after)
		}
		out := cli.ok(t, "device-twin", "show", "--device-id", "sensor-b")
		if !strings.Contains(out, `"north"`) || !strings.Contains(out, `"rate": 5`) {
			t.Errorf("twin after restart:\n%s", out)
		}
		if out := cli.ok(t, "module-identity", "show", "--device-id", "edge-device1", "--module-id", "filter"); !strings.Contains(out, `"filter"`) {
			t.Errorf("module after restart:\n%s", out)
		}
		got := strings.Fields(cli.ok(t, "query", "-q", "SELECT deviceId FROM devices", "-o", "tsv"))
		for _, id := range []string{"edge-device1", "edge-device2", "sensor-a", "sensor-b", "sensor-c"} {
			if !slices.Contains(got, id) {
				t.Errorf("%s missing after restart; devices: %q", id, got)
			}
		}
	})
}

// sameDevice compares two device documents on what a restart must keep.
func sameDevice(t *testing.T, a, b string) bool {
	t.Helper()
	type dev struct {
		DeviceID       string          `json:"deviceId"`
		ETag           string          `json:"etag"`
		Status         string          `json:"status"`
		Authentication json.RawMessage `json:"authentication"`
		DeviceScope    string          `json:"deviceScope"`
		ParentScopes   []string        `json:"parentScopes"`
	}
	var x, y dev
	if err := json.Unmarshal([]byte(a), &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatal(err)
	}
	return x.DeviceID == y.DeviceID && x.ETag == y.ETag && x.Status == y.Status &&
		bytes.Equal(x.Authentication, y.Authentication) && x.DeviceScope == y.DeviceScope &&
		slices.Equal(x.ParentScopes, y.ParentScopes)
}

// cliRunner runs the built binary with the hub's environment.
type cliRunner struct {
	bin string
	env []string
}

func (c *cliRunner) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = c.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("outpost %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// ok runs a command that must succeed and returns its stdout.
func (c *cliRunner) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := c.run(t, args...)
	if code != 0 {
		t.Fatalf("outpost %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// fails runs a command that must exit 1 with want in its stderr, and
// returns the stderr.
func (c *cliRunner) fails(t *testing.T, want string, args ...string) string {
	t.Helper()
	out, errOut, code := c.run(t, args...)
	if code != 1 {
		t.Errorf("outpost %s: exit %d, want 1\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	if !strings.Contains(errOut, want) {
		t.Errorf("outpost %s: stderr %q, want it to contain %q", strings.Join(args, " "), errOut, want)
	}
	return errOut
}

// hubProcess is an `outpost hub` subprocess.
type hubProcess struct {
	dir                 string
	cmd                 *exec.Cmd
	out                 *syncBuffer
	exited              chan struct{} // closed once cmd.Wait returned
	waitErr             error         // valid after exited
	httpsAddr, mqttAddr string
	stopOnce            sync.Once
}

var readyLine = regexp.MustCompile(`hub ready:.*\bhttps=(\S+).*\bmqtt=(\S+)`)

// startHub starts the hub and waits for its ready line.
func startHub(t *testing.T, bin, dir, httpsAddr, mqttAddr string) *hubProcess {
	t.Helper()
	h := &hubProcess{dir: dir, out: &syncBuffer{changed: make(chan struct{}, 1)}, exited: make(chan struct{})}
	h.cmd = exec.Command(bin, "hub", "--data-dir", dir, "--https-addr", httpsAddr, "--mqtt-addr", mqttAddr)
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start hub: %v", err)
	}
	go func() {
		h.waitErr = h.cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			t.Logf("hub output (last 40 lines):\n%s", lastLines(h.out.String(), 40))
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		if m := readyLine.FindStringSubmatch(h.out.String()); m != nil {
			h.httpsAddr, h.mqttAddr = m[1], m[2]
			return h
		}
		select {
		case <-h.exited:
			t.Fatalf("hub exited before it was ready: %v\n%s", h.waitErr, h.out.String())
		case <-h.out.changed:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("hub not ready within 60s:\n%s", h.out.String())
		}
	}
}

func (h *hubProcess) serviceConnectionString(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dir, "service-connection-string"))
	if err != nil {
		t.Fatalf("read service connection string: %v", err)
	}
	cs := strings.TrimSpace(string(b))
	if !strings.Contains(h.out.String(), cs) {
		t.Errorf("the hub did not print its service connection string")
	}
	return cs
}

func (h *hubProcess) caPEM(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dir, "ca.pem"))
	if err != nil {
		t.Fatalf("read ca.pem: %v", err)
	}
	return b
}

// stop sends SIGTERM and waits for a clean exit; it kills the hub if it
// does not exit in time. Safe to call twice.
func (h *hubProcess) stop(t *testing.T) {
	t.Helper()
	h.stopOnce.Do(func() {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
			if h.waitErr != nil {
				t.Errorf("hub exited with %v after SIGTERM\n%s", h.waitErr, h.out.String())
			}
		case <-time.After(30 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.exited
			t.Errorf("hub did not exit within 30s of SIGTERM\n%s", h.out.String())
		}
	})
}

// syncBuffer collects a process's output and signals each write on
// changed, which must be made with a buffer of one.
type syncBuffer struct {
	mu      sync.Mutex // guards buf
	buf     bytes.Buffer
	changed chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	n, err := b.buf.Write(p)
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
