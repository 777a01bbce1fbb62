// Package demo runs Outpost's offline story in one process, on loopback:
// a hub (hubserver), an edge whose upstream link runs through a TCP proxy
// that the demo cuts and restores (netfault), simulated child devices
// behind the edge, and a filter module between two of them. It narrates
// each phase through a Reporter and returns a Summary of what it
// measured and checked; `outpost demo` prints both.
//
// The story:
//
//  1. Online: the children's telemetry flows through the edge to the hub.
//  2. Link cut: the edge stores telemetry; a child restarts and
//     authenticates from the edge's cache; an alert goes child → module →
//     child without the hub; the children report properties; an
//     operator changes their desired properties at the hub.
//  3. Link restored: the backlog drains in order, and the twins
//     reconcile both ways.
//
// Counting is end to end: every telemetry message carries its device's
// sequence number, acknowledgements are counted at the device, and
// deliveries at the hub's telemetry stream (the data plane's reader).
package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"outpost/internal/client"
	"outpost/internal/edge"
	"outpost/internal/edgeserver"
	"outpost/internal/hub/dataplane"
	"outpost/internal/hubserver"
	"outpost/internal/identity"
	"outpost/internal/netfault"
	"outpost/internal/poll"
	"outpost/internal/route"
	"outpost/internal/sas"
	"outpost/internal/service"
	"outpost/internal/twin"
)

// Defaults for Config fields left zero.
const (
	DefaultDevices    = 3
	DefaultRate       = 10.0
	DefaultOnlineFor  = 5 * time.Second
	DefaultOfflineFor = 15 * time.Second
	DefaultThreshold  = 30.0
	DefaultTimeout    = 60 * time.Second
	// ProgressInterval is how often Reporter.Progress is called.
	ProgressInterval = 200 * time.Millisecond
	// MaxDevices and MaxRate bound what one process simulates.
	MaxDevices = 100
	MaxRate    = 1000.0
)

// Identities the demo registers.
const (
	EdgeID      = "demo-edge"
	childPrefix = "demo-sensor-"
)

// Config configures a Demo. The zero value runs the default story.
type Config struct {
	// Devices is the number of child devices; Rate the telemetry
	// messages per second each sends.
	Devices int
	Rate    float64
	// OnlineFor is how long telemetry flows before the cut; OfflineFor
	// how long the link stays cut.
	OnlineFor  time.Duration
	OfflineFor time.Duration
	// Threshold is the temperature above which the filter module passes
	// alerts on.
	Threshold float64
	// Timeout bounds each wait for the system: the link noticed down and
	// up, the drain, the twins reconciled.
	Timeout time.Duration
	// Dir is where the demo makes its temporary directory; default the
	// system's temporary directory.
	Dir string
	// Reporter narrates; nil says nothing.
	Reporter Reporter
	// Logger receives the logs of the hub, the edge and the clients; nil
	// writes them to demo.log in the demo's directory.
	Logger *slog.Logger
}

// Reporter receives the story as it happens. The demo makes one call at
// a time.
type Reporter interface {
	// Phase starts phase n (0 is the setup) with its title.
	Phase(n int, title string)
	// Step tells one thing that happened, in a sentence.
	Step(text string)
	// Progress gives live counters, every ProgressInterval while Run
	// runs.
	Progress(p Progress)
}

// Progress is a snapshot of the live counters.
type Progress struct {
	Phase int
	// Elapsed is the time spent in the phase; Duration its planned
	// length, zero when it lasts as long as the system takes.
	Elapsed, Duration time.Duration
	// Sent, Acked and Delivered count telemetry: handed to the device
	// clients, acknowledged by the edge, read at the hub.
	Sent, Acked, Delivered int64
	// Queued is the telemetry waiting at the edge for the link.
	Queued int64
	LinkUp bool
	// DrainTotal is the backlog when the link returned; DrainDone how
	// much of it has reached the hub. Both are zero outside the drain.
	DrainTotal, DrainDone int64
}

