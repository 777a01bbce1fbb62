package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"outpost/bench/summary"
	"outpost/internal/certs"
	"outpost/internal/hub/dataplane"
	"outpost/internal/metrics"
	"outpost/internal/netfault"
	"outpost/internal/service"
)

// drainResult is what one drain scenario measured.
type drainResult struct {
	Label   string `json:"label"`
	Backlog int    `json:"backlog"`
	// The offline ingest that built the backlog (mqttload's result line).
	Ingest json.RawMessage `json:"ingest"`
	// Queued messages the edge reported after the ingest, and again after
	// a kill -9 and a restart (offline): what a crash lost is the difference.
	QueuedAfterIngest int64 `json:"queuedAfterIngest"`
	QueuedAfterKill9  int64 `json:"queuedAfterKill9"`
	// Resident memory of the edge with the backlog queued: right after the
	// ingest (and its peak so far), and after the restart.
	RSSAfterIngestKB  int64 `json:"rssAfterIngestKB"`
	HWMAfterIngestKB  int64 `json:"hwmAfterIngestKB"`
	RSSAfterRestartKB int64 `json:"rssAfterRestartKB"`
	// ReconnectMs: link restored → the edge's link reports connected.
	// TransferS: connected → the hub's telemetry stream holds the whole
	// backlog (its message count on the hub's /metrics, polled every
	// 20 ms). The stream de-duplicates replays, so the count is of
	// distinct messages stored, which PUBACK follows.
	ReconnectMs float64 `json:"reconnectMs"`
	TransferS   float64 `json:"transferS"`
	DrainMsgsPS float64 `json:"drainMsgsPerSec"`
	// MaxStallMs is the longest time the stored count did not grow during
	// the transfer (to the poll's 20 ms): a link or store that stalls
	// shows here.
	MaxStallMs float64 `json:"maxStallMs"`
	// With --reader-timed, a reader of the hub's event stream runs during
	// the transfer, as the drain was first measured: the transfer then
	// ends at the backlog-th event read, and MaxGapMs is the longest wait
	// between two events at the reader. The reader costs the hub CPU, so
	// the stored-count figures of such a run are slower too.
	ReaderTransferS   float64 `json:"readerTransferS,omitempty"`
	ReaderDrainMsgsPS float64 `json:"readerDrainMsgsPerSec,omitempty"`
	MaxGapMs          float64 `json:"maxEventGapMs,omitempty"`
	// What the hub's stream held at the end, read from its start after
	// the transfer: all events, and distinct (edgeId, edgeSeq) pairs, the
	// key the edge stamps on every message it stores and the hub
	// de-duplicates replays by.
	AtHub       int64 `json:"atHub"`
	DistinctIDs int64 `json:"distinctEdgeSeqs"`
	// The drain's peer: the hub's own ingest of the same number of
	// messages over one connection, as the edge drains over one (mqttload:
	// 1 device, 64 in flight, 256 B, QoS 1), measured on the same hub
	// right after the drain. PeerRatio is DrainMsgsPS over its msg/s.
	PeerIngest json.RawMessage `json:"peerIngest,omitempty"`
	PeerRatio  float64         `json:"peerRatio,omitempty"`
}

