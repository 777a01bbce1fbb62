package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/clocktest"
	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
	"outpost/internal/message"
	"outpost/internal/status"
	"outpost/internal/topic"
)

// checkOrdered checks that got, de-duplicated by seq, is exactly want
// seqs in increasing order, and returns the seqs that came more than once.
func checkOrdered(got []received, want int) (dups []uint64, err error) {
	seen := map[uint64]int{}
	var order []uint64
	for _, r := range got {
		if r.edgeID != testEdge {
			return nil, fmt.Errorf("seq %d: %s = %q", r.seq, edgeproto.BagEdgeID, r.edgeID)
		}
		if seen[r.seq] == 0 {
			order = append(order, r.seq)
		} else if seen[r.seq] == 1 {
			dups = append(dups, r.seq)
		}
		seen[r.seq]++
	}
	if len(order) != want {
		return dups, fmt.Errorf("got %d distinct messages, want %d", len(order), want)
	}
	if !sort.SliceIsSorted(order, func(i, j int) bool { return order[i] < order[j] }) {
		return dups, errors.New("messages out of stored order")
	}
	return dups, nil
}

func TestDrainOrder(t *testing.T) {
	tests := []struct {
		name   string
		n      int
		window int
	}{
		{"10k, default window", 10000, 0},
		{"window of one", 300, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{keepAlive: 2 * time.Second, window: tc.window})
			e.appendN(tc.n/2, "child1", "", 64)
			e.appendN(tc.n-tc.n/2, "child1", "mod1", 64)
			start := time.Now()
			e.start()
			checkFor(t, 60*time.Second, 10*time.Millisecond, func() error {
				if n := e.hub.count(); n < tc.n {
					return fmt.Errorf("hub has %d of %d", n, tc.n)
				}
				if q := e.queued(); q != 0 {
					return fmt.Errorf("store still holds %d", q)
				}
				return nil
			})
			t.Logf("drained %d messages in %v", tc.n, time.Since(start).Round(time.Millisecond))
			got := e.hub.received()
			dups, err := checkOrdered(got, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if len(dups) > 0 {
				t.Fatalf("%d duplicates without any cut", len(dups))
			}
			if n := e.obs.n.Load(); n != int64(tc.n) {
				t.Fatalf("observer saw %d forwarded messages, want %d", n, tc.n)
			}
			if got[0].device != "child1" || got[0].module != "" || got[tc.n-1].module != "mod1" {
				t.Fatalf("identities: first %s/%s, last %s/%s", got[0].device, got[0].module, got[tc.n-1].device, got[tc.n-1].module)
			}
		})
	}
}

func TestCutDuringDrain(t *testing.T) {
	const n, window = 20000, 256
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second, window: window})
	e.appendN(n, "child1", "", 256)
	e.start()
	checkFor(t, 30*time.Second, time.Millisecond, func() error {
		if c := e.hub.count(); c < 3000 {
			return fmt.Errorf("hub has %d", c)
		}
		return nil
	})
	e.proxy.Cut()
	cutAt := time.Now()
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if e.link.Connected() {
			return errors.New("link still up after the cut")
		}
		return nil
	})
	if err := e.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		if q := e.queued(); q != 0 {
			return fmt.Errorf("store still holds %d", q)
		}
		return nil
	})
	got := e.hub.received()
	dups, err := checkOrdered(got, n)
	if err != nil {
		t.Fatal(err)
	}
	// Only what was in flight at the cut may come twice: at most a window's
	// worth, all among the last seqs the first connection delivered.
	var first []uint64
	for _, r := range got {
		if r.conn == 1 {
			first = append(first, r.seq)
		}
	}
	if len(first) == 0 || len(first) == len(got) {
		t.Fatalf("the cut did not split the drain: %d of %d before it", len(first), len(got))
	}
	last := first[max(0, len(first)-window):]
	inFlight := map[uint64]bool{}
	for _, s := range last {
		inFlight[s] = true
	}
	if len(dups) > window {
		t.Fatalf("%d duplicates, more than the window of %d", len(dups), window)
	}
	for _, d := range dups {
		if !inFlight[d] {
			t.Fatalf("seq %d came twice but was not in flight at the cut", d)
		}
	}
	t.Logf("cut after %d messages (at %s); %d duplicates after the reconnect", len(first), cutAt.Format("15:04:05.000"), len(dups))
	if st := e.link.State(); st.OfflinePeriods != 1 || st.LastOffline <= 0 {
		t.Fatalf("state after one cut: %+v", st)
	}
}