// Check is one thing the demo verified.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Summary is what the demo measured.
type Summary struct {
	Devices    int
	Rate       float64
	OfflineFor time.Duration
	// Telemetry counts, end to end (see Totals).
	Totals
	// Expired counts messages the edge dropped at their TTL.
	Expired uint64
	// QueuedPeak is the backlog at the edge when the link returned.
	QueuedPeak int64
	// CutNoticed, LinkReturn, DrainTime and ReconcileTime are how long
	// the edge took to see the link go down and come back, the backlog to
	// reach the hub, and the twins to agree, from the cut or the restore.
	CutNoticed    time.Duration
	LinkReturn    time.Duration
	DrainTime     time.Duration
	ReconcileTime time.Duration
	// RestartAuth is how long the restarted child took to connect,
	// offline.
	RestartAuth time.Duration
	// Alerts the child sent while offline, how many the filter module saw,
	// and how many it passed on that reached the other child; Expected
	// is how many should have.
	AlertsSent, AlertsFiltered, AlertsReceived, AlertsExpected int
	// ReportedMatch and DesiredMatch count the devices whose reported
	// properties at the hub, and whose desired properties as the device
	// knows them, equal the other side's.
	ReportedMatch, DesiredMatch int
	Checks                      []Check
}

// OK reports whether every check passed.
func (s Summary) OK() bool {
	for _, c := range s.Checks {
		if !c.OK {
			return false
		}
	}
	return len(s.Checks) > 0
}