// drainCmd runs the edge drain scenario with its own hub and edge
// processes, and the edge's upstream through a cuttable proxy:
//
//  1. the edge syncs once through the proxy; the proxy is cut;
//  2. mqttload fills the offline edge with --backlog messages (10 children,
//     QoS 1, 256 B, 64 in flight), every one acked after an fsync;
//  3. the edge is killed with SIGKILL and restarted offline; its queue
//     must still hold every acked message;
//  4. the proxy is restored and the time until the hub has stored the
//     last message is measured, split into reconnect and transfer, with
//     no reader of the hub's events running (unless --reader-timed);
//  5. the hub's events are read from the start: every message once;
//  6. the hub's ingest of as many messages over one connection, the
//     drain's peer, is measured (unless --peer=false).
func drainCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("drain", flag.ContinueOnError)
	bin := fs.String("outpost", "", "the outpost binary (required)")
	loadBin := fs.String("mqttload", "", "the mqttload binary (required)")
	dir := fs.String("dir", "", "an empty working directory (required)")
	backlog := fs.Int("backlog", 100_000, "messages to queue offline (a multiple of --children)")
	children := fs.Int("children", 10, "children of the edge, one mqttload client each")
	label := fs.String("label", "", "name of the run (default outpost-drain-BACKLOG)")
	timeout := fs.Duration("timeout", 0, "longest wait for the drain (default: 5 min + 1 min per 100k)")
	readerTimed := fs.Bool("reader-timed", false, "also time the transfer by a reader of the hub's events running during it (slows the drain)")
	peer := fs.Bool("peer", true, "measure the hub's one-connection ingest of as many messages after the drain")
	hubPprof := fs.String("hub-pprof", "", "serve the hub's pprof on this loopback address (OUTPOST_PPROF)")
	edgePprof := fs.String("edge-pprof", "", "serve the edge's pprof on this loopback address (OUTPOST_PPROF)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *bin == "" || *loadBin == "" || *dir == "" {
		return errors.New("drain: need --outpost, --mqttload and --dir")
	}
	if *children < 1 || *backlog < *children || *backlog%*children != 0 {
		return errors.New("drain: --backlog must be a positive multiple of --children")
	}
	if *label == "" {
		*label = "outpost-drain-" + strconv.Itoa(*backlog)
	}
	if *timeout == 0 {
		*timeout = 5*time.Minute + time.Duration(*backlog/100_000)*time.Minute
	}
	s := &scenario{bin: *bin, load: *loadBin, dir: *dir, readerTimed: *readerTimed, peer: *peer, hubPprof: *hubPprof, edgePprof: *edgePprof}
	defer s.close()
	res, err := s.drain(ctx, *backlog, *children, *timeout)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	res.Label = *label
	return emit(stdout, res)
}

// scenario owns the processes and the proxy of one drain run.
type scenario struct {
	bin, load, dir string
	readerTimed    bool // a reader of the hub's events runs during the transfer
	peer           bool // measure the hub's one-connection ingest after the drain
	hubPprof       string
	edgePprof      string
	hub, edge      *proc
	hubHTTPS       string
	proxy          *netfault.Proxy
	edgeArgs       []string
	edgeStarts     int
	status         *http.Client
}

func (s *scenario) close() {
	if s.edge != nil {
		s.edge.stop()
	}
	if s.proxy != nil {
		s.proxy.Close()
	}
	if s.hub != nil {
		s.hub.stop()
	}
}

var (
	hubReadyRE  = regexp.MustCompile(`hub ready: https=(\S+) mqtt=(\S+)`)
	edgeReadyRE = regexp.MustCompile(`edge ready: mqtt=(\S+) https=(\S+)`)
)