func TestLinkLossAndReturn(t *testing.T) {
	const keepAlive = 2 * time.Second
	tests := []struct {
		name string
		// fault takes the link down; lossWithin bounds how long the link
		// may take to notice.
		fault      func(e *env)
		lossWithin time.Duration
	}{
		{"connections reset", func(e *env) { e.proxy.Cut() }, time.Second},
		{"silent link, keepalive", func(e *env) { e.proxy.Stall() }, keepAlive + time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{keepAlive: keepAlive})
			e.start()
			checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				if !e.link.Connected() {
					return errors.New("not connected")
				}
				return nil
			})
			for round := 1; round <= 3; round++ {
				t0 := time.Now()
				tc.fault(e)
				checkFor(t, tc.lossWithin+2*time.Second, 5*time.Millisecond, func() error {
					if e.stateAfter(t0, false).IsZero() {
						return errors.New("loss not noticed")
					}
					return nil
				})
				loss := e.stateAfter(t0, false).Sub(t0)
				if loss > tc.lossWithin {
					t.Fatalf("round %d: loss noticed after %v, want within %v", round, loss, tc.lossWithin)
				}
				// Vary the outage so the reconnect lands in different
				// phases of the backoff.
				outage := time.Duration(round*round) * 500 * time.Millisecond
				time.Sleep(outage) // the outage itself, not a wait for a condition
				t1 := time.Now()
				if err := e.proxy.Restore(); err != nil {
					t.Fatal(err)
				}
				checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
					if e.stateAfter(t1, true).IsZero() {
						return errors.New("return not noticed")
					}
					return nil
				})
				back := e.stateAfter(t1, true).Sub(t1)
				t.Logf("round %d: loss noticed in %v; outage %v; link restored -> connected in %v",
					round, loss.Round(time.Millisecond), outage, back.Round(time.Millisecond))
				if back > 3*time.Second {
					t.Fatalf("round %d: return noticed after %v, want < 3s", round, back)
				}
			}
			st := e.link.State()
			if st.OfflinePeriods != 3 || !st.Connected || st.LastOffline <= 0 || st.LastError == "" {
				t.Fatalf("state after 3 outages: %+v", st)
			}
		})
	}
}

func TestLiveDuringDrain(t *testing.T) {
	const backlog, live = 20000, 2000
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	e.appendN(backlog, "child1", "", 256)
	e.start()
	checkFor(t, 30*time.Second, time.Millisecond, func() error {
		if c := e.hub.count(); c == 0 {
			return errors.New("drain not started")
		}
		return nil
	})
	// Live traffic from two devices while the backlog drains.
	var wg sync.WaitGroup
	var drainingAtEnd atomic.Bool
	for _, d := range []string{"child2", "child3"} {
		wg.Go(func() {
			for i := range live / 2 {
				_, err := e.store.AppendRecords(context.Background(), []store.Record{{Endpoint: Endpoint, Msg: &message.Message{
					DeviceID: d, Body: []byte(strconv.Itoa(i)),
				}}})
				if err != nil {
					t.Error(err)
					return
				}
				// No Kick, as the edge does: the drain wakes on commits.
			}
		})
	}
	wg.Wait()
	drainingAtEnd.Store(e.queued() > 0)
	checkFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		if q := e.queued(); q != 0 {
			return fmt.Errorf("store still holds %d", q)
		}
		return nil
	})
	got := e.hub.received()
	if _, err := checkOrdered(got, backlog+live); err != nil {
		t.Fatal(err)
	}
	next := map[string]int{}
	for _, r := range got {
		if r.device == "child1" {
			continue
		}
		if want := strconv.Itoa(next[r.device]); string(r.body) != want {
			t.Fatalf("%s: got message %s, want %s", r.device, r.body, want)
		}
		next[r.device]++
	}
	t.Logf("live appends finished with the backlog still draining: %v", drainingAtEnd.Load())
}

