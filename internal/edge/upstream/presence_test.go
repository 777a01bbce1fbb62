package upstream

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// presenceState folds reports into the set the hub would show Connected
// and returns it with the reports of connection conn.
func presenceState(reps []presenceSeen, conn int) (set map[string]bool, ofConn []presenceSeen) {
	set = map[string]bool{}
	for _, r := range reps {
		if r.conn != conn {
			continue
		}
		ofConn = append(ofConn, r)
		for _, c := range r.Connected {
			set[c] = true
		}
		for _, c := range r.Disconnected {
			delete(set, c)
		}
	}
	return set, ofConn
}

// awaitPresence waits until the reports of connection conn add up to want.
func (e *env) awaitPresence(t *testing.T, conn int, want string) []presenceSeen {
	t.Helper()
	var reps []presenceSeen
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		var set map[string]bool
		set, reps = presenceState(e.hub.presenceReports(), conn)
		if got := strings.Join(slices.Sorted(maps.Keys(set)), ","); got != want {
			return fmt.Errorf("connection %d: hub told %q; want %q", conn, got, want)
		}
		return nil
	})
	return reps
}

func TestPresence(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	e.link.Attach("child1", "")
	e.link.Attach("child1", "mod")
	e.link.Attach(testEdge, "") // the edge's own connection is the hub's to record
	e.start()

	reps := e.awaitPresence(t, 1, "child1,child1/mod")
	if !reps[0].Full {
		t.Fatalf("first report of the link %+v; want full", reps[0])
	}

	t.Run("a burst of connects makes few reports", func(t *testing.T) {
		before := len(e.hub.presenceReports())
		want := []string{"child1", "child1/mod"}
		for i := range 200 {
			id := fmt.Sprintf("kid%03d", i)
			e.link.Attach(id, "")
			want = append(want, id)
		}
		slices.Sort(want)
		e.awaitPresence(t, 1, strings.Join(want, ","))
		n := len(e.hub.presenceReports()) - before
		t.Logf("200 connects made %d reports", n)
		if n > 3 {
			t.Fatalf("%d reports for 200 connects; want at most 3", n)
		}
		for i := range 200 {
			e.link.Detach(fmt.Sprintf("kid%03d", i), "")
		}
		e.awaitPresence(t, 1, "child1,child1/mod")
	})

	t.Run("a report the hub holds does not hold the drain", func(t *testing.T) {
		hold := make(chan struct{})
		e.hub.mu.Lock()
		e.hub.presenceHold = hold
		e.hub.mu.Unlock()
		defer func() {
			e.hub.mu.Lock()
			e.hub.presenceHold = nil
			e.hub.mu.Unlock()
			close(hold)
		}()
		before := len(e.hub.presenceReports())
		e.link.Detach("child1", "mod")
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if len(e.hub.presenceReports()) == before {
				return errors.New("no report yet")
			}
			return nil
		})
		got := e.hub.count()
		const n = 2000
		e.appendN(n, "child1", "", 64)
		checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if c := e.hub.count() - got; c < n {
				return fmt.Errorf("%d of %d drained while a presence report waits", c, n)
			}
			if q := e.queued(); q != 0 {
				return fmt.Errorf("%d still queued", q)
			}
			return nil
		})
	})

	t.Run("link return reports the whole set again, and only the set", func(t *testing.T) {
		e.awaitPresence(t, 1, "child1")
		e.proxy.Cut()
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if e.link.Connected() {
				return errors.New("still connected")
			}
			return nil
		})
		// Changes while offline are not history: only the set on return
		// reaches the hub, and nothing goes into the store.
		e.link.Attach("child2", "")
		e.link.Attach("child3", "")
		e.link.Detach("child3", "")
		if q := e.queued(); q != 0 {
			t.Fatalf("%d entries queued in the store while offline", q)
		}
		if err := e.proxy.Restore(); err != nil {
			t.Fatal(err)
		}
		reps := e.awaitPresence(t, 2, "child1,child2")
		if len(reps) != 1 || !reps[0].Full || len(reps[0].Disconnected) != 0 {
			t.Fatalf("reports after the reconnect %+v; want one full report", reps)
		}
	})
}

func TestPresenceChunks(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	var want []string
	for i := range presenceChunk*2 + 10 {
		id := fmt.Sprintf("kid%04d", i)
		e.link.Attach(id, "")
		want = append(want, id)
	}
	e.start()
	reps := e.awaitPresence(t, 1, strings.Join(want, ","))
	if len(reps) != 3 {
		t.Fatalf("%d requests for %d ids; want 3", len(reps), len(want))
	}
	for i, r := range reps {
		if last := i == len(reps)-1; r.Full != last || len(r.Connected) > presenceChunk {
			t.Fatalf("request %d: full %v, %d ids; want full only on the last, at most %d ids", i, r.Full, len(r.Connected), presenceChunk)
		}
	}
}