func (s *scenario) drain(ctx context.Context, backlog, children int, timeout time.Duration) (drainResult, error) {
	res := drainResult{Backlog: backlog}
	hubDir := filepath.Join(s.dir, "hub")
	var err error
	var m []string
	s.hub, m, err = startProc(ctx, s.bin, filepath.Join(s.dir, "hub.out"), hubReadyRE, 60*time.Second, s.hubPprof,
		"hub", "--data-dir", hubDir, "--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--edge-loopback-names")
	if err != nil {
		return res, err
	}
	s.hubHTTPS = m[1]
	hubMQTT := m[2]
	svc, err := openHub(hubDir)
	if err != nil {
		return res, err
	}
	cs, creds, err := provisionEdge(ctx, svc, "edge1", children)
	if err != nil {
		return res, err
	}
	var peerCredsFile string
	if s.peer {
		devs, err := createDevices(ctx, svc, "peer", 1)
		if err != nil {
			return res, err
		}
		peerCreds, err := credsFor(svc.HostName(), devs)
		if err != nil {
			return res, err
		}
		peerCredsFile = filepath.Join(s.dir, "peer-creds.jsonl")
		if err := writeCreds(peerCredsFile, peerCreds); err != nil {
			return res, err
		}
	}
	credsFile := filepath.Join(s.dir, "creds.jsonl")
	if err := writeCreds(credsFile, creds); err != nil {
		return res, err
	}
	if s.proxy, err = netfault.New(hubMQTT); err != nil {
		return res, err
	}
	caFile := filepath.Join(hubDir, certs.CAFile)
	roots, err := service.LoadCA(caFile)
	if err != nil {
		return res, err
	}
	s.status = &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}},
	}
	edgeDir := filepath.Join(s.dir, "edge")
	s.edgeArgs = []string{"edge", "--connection-string", cs,
		"--storage-folder", filepath.Join(edgeDir, "storage"), "--state-dir", filepath.Join(edgeDir, "state"),
		"--hub-ca", caFile, "--hostname", "localhost",
		"--mqtt-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0", "--upstream-addr", s.proxy.Addr()}

	// 1. First sync, online; then the link goes down.
	mqttAddr, httpsAddr, err := s.startEdge(ctx)
	if err != nil {
		return res, err
	}
	if _, err := s.awaitLink(ctx, httpsAddr, true, time.Minute); err != nil {
		return res, err
	}
	s.proxy.Cut()
	if _, err := s.awaitLink(ctx, httpsAddr, false, time.Minute); err != nil {
		return res, err
	}

	// 2. Offline ingest.
	logf("drain: ingesting %d messages into the offline edge", backlog)
	if res.Ingest, err = s.mqttload(ctx, mqttAddr, caFile, credsFile, children, backlog/children, "outpost-edge-fill"); err != nil {
		return res, err
	}
	st, err := s.getStatus(ctx, httpsAddr)
	if err != nil {
		return res, err
	}
	res.QueuedAfterIngest = st.queued()
	res.RSSAfterIngestKB, res.HWMAfterIngestKB = procMem(s.edge.cmd.Process.Pid)

	// 3. A crash, and a restart that is still offline.
	s.edge.kill()
	s.edge = nil
	if _, httpsAddr, err = s.startEdge(ctx); err != nil {
		return res, err
	}
	if st, err = s.getStatus(ctx, httpsAddr); err != nil {
		return res, err
	}
	res.QueuedAfterKill9 = st.queued()
	res.RSSAfterRestartKB, _ = procMem(s.edge.cmd.Process.Pid)
	if res.QueuedAfterKill9 < int64(backlog) {
		logf("drain: LOST %d acked messages across kill -9", int64(backlog)-res.QueuedAfterKill9)
	}

	// 4. The link returns. Nothing reads the hub's events meanwhile
	// (unless --reader-timed): the transfer ends when the hub's stream
	// holds the backlog, as mqttload's ingest ends at the last PUBACK.
	base, err := s.hubStored(ctx)
	if err != nil {
		return res, err
	}
	var mon *monitor
	if s.readerTimed {
		if mon, err = startMonitor(ctx, svc, int(base)+backlog); err != nil {
			return res, err
		}
		defer mon.stop()
	}
	logf("drain: restoring the link")
	t0 := time.Now()
	if err := s.proxy.Restore(); err != nil {
		return res, err
	}
	up, err := s.awaitLink(ctx, httpsAddr, true, time.Minute)
	if err != nil {
		return res, err
	}
	// The edge's own timestamp of the connect is finer than our polling;
	// the two clocks are the same machine's.
	if up.Before(t0) {
		up = t0
	}
	last, stall, err := s.awaitStored(ctx, base+int64(backlog), up, timeout)
	if err != nil {
		return res, err
	}
	res.ReconnectMs = float64(up.Sub(t0).Microseconds()) / 1000
	res.TransferS = last.Sub(up).Seconds()
	if res.TransferS > 0 {
		res.DrainMsgsPS = float64(backlog) / res.TransferS
	}
	res.MaxStallMs = float64(stall.Microseconds()) / 1000
	if mon != nil {
		if err := mon.wait(ctx, timeout); err != nil {
			return res, err
		}
		res.ReaderTransferS = mon.last.Sub(up).Seconds()
		if res.ReaderTransferS > 0 {
			res.ReaderDrainMsgsPS = float64(backlog) / res.ReaderTransferS
		}
		res.MaxGapMs = float64(mon.maxGap.Microseconds()) / 1000
	}

	// 5. Every message at the hub once: read the stream from its start.
	// Let stragglers (replays) arrive before taking the count to read.
	time.Sleep(500 * time.Millisecond) // a settling period, not a wait for a condition
	final, err := s.hubStored(ctx)
	if err != nil {
		return res, err
	}
	if mon == nil {
		if mon, err = startMonitor(ctx, svc, int(final)); err != nil {
			return res, err
		}
		defer mon.stop()
	}
	if err := mon.await(ctx, final, timeout); err != nil {
		return res, err
	}
	res.AtHub, res.DistinctIDs = mon.counts()
	res.AtHub -= base
	mon.stop()

	// 6. The peer: the hub's own ingest over one connection.
	if s.peer {
		logf("drain: the hub's ingest of %d messages over one connection", backlog)
		if res.PeerIngest, err = s.mqttload(ctx, hubMQTT, caFile, peerCredsFile, 1, backlog, "outpost-hub-1conn"); err != nil {
			return res, err
		}
		if r := ingestRate(res.PeerIngest); r > 0 {
			res.PeerRatio = res.DrainMsgsPS / r
		}
	}
	return res, nil
}