// FailedChecks lists the checks that did not pass.
func (s Summary) FailedChecks() []Check {
	var out []Check
	for _, c := range s.Checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

// Explore is what a person needs to look around a demo left running.
type Explore struct {
	Dir string
	// HubConnectionString is the service connection string; CAFile the
	// root CA to trust. The CLI reads them from OUTPOST_HUB_CONNECTION_STRING
	// and OUTPOST_CA.
	HubConnectionString string
	CAFile              string
	HubHTTPSAddr        string
	HubMQTTAddr         string
	EdgeID              string
	EdgeMQTTAddr        string
	EdgeHTTPSAddr       string
	// UpstreamProxyAddr is where the edge dials the hub.
	UpstreamProxyAddr string
	Children          []string
	// ChildConnectionStrings connect through the edge.
	ChildConnectionStrings map[string]string
	FilterModule           string
	LogFile                string
}

// Demo is the running system. Make it with New, play the story with Run,
// stop it with Close.
type Demo struct {
	cfg  Config
	rep  Reporter
	log  *slog.Logger
	dir  string
	logf *os.File // nil when Config.Logger was given

	hub      *hubserver.Server
	svc      *service.Client
	proxy    *netfault.Proxy
	edge     *edgeserver.Server
	filter   *filter
	children []*child
	childCS  map[string]string
	tally    *tally

	eventsCancel context.CancelFunc
	eventsDone   chan error

	mu sync.Mutex
	// mu guards the following fields, which the progress loop reads.
	phase      int
	phaseStart time.Time
	phaseDur   time.Duration
	drainMarks map[string]int64
	drainTotal int64
	ran        bool

	closeOnce sync.Once
	closeErr  error
}

func (cfg *Config) fill() error {
	if cfg.Devices == 0 {
		cfg.Devices = DefaultDevices
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.OnlineFor == 0 {
		cfg.OnlineFor = DefaultOnlineFor
	}
	if cfg.OfflineFor == 0 {
		cfg.OfflineFor = DefaultOfflineFor
	}
	if cfg.Threshold == 0 {
		cfg.Threshold = DefaultThreshold
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	switch {
	case cfg.Devices < 1 || cfg.Devices > MaxDevices:
		return fmt.Errorf("demo: devices %d: want 1 to %d", cfg.Devices, MaxDevices)
	case cfg.Rate < 0 || cfg.Rate > MaxRate:
		return fmt.Errorf("demo: rate %v: want more than 0 and at most %v messages/s", cfg.Rate, MaxRate)
	case cfg.OnlineFor < 0 || cfg.OfflineFor < 0 || cfg.Timeout < 0:
		return errors.New("demo: negative duration")
	}
	if cfg.Reporter == nil {
		cfg.Reporter = silent{}
	}
	return nil
}

// New sets the system up: it starts the hub, registers the edge, the
// children and the module, sets the edge's routes, starts the edge behind
// its proxy, and connects the module and the children. ctx bounds the
// set-up.
func New(ctx context.Context, cfg Config) (_ *Demo, err error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(cfg.Dir, "outpost-demo-")
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	d := &Demo{cfg: cfg, rep: &lockedReporter{r: cfg.Reporter}, dir: dir, log: cfg.Logger, childCS: map[string]string{}}
	if d.log == nil {
		if d.logf, err = os.Create(filepath.Join(dir, "demo.log")); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		d.log = slog.New(slog.NewTextHandler(d.logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	defer func() {
		if err != nil {
			d.Close()
			if d.logf != nil {
				err = fmt.Errorf("%w (logs: %s)", err, d.logf.Name())
			}
		}
	}()
	d.rep.Phase(0, fmt.Sprintf("Setup: a hub, an edge, %d child devices and a filter module, on loopback", cfg.Devices))

	begin := time.Now()
	if d.hub, err = hubserver.Start(ctx, hubserver.Config{
		DataDir:   filepath.Join(dir, "hub"),
		Hostname:  "localhost",
		MQTTAddr:  "127.0.0.1:0",
		HTTPSAddr: "127.0.0.1:0",
		// The edge is "localhost" too: everything runs on one machine.
		EdgeLoopbackNames: true,
		Logger:            d.log.With("side", "hub"),
	}); err != nil {
		return nil, fmt.Errorf("demo: start hub: %w", err)
	}
	d.rep.Step(fmt.Sprintf("hub up in %s: service API and device endpoint on https://%s and mqtts://%s",
		round(time.Since(begin)), d.hub.HTTPSAddr(), d.hub.MQTTAddr()))
	if d.svc, err = service.New(service.Config{ConnectionString: d.hub.ConnectionString(), RootCAs: d.hub.RootCAs()}); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}

	ids, edgeKey, filterID, err := d.register(ctx)
	if err != nil {
		return nil, fmt.Errorf("demo: register: %w", err)
	}
	d.tally = newTally(ids)
	if err := d.startEvents(); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if err := d.startEdge(ctx, edgeKey); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}

	gw := d.edge.Edge().MQTTAddr().String()
	host := d.svc.HostName()
	clientCfg := func(cs, side string) client.Config {
		return client.Config{ConnectionString: cs, RootCAs: d.hub.RootCAs(), Logger: d.log.With("side", side)}
	}
	if d.filter, err = startFilter(ctx, clientCfg(service.ModuleConnectionString(filterID, host, gw), "module"), cfg.Threshold, d.log); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	for _, id := range ids {
		dev, err := d.svc.GetDevice(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		cs := service.DeviceConnectionString(dev, host, gw)
		d.childCS[id] = cs
		ch := newChild(id, clientCfg(cs, "child"), cfg.Rate, d.tally, d.log.With("side", "child"))
		if err := ch.connect(ctx); err != nil {
			return nil, fmt.Errorf("demo: connect child: %w", err)
		}
		d.children = append(d.children, ch)
	}
	d.rep.Step(fmt.Sprintf("module %s and %d child devices connected through the edge (GatewayHostName=%s)", FilterModule, len(ids), gw))
	return d, nil
}

// register creates the identities and the edge's routes at the hub.
func (d *Demo) register(ctx context.Context) (children []string, edgeKey string, filterID identity.Module, err error) {
	e, err := d.svc.CreateEdgeDevice(ctx, EdgeID)
	if err != nil {
		return nil, "", filterID, err
	}
	for i := range d.cfg.Devices {
		id := fmt.Sprintf("%s%d", childPrefix, i+1)
		if _, err := d.svc.CreateDevice(ctx, identity.Device{DeviceID: id}); err != nil {
			return nil, "", filterID, err
		}
		children = append(children, id)
	}
	if err := d.svc.AddChildren(ctx, EdgeID, children, false); err != nil {
		return nil, "", filterID, err
	}
	if filterID, err = d.svc.CreateModule(ctx, identity.Module{DeviceID: EdgeID, ModuleID: FilterModule}); err != nil {
		return nil, "", filterID, err
	}
	routes := Routes(children[0], children[len(children)-1])
	if _, err := route.ParseRoutes(routes); err != nil {
		return nil, "", filterID, fmt.Errorf("the demo's routes: %w", err)
	}
	patch := map[string]any{"properties": map[string]any{"desired": map[string]any{
		"routes":                       routes,
		"storeAndForwardConfiguration": map[string]any{"timeToLiveSecs": 7200},
	}}}
	if _, err := d.svc.UpdateTwin(ctx, EdgeID, identity.EdgeHub, patch, ""); err != nil {
		return nil, "", filterID, err
	}
	d.rep.Step(fmt.Sprintf("registered edge %s, children %s, module %s; routes on %s: telemetry → $upstream, %s's alerts → %s → %s",
		EdgeID, strings.Join(children, ", "), FilterModule, identity.EdgeHub, children[0], FilterModule, children[len(children)-1]))
	return children, e.Authentication.SymmetricKey.PrimaryKey, filterID, nil
}

// startEvents starts the hub-side reader that counts deliveries, and
// returns once it is in place.
func (d *Demo) startEvents() error {
	ctx, cancel := context.WithCancel(context.Background())
	d.eventsCancel, d.eventsDone = cancel, make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		d.eventsDone <- d.hub.Plane().Events(ctx, dataplane.EventsOptions{}, func() { close(ready) }, func(ev dataplane.Event) error {
			if ev.Properties[PropKind] != KindTelemetry {
				return nil
			}
			var seq int64
			if _, err := fmt.Sscan(ev.Properties[PropSeq], &seq); err != nil {
				d.log.Warn("telemetry without a seq at the hub", "device", ev.DeviceID, "seq", ev.Properties[PropSeq])
				return nil
			}
			d.tally.delivered(ev.DeviceID, seq)
			return nil
		})
	}()
	select {
	case <-ready:
		return nil
	case err := <-d.eventsDone:
		d.eventsDone <- err
		return fmt.Errorf("hub telemetry reader: %w", err)
	}
}

// startEdge runs the edge with its upstream link through the proxy and
// waits until it synced, serves, and has the demo's routes in force.
func (d *Demo) startEdge(ctx context.Context, key string) error {
	var err error
	if d.proxy, err = netfault.New(d.hub.MQTTAddr().String()); err != nil {
		return err
	}
	begin := time.Now()
	d.edge, err = edgeserver.Start(context.Background(), edgeserver.Config{
		ConnectionString: sas.ConnectionString{HostName: d.svc.HostName(), DeviceID: EdgeID, SharedAccessKey: key}.String(),
		StorageDir:       filepath.Join(d.dir, "edge"),
		UpstreamAddr:     d.proxy.Addr(),
		HubCA:            d.hub.RootCAs(),
		Hostname:         "localhost",
		MQTTAddr:         "127.0.0.1:0",
		HTTPSAddr:        "127.0.0.1:0",
		Logger:           d.log.With("side", "edge"),
	})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	if err := d.edge.AwaitReady(rctx); err != nil {
		return fmt.Errorf("edge not ready within %v: %w", d.cfg.Timeout, err)
	}
	e := d.edge.Edge()
	if _, ok := d.waitFor(ctx, d.cfg.Timeout, func() bool {
		_, ok := e.Status().Routes["alerts"]
		return ok
	}); !ok {
		return errors.New("the edge did not put the demo's routes in force")
	}
	d.rep.Step(fmt.Sprintf("edge %s synced once with the hub (identities, edge CA) in %s; it serves children on mqtts://%s and dials the hub through a TCP proxy at %s",
		EdgeID, round(time.Since(begin)), e.MQTTAddr(), d.proxy.Addr()))
	return nil
}

// Run plays the story once and returns its summary. Failed checks are in
// the summary; an error means the story could not be played.
func (d *Demo) Run(ctx context.Context) (Summary, error) {
	d.mu.Lock()
	if d.ran {
		d.mu.Unlock()
		return Summary{}, errors.New("demo: already run")
	}
	d.ran = true
	d.mu.Unlock()

	s := Summary{Devices: d.cfg.Devices, Rate: d.cfg.Rate, OfflineFor: d.cfg.OfflineFor}
	check := func(name string, ok bool, detail string) {
		s.Checks = append(s.Checks, Check{Name: name, OK: ok, Detail: detail})
	}

	pctx, stopProgress := context.WithCancel(ctx)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		d.progressLoop(pctx)
	}()
	defer func() {
		stopProgress()
		<-progressDone
	}()

	if err := d.online(ctx, check); err != nil {
		return s, err
	}
	if err := d.offline(ctx, &s, check); err != nil {
		return s, err
	}
	if err := d.restored(ctx, &s, check); err != nil {
		return s, err
	}
	stopProgress()
	<-progressDone
	d.final(ctx, &s, check)
	return s, nil
}

// online is phase 1.
func (d *Demo) online(ctx context.Context, check func(string, bool, string)) error {
	d.setPhase(1, "Online: telemetry flows through the edge to the hub", d.cfg.OnlineFor)
	for _, ch := range d.children {
		ch.startSending()
	}
	d.rep.Step(fmt.Sprintf("%d devices send %g messages/s each, numbered per device", len(d.children), d.cfg.Rate))
	if err := sleep(ctx, d.cfg.OnlineFor); err != nil {
		return err
	}
	marks := d.tally.marks()
	_, ok := d.waitFor(ctx, d.cfg.Timeout, func() bool { return d.tally.undelivered(marks) == 0 })
	acked, missing := d.tally.upTo(marks)
	check("online: telemetry reaches the hub", ok && acked > 0, fmt.Sprintf("%d acknowledged, %d of them not at the hub", acked, missing))
	if ok {
		d.rep.Step(fmt.Sprintf("%d messages acknowledged by the edge (durable in its store) and forwarded at once: all at the hub", acked))
	}
	return ctx.Err()
}

// offline is phase 2.
func (d *Demo) offline(ctx context.Context, s *Summary, check func(string, bool, string)) error {
	dur := d.cfg.OfflineFor
	d.setPhase(2, "Link cut: the edge keeps its devices working", dur)
	t0 := time.Now()
	d.proxy.Cut()
	took, ok := d.waitFor(ctx, d.cfg.Timeout, func() bool { return !d.edge.Edge().Status().Link.Connected })
	s.CutNoticed = took
	check("the edge notices the cut", ok, fmt.Sprintf("in %s", round(took)))
	if ok {
		d.rep.Step(fmt.Sprintf("upstream link cut at the proxy; the edge noticed in %s and stores telemetry on disk, acknowledging it as before", round(took)))
	}

	// Each event at its share of the offline time, so the story reads in
	// order even when the cut is short.
	if err := sleepUntil(ctx, t0.Add(dur*15/100)); err != nil {
		return err
	}
	restarted := d.children[0]
	auth, err := restarted.restart(ctx)
	s.RestartAuth = auth
	check("a child restarts offline and authenticates from the cache", err == nil, errText(err, fmt.Sprintf("%s reconnected in %s", restarted.id, round(auth))))
	if err == nil {
		d.rep.Step(fmt.Sprintf("%s restarted: the edge authenticated it from its offline cache in %s", restarted.id, round(auth)))
	}

	if err := sleepUntil(ctx, t0.Add(dur*30/100)); err != nil {
		return err
	}
	d.alerts(ctx, s, check)

	if err := sleepUntil(ctx, t0.Add(dur*45/100)); err != nil {
		return err
	}
	var failed []string
	for i, ch := range d.children {
		patch := map[string]any{"firmware": "1.1.0", "battery": 90 - 7*i, "maintenance": map[string]any{"lastOffline": t0.UTC().Format(time.RFC3339)}}
		if err := ch.report(ctx, patch); err != nil {
			failed = append(failed, err.Error())
		}
	}
	check("children report properties offline", len(failed) == 0, errList(failed, fmt.Sprintf("%d devices", len(d.children))))
	if len(failed) == 0 {
		d.rep.Step("each device reported properties (firmware 1.1.0, battery, maintenance); the edge accepted them and holds them for the hub")
	}

	if err := sleepUntil(ctx, t0.Add(dur*60/100)); err != nil {
		return err
	}
	failed = nil
	for _, ch := range d.children {
		desired := map[string]any{"telemetryIntervalSeconds": 5, "alertThreshold": d.cfg.Threshold}
		if _, err := d.svc.UpdateTwin(ctx, ch.id, "", service.NewTwinPatch(nil, desired), ""); err != nil {
			failed = append(failed, err.Error())
		}
	}
	check("an operator changes desired properties at the hub", len(failed) == 0, errList(failed, fmt.Sprintf("%d devices", len(d.children))))
	if len(failed) == 0 {
		d.rep.Step("an operator changed the devices' desired properties at the hub (telemetryIntervalSeconds, alertThreshold); the devices cannot see them yet")
	}

	if err := sleepUntil(ctx, t0.Add(dur)); err != nil {
		return err
	}
	s.QueuedPeak = d.queued()
	check("the edge's queue grows while offline", s.QueuedPeak > 0, fmt.Sprintf("%d messages queued", s.QueuedPeak))
	d.rep.Step(fmt.Sprintf("after %s offline, %d messages wait at the edge", round(time.Since(t0)), s.QueuedPeak))
	return ctx.Err()
}

// alerts sends alerts from the first child, some above the threshold and
// one below, and waits for the filter module to pass the hot ones to the
// last child.
func (d *Demo) alerts(ctx context.Context, s *Summary, check func(string, bool, string)) {
	from, to := d.children[0], d.children[len(d.children)-1]
	temps := []float64{d.cfg.Threshold + 5, d.cfg.Threshold - 8, d.cfg.Threshold + 12}
	before := to.received(KindFiltered)
	begin := time.Now()
	var sendErr error
	for _, t := range temps {
		if err := from.sendAlert(ctx, t); err != nil {
			sendErr = err
			break
		}
		s.AlertsSent++
		if t > d.cfg.Threshold {
			s.AlertsExpected++
		}
	}
	_, ok := d.waitFor(ctx, d.cfg.Timeout, func() bool {
		return int(d.filter.seen.Load()) >= s.AlertsSent && to.received(KindFiltered)-before >= s.AlertsExpected
	})
	s.AlertsFiltered = int(d.filter.seen.Load())
	s.AlertsReceived = to.received(KindFiltered) - before
	ok = ok && sendErr == nil && s.AlertsReceived == s.AlertsExpected
	check("child → module → child, offline", ok, errText(sendErr, fmt.Sprintf("%d alerts sent, %d seen by %s, %d of %d expected received by %s",
		s.AlertsSent, s.AlertsFiltered, FilterModule, s.AlertsReceived, s.AlertsExpected, to.id)))
	if ok {
		d.rep.Step(fmt.Sprintf("%s sent %d alerts → module %s passed the %d above %g °C → %s got them in %s, without the hub",
			from.id, s.AlertsSent, FilterModule, s.AlertsExpected, d.cfg.Threshold, to.id, round(time.Since(begin))))
	}
}

// restored is phase 3.
func (d *Demo) restored(ctx context.Context, s *Summary, check func(string, bool, string)) error {
	marks := d.tally.marks()
	total := d.tally.undelivered(marks)
	d.mu.Lock()
	d.drainMarks, d.drainTotal = marks, total
	d.mu.Unlock()
	d.setPhase(3, "Link restored: the backlog drains and the twins reconcile", 0)
	t1 := time.Now()
	if err := d.proxy.Restore(); err != nil {
		return fmt.Errorf("demo: restore link: %w", err)
	}
	took, ok := d.waitFor(ctx, d.cfg.Timeout, func() bool { return d.edge.Edge().Status().Link.Connected })
	s.LinkReturn = took
	check("the edge notices the link's return", ok, fmt.Sprintf("in %s", round(took)))
	if ok {
		d.rep.Step(fmt.Sprintf("link restored at the proxy; the edge reconnected in %s", round(took)))
	}

	took, ok = d.waitFor(ctx, d.cfg.Timeout, func() bool { return d.tally.undelivered(marks) == 0 })
	s.DrainTime = time.Since(t1)
	check("the backlog drains", ok, fmt.Sprintf("%d of %d at the hub after %s", total-d.tally.undelivered(marks), total, round(s.DrainTime)))
	if ok {
		rate := ""
		if secs := s.DrainTime.Seconds(); secs > 0 && total > 0 {
			rate = fmt.Sprintf(" (%.0f messages/s, link return included)", float64(total)/secs)
		}
		d.rep.Step(fmt.Sprintf("the %d messages stored offline reached the hub %s after the restore%s", total, round(s.DrainTime), rate))
	}
	d.mu.Lock()
	d.drainMarks, d.drainTotal = nil, 0
	d.mu.Unlock()

	var last string
	_, ok = pollFor(ctx, d.cfg.Timeout, 50*time.Millisecond, func() bool {
		rep, des, err := d.twinsMatch(ctx, false)
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("reported %d/%d, desired %d/%d", rep, len(d.children), des, len(d.children))
		return rep == len(d.children) && des == len(d.children)
	})
	s.ReconcileTime = time.Since(t1)
	check("twins reconcile", ok, last)
	if ok {
		d.rep.Step(fmt.Sprintf("twins reconciled %s after the restore: the hub has every reported change, every device has the operator's desired properties", round(s.ReconcileTime)))
	}
	return ctx.Err()
}

// final stops telemetry, waits for the last messages and fills in the
// summary.
func (d *Demo) final(ctx context.Context, s *Summary, check func(string, bool, string)) {
	for _, ch := range d.children {
		ch.stopSending()
	}
	marks := d.tally.marks()
	d.waitFor(ctx, d.cfg.Timeout, func() bool { return d.tally.undelivered(marks) == 0 })
	s.Totals = d.tally.totals()
	s.Expired = d.edge.Edge().Status().Expired

	lostDetail := fmt.Sprintf("%d lost", s.Lost)
	if s.Lost > 0 {
		lostDetail += fmt.Sprintf(" (device: seqs %v)", d.tally.lostSeqs())
	}
	check("nothing lost", s.Lost == 0 && s.Acked > 0, lostDetail)
	check("all in order", s.OutOfOrder == 0, fmt.Sprintf("%d of %d in order", s.InOrder, s.Delivered))
	check("no duplicates", s.Duplicates == 0, fmt.Sprintf("%d duplicates", s.Duplicates))
	check("nothing expired", s.Expired == 0, fmt.Sprintf("%d expired", s.Expired))

	rep, des, err := d.twinsMatch(ctx, true)
	s.ReportedMatch, s.DesiredMatch = rep, des
	check("reported twins match", err == nil && rep == len(d.children), errText(err, fmt.Sprintf("%d of %d devices", rep, len(d.children))))
	check("desired twins match", err == nil && des == len(d.children), errText(err, fmt.Sprintf("%d of %d devices", des, len(d.children))))
}

// twinsMatch counts the devices whose reported properties at the hub
// equal what they reported, and whose desired properties as they know
// them (from patches) equal the hub's. thorough also reads each device's
// twin through the edge, as a device that restarts would.
func (d *Demo) twinsMatch(ctx context.Context, thorough bool) (reported, desired int, err error) {
	for _, ch := range d.children {
		t, err := d.svc.GetTwin(ctx, ch.id, "")
		if err != nil {
			return 0, 0, fmt.Errorf("twin of %s at the hub: %w", ch.id, err)
		}
		hubDesired := stripMeta(t.Properties.Desired)
		if twin.Equal(stripMeta(t.Properties.Reported), ch.reportedView()) {
			reported++
		}
		ok := twin.Equal(hubDesired, ch.desiredView())
		if ok && thorough {
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			viaEdge, _, err := ch.client().GetTwin(tctx)
			cancel()
			if err != nil {
				return 0, 0, fmt.Errorf("twin of %s through the edge: %w", ch.id, err)
			}
			ok = twin.Equal(hubDesired, stripMeta(viaEdge))
		}
		if ok {
			desired++
		}
	}
	return reported, desired, nil
}

// Serve sends telemetry again and returns when ctx ends: the system
// stays up for a person to explore (Explore says how).
func (d *Demo) Serve(ctx context.Context) error {
	for _, ch := range d.children {
		ch.startSending()
	}
	<-ctx.Done()
	for _, ch := range d.children {
		ch.stopSending()
	}
	return nil
}

// Explore describes the running system.
func (d *Demo) Explore() Explore {
	x := Explore{
		Dir:                    d.dir,
		HubConnectionString:    d.hub.ConnectionString(),
		CAFile:                 d.hub.CAFile(),
		HubHTTPSAddr:           d.hub.HTTPSAddr().String(),
		HubMQTTAddr:            d.hub.MQTTAddr().String(),
		EdgeID:                 EdgeID,
		EdgeMQTTAddr:           d.edge.Edge().MQTTAddr().String(),
		EdgeHTTPSAddr:          d.edge.Edge().HTTPSAddr().String(),
		UpstreamProxyAddr:      d.proxy.Addr(),
		ChildConnectionStrings: map[string]string{},
		FilterModule:           FilterModule,
	}
	for _, ch := range d.children {
		x.Children = append(x.Children, ch.id)
		x.ChildConnectionStrings[ch.id] = d.childCS[ch.id]
	}
	if d.logf != nil {
		x.LogFile = d.logf.Name()
	}
	return x
}

// Dir is the demo's directory: the hub's and the edge's data, and
// demo.log. Close leaves it for the caller to remove or inspect.
func (d *Demo) Dir() string { return d.dir }

// Close stops everything New started. It is safe to call more than once.
func (d *Demo) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		for _, ch := range d.children {
			errs = append(errs, ch.close())
		}
		if d.filter != nil {
			errs = append(errs, d.filter.close())
		}
		if d.edge != nil {
			if err := d.edge.Close(); err != nil {
				errs = append(errs, fmt.Errorf("edge: %w", err))
			}
		}
		if d.proxy != nil {
			errs = append(errs, d.proxy.Close())
		}
		if d.eventsCancel != nil {
			d.eventsCancel()
			if err := <-d.eventsDone; err != nil {
				errs = append(errs, fmt.Errorf("hub telemetry reader: %w", err))
			}
		}
		if d.hub != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			errs = append(errs, d.hub.Shutdown(sctx))
			cancel()
		}
		if d.logf != nil {
			errs = append(errs, d.logf.Close())
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

func (d *Demo) setPhase(n int, title string, dur time.Duration) {
	d.mu.Lock()
	d.phase, d.phaseStart, d.phaseDur = n, time.Now(), dur
	d.mu.Unlock()
	d.rep.Phase(n, title)
}

// queued is the telemetry waiting at the edge for the link, over every
// upstream endpoint (one per priority).
func (d *Demo) queued() int64 {
	var n int64
	for name, q := range d.edge.Edge().Status().Queues {
		if name == edge.UpstreamEndpoint || strings.HasPrefix(name, edge.UpstreamEndpoint+"/") {
			n += q.Length
		}
	}
	return n
}

func (d *Demo) progress() Progress {
	d.mu.Lock()
	p := Progress{Phase: d.phase, Elapsed: time.Since(d.phaseStart), Duration: d.phaseDur}
	marks, total := d.drainMarks, d.drainTotal
	d.mu.Unlock()
	t := d.tally.totals()
	p.Sent, p.Acked, p.Delivered = t.Sent, t.Acked, t.Delivered
	p.Queued = d.queued()
	p.LinkUp = d.edge.Edge().Status().Link.Connected
	if marks != nil {
		p.DrainTotal = total
		p.DrainDone = total - d.tally.undelivered(marks)
	}
	return p
}

func (d *Demo) progressLoop(ctx context.Context) {
	t := time.NewTicker(ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.rep.Progress(d.progress())
		}
	}
}

// waitFor polls cond until it holds or timeout passes, and returns how
// long it took.
func (d *Demo) waitFor(ctx context.Context, timeout time.Duration, cond func() bool) (time.Duration, bool) {
	return pollFor(ctx, timeout, 5*time.Millisecond, cond)
}

// pollFor is waitFor with a polling interval, for conditions that cost a
// round trip to check.
func pollFor(ctx context.Context, timeout, interval time.Duration, cond func() bool) (time.Duration, bool) {
	took, err := poll.Until(ctx, timeout, interval, func() error {
		if cond() {
			return nil
		}
		return poll.ErrTimeout
	})
	return took, err == nil
}

// sleep and sleepUntil pace the story; they end early with ctx.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func sleepUntil(ctx context.Context, at time.Time) error {
	return sleep(ctx, time.Until(at))
}

// round shortens a duration for people: milliseconds under ten seconds,
// tenths of a second above.
func round(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

func errText(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func errList(errs []string, ok string) string {
	if len(errs) > 0 {
		return strings.Join(errs, "; ")
	}
	return ok
}

// lockedReporter serializes the calls of the story and of the progress
// loop, so that a Reporter need not be safe for concurrent use.
type lockedReporter struct {
	mu sync.Mutex
	r  Reporter
}

func (l *lockedReporter) Phase(n int, title string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.r.Phase(n, title)
}

func (l *lockedReporter) Step(text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.r.Step(text)
}

func (l *lockedReporter) Progress(p Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.r.Progress(p)
}

type silent struct{}

func (silent) Phase(int, string) {}
func (silent) Step(string)       {}
func (silent) Progress(Progress) {}
