package outposttest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/netfault"
	"outpost/internal/service"
)

// raceEnabled is set by race_test.go under -race, so the binary is built
// the same way and reuses the test's compiled packages.
var raceEnabled bool

// buildOutpost builds the outpost binary into a temp dir.
func buildOutpost(t *testing.T) string {
	t.Helper()
	return buildOutpostRace(t, raceEnabled)
}

// buildOutpostRace is buildOutpost with the race detector on or off: a
// race build's memory grows with the detector's own state, which a test
// of the process's memory must not measure.
func buildOutpostRace(t *testing.T, race bool) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "outpost")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "outpost/cmd/outpost")
	cmd := exec.Command("go", args...)
	cmd.Dir = filepath.Join("..", "..")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built outpost in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// edgeProcess is `outpost edge …` running as a child process.
type edgeProcess struct {
	cmd    *exec.Cmd
	out    *readyWriter
	stderr *LogBuffer
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startEdgeProcess runs the edge and waits until it prints that it is
// ready.
func startEdgeProcess(t *testing.T, bin string, args ...string) *edgeProcess {
	t.Helper()
	p := &edgeProcess{
		cmd:    exec.Command(bin, append([]string{"edge"}, args...)...),
		out:    &readyWriter{marker: "edge ready:", ready: make(chan struct{})},
		stderr: &LogBuffer{},
		exited: make(chan struct{}),
	}
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.stderr
	if os.Getenv("OUTPOST_TEST_LOG") != "" {
		p.cmd.Stderr = io.MultiWriter(p.stderr, os.Stderr)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start edge: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("edge process stderr:\n%s", p.stderr)
		}
	})
	select {
	case <-p.out.ready:
	case <-p.exited:
		t.Fatalf("edge exited before it was ready: %v\n%s", p.err, p.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("edge not ready within 60 s:\n%s", p.stderr)
	}
	return p
}

// kill9 kills the process without letting it clean up.
func (p *edgeProcess) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9: %v", err)
	}
	<-p.exited
}

// stop asks the process to shut down and returns how it exited.
func (p *edgeProcess) stop(t *testing.T) error {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-p.exited:
		return p.err
	case <-time.After(30 * time.Second):
		t.Fatal("edge did not exit within 30 s of SIGTERM")
		return nil
	}
}

// readyWriter collects a process's output and closes ready once marker
// appears in it.
type readyWriter struct {
	marker string
	ready  chan struct{}

	mu   sync.Mutex
	buf  strings.Builder
	seen bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.seen && strings.Contains(w.buf.String(), w.marker) {
		w.seen = true
		close(w.ready)
	}
	return len(p), nil
}

func TestKill9WhileOffline(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the outpost binary")
	}
	t.Parallel()
	bin := buildOutpost(t)

	env := NewEnv(t)
	edge1 := env.CreateEdge("edge1")
	env.CreateDevice("child1")
	env.AddChildren("edge1", "child1")
	mon := env.Monitor(t)
	proxy, err := netfault.New(env.MQTTAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })

	mqttAddr, httpsAddr := freeAddr(t), freeAddr(t)
	args := []string{
		"--connection-string", edge1.ConnectionString,
		"--storage-folder", t.TempDir(),
		"--upstream-addr", proxy.Addr(),
		"--hub-ca", env.CAFile,
		"--hostname", "localhost",
		"--mqtt-addr", mqttAddr,
		"--https-addr", httpsAddr,
	}
	linkUp := func(want bool) func() error {
		return func() error {
			st, err := FetchStatus(env.RootCAs, httpsAddr)
			if err != nil {
				return err
			}
			if st.Link.Connected != want {
				return fmt.Errorf("link connected %v, want %v", st.Link.Connected, want)
			}
			return nil
		}
	}

	proc := startEdgeProcess(t, bin, args...)
	CheckFor(t, 20*time.Second, 20*time.Millisecond, linkUp(true))

	d := env.device("child1")
	c, err := client.New(client.Config{
		ConnectionString: service.DeviceConnectionString(d, HubHostName, mqttAddr),
		RootCAs:          env.RootCAs,
		Logger:           env.Logger().With("side", "child"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("child through the edge process: %v", err)
	}
	p := newPublisher(c)
	p.sendN(t, 5)

	proxy.Cut()
	CheckFor(t, 20*time.Second, 20*time.Millisecond, linkUp(false))
	const offline = 200
	p.sendN(t, offline)
	st, err := FetchStatus(env.RootCAs, httpsAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before kill -9: %d acknowledged, upstream queue %d", p.ackedLen(), st.Queues["$upstream"].Length)

	proc.kill9(t)
	proc = startEdgeProcess(t, bin, args...) // still offline: serves from its cache
	p.sendN(t, 20)
	CheckFor(t, 5*time.Second, 20*time.Millisecond, linkUp(false))

	proxy.Restore()
	CheckFor(t, 20*time.Second, 20*time.Millisecond, linkUp(true))
	dups := mon.AwaitDelivered(t, 60*time.Second, ackedBy(p))
	t.Logf("child1: %d acknowledged, %d sends without PUBACK, %d duplicates at the hub",
		p.ackedLen(), len(p.failures()), dups["child1"])
	if dups["child1"] > len(p.failures()) {
		t.Errorf("%d duplicates at the hub, but only %d messages were sent again: the hub kept an edge replay",
			dups["child1"], len(p.failures()))
	}
	c.Close()
	if err := proc.stop(t); err != nil {
		t.Errorf("edge exit after SIGTERM: %v", err)
	}
}