// mqttload runs the load generator against addr with the ingest the
// drain and its peer share (QoS 1, 256 B, 64 in flight per client): count
// messages from each of clients, and returns its JSON result line.
func (s *scenario) mqttload(ctx context.Context, addr, caFile, credsFile string, clients, count int, label string) (json.RawMessage, error) {
	out, err := exec.CommandContext(ctx, s.load, "--addr", addr, "--tls", "--ca", caFile, "--servername", "localhost",
		"--creds", credsFile, "--clients", strconv.Itoa(clients), "--inflight", "64", "--size", "256", "--qos", "1",
		"--count", strconv.Itoa(count), "--json", "--label", label).Output()
	if err != nil {
		return nil, fmt.Errorf("mqttload %s: %w", label, exitDetail(err))
	}
	return json.RawMessage(strings.TrimSpace(string(out))), nil
}

// storedPoll is how often the hub's stored count is read during the
// transfer: fine against a transfer of seconds, and cheap for the hub (one
// scrape costs it a stream info).
const storedPoll = 20 * time.Millisecond

// awaitStored polls the hub's telemetry stream until it holds want
// messages, and returns when it first saw them and the longest time the
// count stood still since from.
func (s *scenario) awaitStored(ctx context.Context, want int64, from time.Time, timeout time.Duration) (time.Time, time.Duration, error) {
	deadline := time.Now().Add(timeout)
	prev := int64(-1)
	grew := from
	var stall time.Duration
	for {
		got, err := s.hubStored(ctx)
		now := time.Now()
		if err != nil {
			return now, stall, err
		}
		if got != prev {
			if now.After(from) {
				stall = max(stall, now.Sub(grew))
			}
			prev, grew = got, now
		}
		if got >= want {
			return now, stall, nil
		}
		if now.After(deadline) {
			return now, stall, fmt.Errorf("the hub stored only %d of %d messages after %v", got, want, timeout)
		}
		select {
		case <-ctx.Done():
			return now, stall, ctx.Err()
		case <-time.After(storedPoll):
		}
	}
}

// hubStored is the message count of the hub's telemetry stream, from its
// /metrics (open to loopback callers).
func (s *scenario) hubStored(ctx context.Context) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+s.hubHTTPS+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.status.Do(req)
	if err != nil {
		return 0, fmt.Errorf("hub metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("hub metrics: %s", resp.Status)
	}
	return telemetryStored(resp.Body)
}

// telemetryLine starts the sample of the hub's telemetry stream length.
var telemetryLine = metrics.NameQueueLength + `{endpoint="` + dataplane.MetricsTelemetry + `"} `

// telemetryStored finds the telemetry stream's length in a Prometheus
// text exposition.
func telemetryStored(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), telemetryLine); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("hub metrics: %q: %w", sc.Text(), err)
			}
			return int64(f), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("hub metrics: %w", err)
	}
	return 0, fmt.Errorf("hub metrics: no %s", strings.TrimSpace(telemetryLine))
}

// startEdge starts the edge with s.edgeArgs and returns its listen
// addresses once it prints its ready line.
func (s *scenario) startEdge(ctx context.Context) (mqttAddr, httpsAddr string, err error) {
	s.edgeStarts++
	out := filepath.Join(s.dir, fmt.Sprintf("edge.out.%d", s.edgeStarts))
	p, m, err := startProc(ctx, s.bin, out, edgeReadyRE, 2*time.Minute, s.edgePprof, s.edgeArgs...)
	if err != nil {
		return "", "", err
	}
	s.edge = p
	return m[1], m[2], nil
}

// edgeStatus is the part of the edge's GET /status the scenario reads.
type edgeStatus struct {
	Synced bool `json:"synced"`
	Link   struct {
		Connected bool       `json:"connected"`
		Since     *time.Time `json:"since"`
	} `json:"link"`
	Queues map[string]struct {
		Length int64 `json:"length"`
	} `json:"queues"`
}

func (st edgeStatus) queued() int64 {
	var n int64
	for _, q := range st.Queues {
		n += q.Length
	}
	return n
}