func TestC2D(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	release := make(chan error)
	delivered := make(chan *message.Message, 1)
	e.local.deliverC2D = func(ctx context.Context, deviceID string, msg *message.Message) error {
		if deviceID != "child1" {
			return errors.New("unknown child")
		}
		delivered <- msg
		select {
		case err := <-release:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.link.Attach("child1", "")
	e.start()
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !e.hub.subscribed(topic.C2DFilter("child1")) {
			return errors.New("no c2d subscription")
		}
		return nil
	})
	tests := []struct {
		name    string
		outcome error
		acked   bool
	}{
		{"child acks", nil, true},
		{"child gone", errors.New("child disconnected"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bag := map[string]string{message.KeyMessageID: "c2d-" + tc.name, "k": "v"}
			id, err := e.hub.send(topic.C2D("child1", bag), []byte("hello"), 1)
			if err != nil {
				t.Fatal(err)
			}
			var msg *message.Message
			select {
			case msg = <-delivered:
			case <-time.After(5 * time.Second):
				t.Fatal("DeliverC2D not called")
			}
			if msg.DeviceID != "child1" || string(msg.Body) != "hello" || msg.System.MessageID != bag[message.KeyMessageID] || msg.Properties["k"] != "v" {
				t.Fatalf("delivered %+v", msg)
			}
			// The PUBACK must wait for the child: give it a chance to leak.
			time.Sleep(100 * time.Millisecond)
			if _, ok := e.hub.pubackAt(id); ok {
				t.Fatal("PUBACK before the child acked")
			}
			returned := time.Now()
			release <- tc.outcome
			if !tc.acked {
				time.Sleep(200 * time.Millisecond)
				if _, ok := e.hub.pubackAt(id); ok {
					t.Fatal("PUBACK for a message the child never got")
				}
				return
			}
			checkFor(t, 5*time.Second, 2*time.Millisecond, func() error {
				if _, ok := e.hub.pubackAt(id); !ok {
					return errors.New("no PUBACK")
				}
				return nil
			})
			if at, _ := e.hub.pubackAt(id); at.Before(returned) {
				t.Fatal("PUBACK before DeliverC2D returned")
			}
		})
	}
	t.Run("detach unsubscribes", func(t *testing.T) {
		e.link.Detach("child1", "")
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if e.hub.subscribed(topic.C2DFilter("child1")) {
				return errors.New("still subscribed")
			}
			return nil
		})
	})
}

func TestMethod(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	e.local.invokeMethod = func(ctx context.Context, deviceID, moduleID, name string, payload []byte) (int, []byte, error) {
		if deviceID != "child1" || name != "reboot" {
			return 0, nil, errors.New("no such method")
		}
		return 200, []byte(`{"echo":` + string(payload) + `,"module":"` + moduleID + `"}`), nil
	}
	e.link.Attach("child1", "")
	e.link.Attach("child1", "mod1")
	e.start()
	tests := []struct {
		name, cid, method string
		status            int
		body              string
	}{
		{"device", "child1", "reboot", 200, `{"echo":42,"module":""}`},
		{"module", "child1/mod1", "reboot", 200, `{"echo":42,"module":"mod1"}`},
		{"local failure", "child1", "nope", http.StatusNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				if !e.hub.subscribed(topic.OBOMethodFilter(tc.cid)) {
					return errors.New("no method subscription")
				}
				return nil
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			r, err := e.hub.invoke(ctx, tc.cid, tc.method, []byte("42"))
			if err != nil {
				t.Fatal(err)
			}
			if r.status != tc.status || (tc.body != "" && string(r.body) != tc.body) {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tc.status, tc.body)
			}
		})
	}
}

