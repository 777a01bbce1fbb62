package outposttest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"outpost/internal/client"
	"outpost/internal/netfault"
	"outpost/internal/service"
	"outpost/internal/soak"
)

// raceEnabled is set by race_test.go under -race, so the binary is built
// the same way and reuses the test's compiled packages.
var raceEnabled bool

// outpostBin is the binary the package's tests run, built once: a build
// under -race takes 20–35 s.
var outpostBin struct {
	once      sync.Once
	dir, path string
	err       error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if outpostBin.dir != "" {
		_ = os.RemoveAll(outpostBin.dir)
	}
	os.Exit(code)
}

// buildOutpost returns the outpost binary, building it on first use.
func buildOutpost(t *testing.T) string {
	t.Helper()
	outpostBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "outposttest-bin-")
		if err != nil {
			outpostBin.err = err
			return
		}
		outpostBin.dir = dir
		bin := filepath.Join(dir, "outpost")
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "outpost/cmd/outpost")
		cmd := exec.Command("go", args...)
		cmd.Dir = filepath.Join("..", "..")
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			outpostBin.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		outpostBin.path = bin
		t.Logf("built outpost in %v", time.Since(start).Round(time.Millisecond))
	})
	if outpostBin.err != nil {
		t.Fatal(outpostBin.err)
	}
	return outpostBin.path
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
	p := spawnEdgeProcess(t, bin, args...)
	p.awaitReady(t)
	return p
}

// spawnEdgeProcess runs the edge without waiting for it.
func spawnEdgeProcess(t *testing.T, bin string, args ...string) *edgeProcess {
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
	return p
}

