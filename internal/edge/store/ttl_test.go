package store

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"outpost/internal/message"
)

// TestTTLClockJumps: a 2 h TTL, the clock advanced 2 h + 1 s, then set
// back 3 h (a wrong clock) and forward again (the clock corrected), then
// on past the young messages' TTL. At every step the store returns
// exactly the live entries (0 expired forwarded, 0 live lost), and the
// space of the expired ones is reclaimed.
//
// Endpoint "a" holds only default-TTL messages, so the expiry loop
// deletes its expired head. Endpoint "b" has a 10 h message at its head,
// so its expired default-TTL entries behind it stay until a reader
// passes them: a clock set back must not make those live again.
func TestTTLClockJumps(t *testing.T) {
	clock := newFakeClock()
	t0 := clock.Now()
	s, err := Open(Config{Dir: t.TempDir(), Now: clock.Now, DefaultTTL: 2 * time.Hour, ExpiryInterval: 10 * time.Millisecond, ReclaimBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	type stored struct{ name string }
	var all []stored
	add := func(ep, name string, n, size int, ttl time.Duration) {
		t.Helper()
		// In commits of 16, as the edge's group commit would make them.
		for i := 0; i < n; i += 16 {
			recs := make([]Record, min(16, n-i))
			for j := range recs {
				body := make([]byte, size)
				rand.Read(body) // incompressible, so disk usage tracks it
				recs[j] = Record{Endpoint: ep, Msg: &message.Message{DeviceID: "d", Body: body, Properties: map[string]string{"name": name + strconv.Itoa(i+j)}}, TTL: ttl}
			}
			if _, err := s.AppendRecords(context.Background(), recs); err != nil {
				t.Fatal(err)
			}
			for j := range recs {
				all = append(all, stored{name: ep + ":" + name + strconv.Itoa(i+j)})
			}
		}
	}
	// want checks that ep returns exactly the entries named by the
	// prefixes, in order, none expired by the store's clock.
	want := func(step, ep string, names ...string) {
		t.Helper()
		got := readAll(t, s, ep)
		var gotNames []string
		for _, e := range got {
			gotNames = append(gotNames, ep+":"+e.Msg.Properties["name"])
			if !e.ExpiresAt.After(s.now()) {
				t.Errorf("%s: %s returned, expired at %v (now %v)", step, e.Msg.Properties["name"], e.ExpiresAt, s.now())
			}
		}
		var wantNames []string
		for _, st := range all {
			for _, n := range names {
				if len(st.name) > len(ep)+1+len(n) && st.name[:len(ep)+1+len(n)] == ep+":"+n {
					wantNames = append(wantNames, st.name)
				}
			}
		}
		if !slices.Equal(gotNames, wantNames) {
			t.Errorf("%s: %s returned %d entries %v, want %d %v", step, ep, len(gotNames), short(gotNames), len(wantNames), short(wantNames))
		}
	}

	const big = 16 << 10
	add("a", "old", 1024, big, 0) // 16 MiB, expire at 2 h: past the memtable, into tables
	add("b", "long", 1, 100, 10*time.Hour)
	add("b", "oldB", 20, 100, 0)
	clock.Advance(time.Hour)
	add("a", "young", 20, big, 0)
	add("b", "youngB", 5, 100, 0)
	// The 16 MiB in tables, so that what the reclaim frees shows there.
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	peak, peakTables := s.Usage(), s.db.Metrics().Total().TablesSize

	clock.Advance(time.Hour + time.Second) // t0 + 2 h + 1 s
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := s.Stats()["a"]; st.Expired != 1024 || st.Len != 20 {
			return fmt.Errorf("a: %+v; want 1024 expired, 20 left", st)
		}
		return nil
	})
	want("2 h + 1 s", "a", "young")
	// The old entries' bytes leave the store and, compacted, the disk.
	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		u := s.Usage()
		// The tables, not all of Pebble's files: the WAL files it keeps
		// for reuse (up to about three memtables, 4 MiB each) come and go
		// with flushes, which made a whole-disk bound depend on when
		// Pebble flushed.
		// The whole disk must still shrink, if by less than the tables.
		if tables := s.db.Metrics().Total().TablesSize; u.Bytes > peak.Bytes-1024*big || tables > peakTables-1024*big*3/4 || u.DiskBytes >= peak.DiskBytes {
			return fmt.Errorf("usage %+v (tables %d), peak %+v (tables %d): the expired 16 MiB not reclaimed", u, tables, peak, peakTables)
		}
		return nil
	})
	after := s.Usage()
	t.Logf("expired 1024 x 16 KiB: store bytes %d -> %d, table bytes %d -> %d, disk bytes %d -> %d",
		peak.Bytes, after.Bytes, peakTables, s.db.Metrics().Total().TablesSize, peak.DiskBytes, after.DiskBytes)

	clock.Advance(-3 * time.Hour) // set back: t0 - 59 min 59 s
	add("a", "back", 20, 100, 0)
	add("b", "backB", 5, 100, 0)
	want("set back 3 h", "b", "long", "youngB", "backB")
	want("set back 3 h", "a", "young", "back")
	if st := s.Stats()["b"]; st.Expired != 20 {
		t.Errorf("b after reading: %+v; want its 20 expired deleted", st)
	}

	clock.Advance(3 * time.Hour) // corrected: t0 + 2 h + 1 s
	want("corrected", "a", "young", "back")
	want("corrected", "b", "long", "youngB", "backB")

	clock.Advance(time.Hour) // t0 + 3 h + 1 s: the young ones expire
	want("3 h + 1 s", "a", "back")
	want("3 h + 1 s", "b", "long", "backB")
	if got := s.now(); !got.Equal(t0.Add(3*time.Hour + time.Second)) {
		t.Errorf("store clock %v, want %v", got, t0.Add(3*time.Hour+time.Second))
	}
}

func short(names []string) []string {
	if len(names) > 6 {
		return append(append(names[:3:3], "…"), names[len(names)-3:]...)
	}
	return names
}

// The store's clock does not run back across a restart either: a store
// reopened with its clock set back stamps new entries no earlier than
// those it stored before.
func TestClockKeptAcrossRestart(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, "a", msg("d", 1))
	before := clock.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(-3 * time.Hour)
	s, err = Open(Config{Dir: dir, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustAppend(t, s, "a", msg("d", 2))
	got := readAll(t, s, "a")
	if len(got) != 2 || got[1].StoredAt.Before(before) {
		t.Fatalf("after a restart with the clock 3 h back, entries %+v; want the new one stored no earlier than %v", got, before)
	}
}
