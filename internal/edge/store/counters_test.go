package store

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/message"
	"outpost/internal/soak"
)

// checkCounters compares the statistics Open loaded from the counters
// with a full scan of the queues: every count, byte total and head time,
// and the deleted head below every entry.
func (s *Store) checkCounters() error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	s.mu.Lock()
	byID := make(map[uint32]*endpoint, len(s.endpoints))
	for _, ep := range s.endpoints {
		byID[ep.id] = ep
	}
	s.mu.Unlock()
	q, err := s.scanQueues(byID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ep := range byID {
		st := q.eps[ep]
		if st == nil {
			st = &queueState{low: ep.low.Load()}
		}
		if ep.count != st.count || ep.bytes != st.bytes || !ep.oldest.Equal(st.oldest) {
			return fmt.Errorf("endpoint %q: counters say %d entries, %d bytes, head stored %v; the queue holds %d, %d bytes, head stored %v",
				ep.name, ep.count, ep.bytes, ep.oldest, st.count, st.bytes, st.oldest)
		}
		if st.count > 0 && ep.low.Load() > st.low {
			return fmt.Errorf("endpoint %q: deleted head at %d, past its entry %d", ep.name, ep.low.Load(), st.low)
		}
	}
	if s.bytes != q.bytes {
		return fmt.Errorf("store: counters say %d bytes, the queues hold %d", s.bytes, q.bytes)
	}
	return nil
}

// dropCounters makes a closed store look as one written before the
// counters existed.
func dropCounters(t testing.TB, fs vfs.FS, dir string) {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{FS: fs, FormatMajorVersion: pebble.FormatNewest, Logger: pebbleLogger{slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	for _, pfx := range [][]byte{metaAddedPfx, metaRemovedPfx} {
		if err := b.DeleteRange(pfx, prefixEnd(pfx), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(metaCountersKey, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// A store without counters (the format before them) opens with the
// statistics of a scan, writes its counters, and keeps them from then on.
func TestOpenMigratesCounters(t *testing.T) {
	fs := vfs.NewMem()
	clock := newFakeClock()
	cfg := Config{Dir: "edge", FS: fs, Now: clock.Now, MinFreeBytes: -1}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := range 10 {
		seqs = append(seqs, mustAppend(t, s, "a", msg("d", i)))
		mustAppend(t, s, "b", msg("d", i))
		clock.Advance(time.Second)
	}
	if err := s.ackEndpoint("a", seqs[3]); err != nil {
		t.Fatal(err)
	}
	if err := s.ackSeqs("a", seqs[6]); err != nil {
		t.Fatal(err)
	}
	before, next := s.Stats(), s.NextSeq()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	dropCounters(t, fs, "edge")

	reopen := func(step string) {
		t.Helper()
		if s, err = Open(cfg); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if err := s.checkCounters(); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	reopen("open without counters")
	if _, err := s.get(metaCountersKey); err != nil {
		t.Fatalf("counters not written by the migration: %v", err)
	}
	after := s.Stats()
	for _, ep := range []string{"a", "b"} {
		if b, a := before[ep], after[ep]; a.Len != b.Len || a.Bytes != b.Bytes || !a.Oldest.Equal(b.Oldest) {
			t.Fatalf("%s after migration %+v, before %+v", ep, a, b)
		}
	}
	if got := s.NextSeq(); got != next {
		t.Fatalf("next sequence %d after migration, %d before", got, next)
	}
	// The migrated counters go on: more appends and acks, then a reopen
	// that reads them.
	mustAppend(t, s, "a", msg("d", 99))
	if err := s.ackEndpoint("b", seqs[5]+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	reopen("open with migrated counters")
	defer s.Close()
	if got, want := s.Stats()["a"].Len, before["a"].Len+1; got != want {
		t.Fatalf("a holds %d, want %d", got, want)
	}
}

// TestRestartToServing logs how long Open takes with a backlog, from
// the counters and from a scan (what Open did before them, and does once
// for a store without counters), each the median of a few opens.
func TestRestartToServing(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a backlog")
	}
	benchOpen(t, soak.N(20_000, 1_000_000))
}

// BenchmarkRestartToServing1M is restart-to-serving with a 1M backlog:
// Open from the counters against Open with a scan, in the same run.
func BenchmarkRestartToServing1M(b *testing.B) {
	for b.Loop() {
		benchOpen(b, 1_000_000)
	}
}

func benchOpen(t testing.TB, n int) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, MinFreeBytes: -1}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 256)
	const batch = 1000
	for i := 0; i < n; i += batch {
		recs := make([]Record, batch)
		for j := range recs {
			recs[j] = Record{Endpoint: "$upstream", Msg: &message.Message{DeviceID: "d" + strconv.Itoa(j%10), Body: body}}
		}
		if _, err := s.AppendRecords(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	open := func(scan bool) time.Duration {
		if scan {
			dropCounters(t, vfs.Default, dir)
		}
		start := time.Now()
		s, err := Open(cfg)
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Stats()["$upstream"].Len; got != int64(n) {
			t.Fatalf("opened with %d entries, want %d", got, n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return took
	}
	// Pebble's own open, the floor of any Open.
	openPebble := func() time.Duration {
		start := time.Now()
		db, err := openDB(dir, &pebble.Options{FormatMajorVersion: pebble.FormatNewest, Logger: pebbleLogger{slog.New(slog.DiscardHandler)}})
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		return took
	}
	const rounds = 3
	var withCounters, withScan, pebbleOnly, afterScan []time.Duration
	for range rounds {
		withScan = append(withScan, open(true))
		// The scan's reads set off Pebble compactions, whose obsolete
		// files the next open of the database deletes: that open is not
		// the one measured.
		afterScan = append(afterScan, openPebble())
		withCounters = append(withCounters, open(false))
		pebbleOnly = append(pebbleOnly, openPebble())
	}
	mc, ms, mp := soak.Median(withCounters), soak.Median(withScan), soak.Median(pebbleOnly)
	t.Logf("restart-to-serving, %d-entry backlog: Open %v from the counters, %v with a scan, Pebble's own open %v, %v after a scanning open (medians of %d); scan/counters %.1fx",
		n, mc.Round(time.Microsecond), ms.Round(time.Microsecond), mp.Round(time.Microsecond), soak.Median(afterScan).Round(time.Microsecond), rounds, float64(ms)/float64(mc))
}