func (s *scenario) getStatus(ctx context.Context, httpsAddr string) (edgeStatus, error) {
	var st edgeStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+httpsAddr+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := s.status.Do(req)
	if err != nil {
		return st, fmt.Errorf("edge status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("edge status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("edge status: %w", err)
	}
	return st, nil
}

// awaitLink polls the edge's status until its link is up (or down) and
// returns the time the edge says the link changed, or the time we saw it.
func (s *scenario) awaitLink(ctx context.Context, httpsAddr string, up bool, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.getStatus(ctx, httpsAddr)
		seen := time.Now()
		if err == nil && st.Link.Connected == up && (!up || st.Synced) {
			if st.Link.Since != nil && !st.Link.Since.IsZero() {
				return *st.Link.Since, nil
			}
			return seen, nil
		}
		if seen.After(deadline) {
			return time.Time{}, fmt.Errorf("edge link not %s after %v (last error: %v)", map[bool]string{true: "up", false: "down"}[up], timeout, err)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

type edgeKey struct {
	edge string
	seq  uint64
}

// monitor counts telemetry events at the hub from the stream's start.
type monitor struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	n      atomic.Int64
	want   int64
	done   chan struct{} // closed when want events arrived, or the stream failed
	once   sync.Once
	last   time.Time     // when the want-th event arrived; written before done closes
	prev   time.Time     // when the latest event arrived; the reader's goroutine only
	gap    time.Duration // longest wait between events so far; the reader's goroutine only
	maxGap time.Duration // gap when done closed; written before done closes
	err    error         // written before done closes

	mu  sync.Mutex
	ids map[edgeKey]struct{}
}

func startMonitor(ctx context.Context, svc *service.Client, want int) (*monitor, error) {
	ctx, cancel := context.WithCancel(ctx)
	m := &monitor{cancel: cancel, want: int64(want), done: make(chan struct{}), ids: make(map[edgeKey]struct{}, want)}
	ready := make(chan struct{})
	var readyOnce sync.Once
	m.wg.Go(func() {
		err := svc.MonitorEvents(ctx, service.EventsOptions{FromStart: true},
			func() { readyOnce.Do(func() { close(ready) }) },
			func(ev service.Event) error {
				now := time.Now()
				if !m.prev.IsZero() {
					m.gap = max(m.gap, now.Sub(m.prev))
				}
				m.prev = now
				m.mu.Lock()
				if ev.System.EdgeID != "" {
					m.ids[edgeKey{ev.System.EdgeID, ev.System.EdgeSeq}] = struct{}{}
				}
				m.mu.Unlock()
				if m.n.Add(1) == m.want {
					m.finish(nil)
				}
				return nil
			})
		if err == nil && ctx.Err() == nil {
			err = errors.New("event stream ended")
		}
		if ctx.Err() == nil {
			m.finish(fmt.Errorf("monitor: %w", err))
		}
		readyOnce.Do(func() { close(ready) })
	})
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		m.stop()
		return nil, errors.New("monitor: the hub's event stream did not open in 30s")
	}
	return m, nil
}

// wait waits for the want-th event, or the stream's failure.
func (m *monitor) wait(ctx context.Context, timeout time.Duration) error {
	select {
	case <-m.done:
		return m.err
	case <-time.After(timeout):
		return fmt.Errorf("only %d of %d events read at the hub after %v", m.n.Load(), m.want, timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// await waits until n events were read (more than want, when the stream
// holds more than it did at the start).
func (m *monitor) await(ctx context.Context, n int64, timeout time.Duration) error {
	if err := m.wait(ctx, timeout); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for m.n.Load() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d events read at the hub after %v", m.n.Load(), n, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(storedPoll):
		}
	}
	return nil
}

func (m *monitor) finish(err error) {
	m.once.Do(func() {
		m.last, m.err, m.maxGap = time.Now(), err, m.gap
		close(m.done)
	})
}

func (m *monitor) counts() (events, ids int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n.Load(), int64(len(m.ids))
}

func (m *monitor) stop() {
	m.cancel()
	m.wg.Wait()
}

// proc is a child process we started; its stdout and stderr go to a file.
type proc struct {
	cmd  *exec.Cmd
	out  *os.File
	done chan struct{}
}

// startProc starts bin with args and waits until a line of its output
// matches ready, returning the submatches. A pprof address, if any, goes
// to the process as OUTPOST_PPROF.
func startProc(ctx context.Context, bin, outFile string, ready *regexp.Regexp, timeout time.Duration, pprof string, args ...string) (*proc, []string, error) {
	f, err := os.Create(outFile)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if pprof != "" {
		cmd.Env = append(os.Environ(), "OUTPOST_PPROF="+pprof)
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, nil, err
	}
	p := &proc{cmd: cmd, out: f, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		cmd.Wait()
	}()
	deadline := time.Now().Add(timeout)
	for {
		if m := grepFile(outFile, ready); m != nil {
			return p, m, nil
		}
		select {
		case <-p.done:
			return nil, nil, fmt.Errorf("%s %s exited before it was ready; see %s", filepath.Base(bin), args[0], outFile)
		case <-ctx.Done():
			p.stop()
			return nil, nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, nil, fmt.Errorf("%s %s not ready after %v; see %s", filepath.Base(bin), args[0], timeout, outFile)
		}
	}
}

func grepFile(path string, re *regexp.Regexp) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			return m
		}
	}
	return nil
}