func TestRequests(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	e.hub.mu.Lock()
	e.hub.twins["child1"] = `{"desired":{"a":1,"$version":3},"reported":{"$version":1}}`
	e.hub.twins[testEdge+"/"+edgeHubModule] = `{"desired":{"routes":{"r":"FROM /messages/* INTO $upstream"},"$version":7},"reported":{"$version":1}}`
	e.hub.mu.Unlock()
	edgeHub := make(chan string, 4)
	e.local.edgeHubDesired = func(d []byte) { edgeHub <- string(d) }
	patches := make(chan string, 4)
	e.local.desiredPatch = func(d, m string, v int64, p []byte) { patches <- fmt.Sprintf("%s/%s v%d %s", d, m, v, p) }
	e.link.Attach("child1", "")
	e.start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !e.link.Connected() {
			return errors.New("not connected")
		}
		return nil
	})

	t.Run("edgeHub twin on connect", func(t *testing.T) {
		select {
		case d := <-edgeHub:
			if d != `{"routes":{"r":"FROM /messages/* INTO $upstream"},"$version":7}` {
				t.Fatalf("EdgeHubDesired got %s", d)
			}
		case <-ctx.Done():
			t.Fatal("EdgeHubDesired not called")
		}
	})
	t.Run("desired patches", func(t *testing.T) {
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if !e.hub.subscribed(topic.OBOTwinDesiredFilter("child1")) {
				return errors.New("no desired subscription")
			}
			return nil
		})
		if _, err := e.hub.send(topic.OBOTwinDesired("child1", 4), []byte(`{"a":2,"$version":4}`), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := e.hub.send(topic.OBOTwinDesired(testEdge+"/"+edgeHubModule, 8), []byte(`{"x":1,"$version":8}`), 0); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`child1/ v4 {"a":2,"$version":4}`} {
			select {
			case got := <-patches:
				if got != want {
					t.Fatalf("patch %q, want %q", got, want)
				}
			case <-ctx.Done():
				t.Fatal("no desired patch")
			}
		}
		select {
		case got := <-edgeHub:
			if got != `{"x":1,"$version":8}` {
				t.Fatalf("edgeHub patch %s", got)
			}
		case <-ctx.Done():
			t.Fatal("no $edgeHub patch")
		}
	})
	t.Run("sync identities", func(t *testing.T) {
		snap, err := e.link.SyncIdentities(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Edge.DeviceID != testEdge || len(snap.Devices) != 1 || snap.Devices[0].DeviceID != "child1" ||
			snap.HubHostName != testHost || snap.RootCA == "" || snap.SyncedAt.IsZero() || len(snap.Modules) != 1 {
			t.Fatalf("snapshot %+v", snap)
		}
	})
	t.Run("sign edge ca", func(t *testing.T) {
		csr, key, err := certs.NewCSR(testEdge, "edge.example")
		if err != nil {
			t.Fatal(err)
		}
		chain, root, err := e.link.SignEdgeCA(ctx, csr)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := certs.CAFromPEM(chain, key)
		if err != nil {
			t.Fatal(err)
		}
		if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != testEdge || string(root) != string(e.hub.ca.CertPEM) {
			t.Fatalf("edge ca: isCA %v, CN %q", ca.Cert.IsCA, ca.Cert.Subject.CommonName)
		}
		if err := ca.Cert.CheckSignatureFrom(e.hub.ca.Cert); err != nil {
			t.Fatal(err)
		}
		bad, _, _ := certs.NewCSR("someone-else")
		var se *status.Error
		if _, _, err := e.link.SignEdgeCA(ctx, bad); !errors.As(err, &se) || *se != *errForeignCSR {
			t.Fatalf("foreign CSR: %v", err)
		}
	})
	t.Run("twin get and reported", func(t *testing.T) {
		doc, err := e.link.TwinGet(ctx, "child1", "")
		if err != nil {
			t.Fatal(err)
		}
		var twin struct{ Desired map[string]any }
		if err := json.Unmarshal(doc, &twin); err != nil || twin.Desired["a"] != float64(1) {
			t.Fatalf("twin %s: %v", doc, err)
		}
		// A module that is not attached: the link subscribes for the answer.
		var se *status.Error
		if _, err := e.link.TwinGet(ctx, "child1", "other"); !errors.As(err, &se) || *se != *errNoTwin {
			t.Fatalf("missing twin: %v", err)
		}
		for want := int64(1); want <= 2; want++ {
			v, err := e.link.TwinReported(ctx, "child1", "", []byte(`{"b":1}`))
			if err != nil || v != want {
				t.Fatalf("reported: version %d, %v; want %d", v, err, want)
			}
		}
	})
	t.Run("offline fails fast", func(t *testing.T) {
		e.proxy.Cut()
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if e.link.Connected() {
				return errors.New("still connected")
			}
			return nil
		})
		calls := []struct {
			name string
			call func(ctx context.Context) error
		}{
			{"twin get", func(ctx context.Context) error { _, err := e.link.TwinGet(ctx, "child1", ""); return err }},
			{"twin reported", func(ctx context.Context) error {
				_, err := e.link.TwinReported(ctx, "child1", "", []byte(`{}`))
				return err
			}},
			{"sync identities", func(ctx context.Context) error { _, err := e.link.SyncIdentities(ctx); return err }},
		}
		for _, c := range calls {
			start := time.Now()
			err := c.call(context.Background())
			if took := time.Since(start); !errors.Is(err, ErrOffline) || took > time.Second {
				t.Fatalf("%s while cut: %v after %v, want ErrOffline within 1s", c.name, err, took)
			}
		}
		if err := e.proxy.Restore(); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			_, err := e.link.TwinGet(ctx, "child1", "")
			return err
		})
		select {
		case <-edgeHub: // fetched again on reconnect
		case <-ctx.Done():
			t.Fatal("$edgeHub twin not fetched after the reconnect")
		}
	})
}