// awaitReady waits until the edge prints that it is ready.
func (p *edgeProcess) awaitReady(t *testing.T) {
	t.Helper()
	select {
	case <-p.out.ready:
	case <-p.exited:
		t.Fatalf("edge exited before it was ready: %v\n%s", p.err, p.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("edge not ready within 60 s:\n%s", p.stderr)
	}
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

// killLoop is a kill loop's world: the hub, the edge as a process on its
// storage folder, children sending through it, and the fault proxy on
// its link.
type killLoop struct {
	t     *testing.T
	bin   string
	env   *Env
	mon   *Monitor
	proxy *netfault.Proxy
	rng   *rand.Rand

	connStr, dir        string
	mqttAddr, httpsAddr string
	proc                *edgeProcess
	pubs                []*publisher
	fleet               *fleet

	serving []time.Duration // start to "edge ready", every start
	kills   map[string]int  // by moment
}

// newKillLoop starts the hub, the edge process and its children; the
// test runs in parallel with others.
func newKillLoop(t *testing.T, children int) *killLoop {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the outpost binary")
	}
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	k := &killLoop{t: t, bin: buildOutpost(t), env: NewEnv(t), rng: rand.New(rand.NewPCG(seed, 0)), kills: map[string]int{}}
	edge1 := k.env.CreateEdge("edge1")
	var ids []string
	for i := range children {
		ids = append(ids, fmt.Sprintf("child%d", i+1))
		k.env.CreateDevice(ids[i])
	}
	k.env.AddChildren("edge1", ids...)
	k.mon = k.env.Monitor(t)
	proxy, err := netfault.New(k.env.MQTTAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	k.proxy = proxy
	k.connStr, k.dir = edge1.ConnectionString, t.TempDir()
	k.mqttAddr, k.httpsAddr = freeAddr(t), freeAddr(t)
	k.start()
	k.awaitLink(true)
	for _, id := range ids {
		c, err := client.New(client.Config{
			ConnectionString: service.DeviceConnectionString(k.env.device(id), HubHostName, k.mqttAddr),
			RootCAs:          k.env.RootCAs,
			Logger:           k.env.Logger().With("side", id),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = c.Connect(ctx)
		cancel()
		if err != nil {
			t.Fatalf("%s through the edge process: %v", id, err)
		}
		k.pubs = append(k.pubs, newPublisher(c))
	}
	// Each child has one message in flight (QoS 1, the next only after
	// the PUBACK), one every 10 ms.
	k.fleet = startFleet(t, 10*time.Millisecond, k.pubs...)
	return k
}

func (k *killLoop) args() []string {
	return []string{
		"--connection-string", k.connStr,
		"--storage-folder", k.dir,
		"--upstream-addr", k.proxy.Addr(),
		"--hub-ca", k.env.CAFile,
		"--hostname", "localhost",
		"--mqtt-addr", k.mqttAddr,
		"--https-addr", k.httpsAddr,
	}
}

// start runs the edge on its storage folder and waits until it serves.
func (k *killLoop) start() {
	k.t.Helper()
	begin := time.Now()
	k.proc = startEdgeProcess(k.t, k.bin, k.args()...)
	k.serving = append(k.serving, time.Since(begin))
}

// kill kills the edge with SIGKILL, counting the moment.
func (k *killLoop) kill(moment string) {
	k.t.Helper()
	k.proc.kill9(k.t)
	k.kills[moment]++
}

func (k *killLoop) awaitLink(up bool) {
	k.t.Helper()
	CheckFor(k.t, 30*time.Second, 20*time.Millisecond, func() error {
		st, err := FetchStatus(k.env.RootCAs, k.httpsAddr)
		if err != nil {
			return err
		}
		if st.Link.Connected != up {
			return fmt.Errorf("link connected %v, want %v", st.Link.Connected, up)
		}
		return nil
	})
}

func (k *killLoop) cut() {
	k.t.Helper()
	k.proxy.Cut()
	k.awaitLink(false)
}

func (k *killLoop) restore() {
	k.t.Helper()
	if err := k.proxy.Restore(); err != nil {
		k.t.Fatal(err)
	}
}

// killOnce kills the edge at a random moment and starts it again on the
// same storage folder; between the last kill and the start it calls
// between (nil to do nothing).
func (k *killLoop) killOnce(between func()) {
	k.t.Helper()
	switch k.rng.IntN(3) {
	case 0: // offline, with a backlog
		k.cut()
		k.fleet.awaitMore(k.t, 5+k.rng.IntN(30), 30*time.Second)
		k.kill("offline")
	case 1: // during a drain: a backlog, the link back, part of it at the hub
		k.cut()
		backlog := 30 + k.rng.IntN(60)
		k.fleet.awaitMore(k.t, backlog, 60*time.Second)
		base := k.mon.Len()
		k.restore()
		want := base + 1 + k.rng.IntN(backlog*len(k.pubs)/2)
		CheckFor(k.t, 60*time.Second, 2*time.Millisecond, func() error {
			if n := k.mon.Len(); n < want {
				return fmt.Errorf("%d of %d messages at the hub", n, want)
			}
			return nil
		})
		k.kill("during a drain")
	default: // the serving edge, then its successor during its start-up
		k.kill("while serving")
		if k.rng.IntN(2) == 0 {
			k.proxy.Cut()
		} else {
			k.restore()
		}
		typical := soak.Median(k.serving)
		p := spawnEdgeProcess(k.t, k.bin, k.args()...)
		// A random moment within one and a half typical start-ups: before
		// it serves, or while it reconnects, syncs and drains.
		at := time.Duration(k.rng.Int64N(int64(typical)*3/2 + 1))
		select {
		case <-time.After(at):
		case <-p.exited:
			k.t.Fatalf("edge exited by itself during start-up: %v\n%s", p.err, p.stderr)
		}
		k.proc = p
		select {
		case <-p.out.ready:
			k.kill("during recovery (serving, reconnecting)")
		default:
			k.kill("during start-up (not yet serving)")
		}
	}
	if between != nil {
		between()
	}
	k.start()
}

// killOutcome is what the hub holds against what the edge acked.
type killOutcome struct {
	lost, reordered int            // devices with a lost or reordered message
	dups, resends   map[string]int // by device; resends: sends without a PUBACK
}

// finish restores the link, stops the children and checks the hub has
// every message in acked (by device), in order.
func (k *killLoop) finish(acked func() map[string][]int) killOutcome {
	k.t.Helper()
	k.restore()
	k.awaitLink(true)
	// Some more through the last edge started, its link up.
	k.fleet.awaitMore(k.t, 20, 60*time.Second)
	k.fleet.stop()
	want := acked()
	out := killOutcome{dups: k.mon.AwaitDelivered(k.t, 120*time.Second, want), resends: map[string]int{}}
	for _, p := range k.pubs {
		out.resends[p.id] = len(p.failures())
		d, err := k.mon.Check(p.id, want[p.id])
		if err != nil {
			k.t.Fatal(err)
		}
		out.lost += len(d.Missing)
		if d.OutOfOrder != "" {
			out.reordered++
		}
	}
	return out
}

func (k *killLoop) totalKills() int {
	n := 0
	for _, c := range k.kills {
		n += c
	}
	return n
}

// TestKillLoop kills the edge process with SIGKILL at random moments,
// offline, during a drain, and during its own start-up and recovery, and
// starts it again on the same store, while QoS 1 children send numbered
// messages through it. Every message the edge acknowledged must reach the
// hub, in order per device; duplicates are counted: a child sends again
// what had no PUBACK, and the hub drops the edge's own replays.
func TestKillLoop(t *testing.T) {
	kills := soak.N(5, 50)
	start := time.Now()
	k := newKillLoop(t, 3)
	for k.totalKills() < kills {
		k.killOnce(nil)
	}
	out := k.finish(func() map[string][]int { return ackedBy(k.pubs...) })
	acked, dup, resent := 0, 0, 0
	for _, p := range k.pubs {
		acked += p.ackedLen()
		dup += out.dups[p.id]
		resent += out.resends[p.id]
		if out.dups[p.id] > out.resends[p.id] {
			t.Errorf("%s: %d duplicates at the hub, but only %d messages were sent again: the hub kept an edge replay", p.id, out.dups[p.id], out.resends[p.id])
		}
	}
	if c := k.env.Plane.EdgeCounts()["edge1"]; c.StoreRewinds != 0 {
		t.Errorf("the hub took a restarted edge's store for a rewound one %d times", c.StoreRewinds)
	}
	t.Logf("%d kills %v; %d acked by the edge, %d lost, devices reordered %d; %d duplicates at the hub (%d sends without a PUBACK, sent again; %d edge replays dropped by the hub); restart-to-serving median %v (%d starts, max %v); %v",
		k.totalKills(), k.kills, acked, out.lost, out.reordered, dup, resent, k.env.Plane.EdgeCounts()["edge1"].Duplicates,
		soak.Median(k.serving).Round(time.Millisecond), len(k.serving), slices.Max(k.serving).Round(time.Millisecond), time.Since(start).Round(time.Second))
}

// TestKillLoopStoreReset is the kill loop with the storage folder reset
// at random kills, while the edge is down: wiped, restored from a copy
// taken at an earlier kill, or moved to a copy in another folder (a disk
// cloned to another machine). A wipe or a restore loses what the old
// store held and the hub did not have yet; every message acknowledged
// otherwise, and every one acknowledged after a reset, must reach the
// hub, in order: none may be dropped as a duplicate of what the old store
// numbered alike.
func TestKillLoopStoreReset(t *testing.T) {
	kills := soak.N(5, 50)
	start := time.Now()
	k := newKillLoop(t, 2)
	backup := ""
	exposed := map[string]map[int]bool{} // lost to a reset by design
	resets := map[string]int{}
	expose := func() {
		for _, p := range k.pubs {
			atHub, err := k.mon.Seqs(p.id)
			if err != nil {
				t.Fatal(err)
			}
			if exposed[p.id] == nil {
				exposed[p.id] = map[int]bool{}
			}
			for _, s := range p.ackedSeqs() {
				if !slices.Contains(atHub, s) {
					exposed[p.id][s] = true
				}
			}
		}
	}
	reset := func() {
		// The children stop while the edge is down, so that no PUBACK of
		// the old store is counted after the reset.
		k.fleet.stop()
		defer func() { k.fleet = startFleet(t, 10*time.Millisecond, k.pubs...) }()
		if backup == "" || k.rng.IntN(4) == 0 {
			backup = filepath.Join(t.TempDir(), "backup")
			copyDir(t, backup, k.dir)
			resets["backup taken"]++
			return
		}
		switch k.rng.IntN(4) {
		case 0:
			resets["none"]++
		case 1:
			expose()
			if err := os.RemoveAll(k.dir); err != nil {
				t.Fatal(err)
			}
			k.restore() // a new store must sync before it serves
			resets["wiped"]++
		case 2:
			expose()
			replaceDir(t, k.dir, backup)
			resets["restored"]++
		default:
			clone := filepath.Join(t.TempDir(), "clone")
			copyDir(t, clone, k.dir)
			if err := os.RemoveAll(k.dir); err != nil {
				t.Fatal(err)
			}
			k.dir = clone
			resets["copied"]++
		}
	}
	for k.totalKills() < kills {
		k.killOnce(reset)
	}
	out := k.finish(func() map[string][]int {
		want := map[string][]int{}
		for _, p := range k.pubs {
			for _, s := range p.ackedSeqs() {
				if !exposed[p.id][s] {
					want[p.id] = append(want[p.id], s)
				}
			}
		}
		return want
	})
	acked, nExposed, dup := 0, 0, 0
	for _, p := range k.pubs {
		acked += p.ackedLen()
		nExposed += len(exposed[p.id])
		dup += out.dups[p.id]
	}
	c := k.env.Plane.EdgeCounts()["edge1"]
	t.Logf("%d kills %v, resets %v; %d acked by the edge, %d of them held only by a store then wiped or replaced, of the others %d lost, devices reordered %d; %d duplicates at the hub; the hub dropped %d replays as duplicates and found the store behind it %d times; restart-to-serving median %v (%d starts); %v",
		k.totalKills(), k.kills, resets, acked, nExposed, out.lost, out.reordered, dup, c.Duplicates, c.StoreRewinds,
		soak.Median(k.serving).Round(time.Millisecond), len(k.serving), time.Since(start).Round(time.Second))
}