// stop ends the process with SIGTERM, and SIGKILL after 30 s.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.out.Close()
}

// kill ends the process with SIGKILL: a crash.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
	p.out.Close()
}

// procMem reads VmRSS and VmHWM (kB) of a process.
func procMem(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// summarizeDrain reads drainResult lines and prints a markdown table with
// one row per label: medians over rounds, and the worst round for what
// was lost. The drain is quoted against the hub's one-connection ingest
// of the same round (median of per-round ratios); figures a round did not
// measure are left out of their median, and none gives "–".
func summarizeDrain(r io.Reader, w io.Writer) error {
	order, runs, err := summary.Read(r, func(res drainResult) (string, error) { return res.Label, nil })
	if err != nil {
		return fmt.Errorf("summarize-drain: %w", err)
	}
	fmt.Fprintln(w, "| run | rounds | offline ingest msg/s | lost on kill -9 (worst) | edge RSS, backlog queued | reconnect | transfer | drain msg/s | hub ingest, 1 connection, msg/s | drain × 1-connection ingest | drain msg/s, reader-timed | missing / duplicated at hub (worst) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, label := range order {
		rs := runs[label]
		med := func(f func(drainResult) float64) float64 { return summary.Median(rs, f) }
		var lost, missing, dup int64
		for _, r := range rs {
			lost = max(lost, int64(r.Backlog)-r.QueuedAfterKill9)
			missing = max(missing, int64(r.Backlog)-r.DistinctIDs)
			dup = max(dup, r.AtHub-r.DistinctIDs)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %d | %.0f MB (peak %.0f MB; %.0f MB after restart) | %.0f ms | %.1f s | %.0f | %s | %s | %s | %d / %d |\n",
			label, len(rs),
			med(func(r drainResult) float64 { return ingestRate(r.Ingest) }),
			lost,
			med(func(r drainResult) float64 { return float64(r.RSSAfterIngestKB) / 1024 }),
			med(func(r drainResult) float64 { return float64(r.HWMAfterIngestKB) / 1024 }),
			med(func(r drainResult) float64 { return float64(r.RSSAfterRestartKB) / 1024 }),
			med(func(r drainResult) float64 { return r.ReconnectMs }),
			med(func(r drainResult) float64 { return r.TransferS }),
			med(func(r drainResult) float64 { return r.DrainMsgsPS }),
			measured(rs, "%.0f", func(r drainResult) float64 { return ingestRate(r.PeerIngest) }),
			measured(rs, "%.2f", func(r drainResult) float64 { return r.PeerRatio }),
			measured(rs, "%.0f", func(r drainResult) float64 { return r.ReaderDrainMsgsPS }),
			missing, dup)
	}
	return nil
}

// measured is the median of f over the rounds where it is not 0, in
// format, or "–" when no round measured it.
func measured(rs []drainResult, format string, f func(drainResult) float64) string {
	var v []float64
	for _, r := range rs {
		if x := f(r); x != 0 {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return "–"
	}
	return fmt.Sprintf(format, summary.MedianOf(v))
}

// ingestRate is msgsPerSec from an mqttload result line.
func ingestRate(raw json.RawMessage) float64 {
	var v struct {
		MsgsPerSec float64 `json:"msgsPerSec"`
	}
	if json.Unmarshal(raw, &v) != nil {
		return 0
	}
	return v.MsgsPerSec
}