func TestNewConfig(t *testing.T) {
	e := newEnv(t, envOpts{})
	base := e.link.cfg
	tests := []struct {
		name   string
		mutate func(c *Config)
		ok     bool
	}{
		{"valid", func(c *Config) {}, true},
		{"no host", func(c *Config) { c.HubHostName = "" }, false},
		{"bad key", func(c *Config) { c.Key = "%%%" }, false},
		{"no store", func(c *Config) { c.Store = nil }, false},
		{"no local", func(c *Config) { c.Local = nil }, false},
		{"tiny keepalive", func(c *Config) { c.KeepAlive = time.Millisecond }, false},
		{"window too large", func(c *Config) { c.Window = 70000 }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.mutate(&c)
			_, err := New(c)
			if (err == nil) != tc.ok {
				t.Fatalf("New: %v, want ok=%v", err, tc.ok)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		c := base
		c.Addr, c.KeepAlive, c.Window = "", 0, 0
		c.HubHostName = "hub.example:1234"
		l, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		// HostName's port is the hub's HTTPS port: MQTT stays on 8883.
		if l.addr != "hub.example:8883" || l.tls.ServerName != "hub.example" || l.cfg.KeepAlive != 30*time.Second || l.cfg.Window != defaultWindow {
			t.Fatalf("defaults: addr %s, sni %s, keepalive %v, window %d", l.addr, l.tls.ServerName, l.cfg.KeepAlive, l.cfg.Window)
		}
		c.HubHostName = "hub.example"
		if l, _ := New(c); l.addr != "hub.example:8883" {
			t.Fatalf("default port: %s", l.addr)
		}
	})
}

func TestRefusedCredentials(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	e.hub.mu.Lock()
	e.hub.refuse = true
	e.hub.mu.Unlock()
	e.start()
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st := e.link.State(); st.LastError == "" {
			return errors.New("no error recorded")
		}
		return nil
	})
	if st := e.link.State(); st.Connected || st.OfflinePeriods != 0 {
		t.Fatalf("state %+v", st)
	}
	e.hub.mu.Lock()
	e.hub.refuse = false
	e.hub.mu.Unlock()
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !e.link.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
}

// Before it drains, the link tells the hub where its store stands; when
// the hub has stored sequences past it (the store is a restored backup
// or a copy), the store moves on past them, and what it appends from then
// on is numbered beyond what the hub has seen. Every drained message
// carries its store's id and stored time.
func TestStorePositionAgreed(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	const hubNext = 5000
	e.hub.mu.Lock()
	e.hub.storeNext = hubNext
	e.hub.mu.Unlock()
	old := e.appendTo(Endpoint, 3, "child1", "", 16)
	e.start()
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := e.hub.count(); n < 3 {
			return fmt.Errorf("hub has %d of 3", n)
		}
		return nil
	})
	e.hub.mu.Lock()
	positions := slices.Clone(e.hub.positions)
	e.hub.mu.Unlock()
	if len(positions) == 0 || positions[0].StoreID != e.store.ID() || positions[0].Next != old[2]+1 {
		t.Fatalf("positions asked %+v; want store %s at %d first", positions, e.store.ID(), old[2]+1)
	}
	fresh := e.appendTo(Endpoint, 2, "child1", "", 16)
	if fresh[0] < hubNext {
		t.Fatalf("appended after the hub said %d: sequence %d", hubNext, fresh[0])
	}
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := e.hub.count(); n < 5 {
			return fmt.Errorf("hub has %d of 5", n)
		}
		return nil
	})
	for i, r := range e.hub.received() {
		if r.key.StoreID != e.store.ID() || r.key.StoredAt == 0 {
			t.Errorf("message %d: replay key %+v; want store %s and a stored time", i, r.key, e.store.ID())
		}
	}
}

// The reconnect wait runs on the link's clock: ten hours of backoff pass
// in no real time when the clock's timers fire at once.
func TestWaitUsesTheClock(t *testing.T) {
	e := newEnv(t, envOpts{})
	clock := clocktest.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var timers int
	e.link.now = clock.Now
	e.link.cfg.After = func(d time.Duration) (<-chan time.Time, func() bool) {
		timers++
		clock.Advance(d)
		ch := make(chan time.Time, 1)
		ch <- clock.Now()
		return ch, func() bool { return false }
	}
	start, real := clock.Now(), time.Now()
	e.link.wait(context.Background(), 10*time.Hour, false)
	if got := clock.Now().Sub(start); got != 10*time.Hour {
		t.Errorf("the link's clock moved %v; want 10h", got)
	}
	if timers != 1 || time.Since(real) > 5*time.Second {
		t.Errorf("%d timers, %v of real time; want one timer and no real wait", timers, time.Since(real))
	}
}
