package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/clocktest"
	"outpost/internal/message"
	"outpost/internal/poll"
)

// newFakeClock is a stopped clock for TTL tests.
func newFakeClock() *clocktest.Clock {
	return clocktest.At(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
}

// checkFor polls fn until it returns nil or timeout passes.
func checkFor(t *testing.T, timeout, interval time.Duration, fn func() error) {
	t.Helper()
	poll.Check(t, timeout, interval, fn)
}

// openMem opens a store on a crashable in-memory file system.
func openMem(t *testing.T, cfg Config) (*Store, *vfs.MemFS) {
	t.Helper()
	fs := vfs.NewCrashableMem()
	cfg.FS = fs
	if cfg.Dir == "" {
		cfg.Dir = "edge"
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, fs
}

func msg(device string, n int) *message.Message {
	return &message.Message{
		DeviceID:   device,
		Body:       []byte("body " + strconv.Itoa(n)),
		Properties: map[string]string{"n": strconv.Itoa(n)},
		System:     message.System{MessageID: message.NewID()},
	}
}

func mustAppend(t *testing.T, s *Store, ep string, m *message.Message) uint64 {
	t.Helper()
	seq, err := s.appendOne(context.Background(), ep, m)
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	return seq
}

// readAll reads every entry currently in ep.
func readAll(t *testing.T, s *Store, ep string) []Entry {
	t.Helper()
	r, err := s.NewReader(ep)
	if err != nil {
		t.Fatal(err)
	}
	var all []Entry
	for {
		es, err := r.tryNext(100)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			return all
		}
		all = append(all, es...)
	}
}

func TestAppendReadAck(t *testing.T) {
	clock := newFakeClock()
	s, _ := openMem(t, Config{Now: clock.Now})
	const ep = "$upstream"
	var seqs []uint64
	for i := range 5 {
		seqs = append(seqs, mustAppend(t, s, ep, msg("d1", i)))
	}
	r, err := s.NewReader(ep)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("batches in order", func(t *testing.T) {
		first, err := r.Next(ctx, 3)
		if err != nil {
			t.Fatal(err)
		}
		rest, err := r.Next(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(first) != 3 || len(rest) != 2 {
			t.Fatalf("got batches of %d and %d, want 3 and 2", len(first), len(rest))
		}
		for i, e := range append(first, rest...) {
			if e.Seq != seqs[i] || e.Endpoint != ep || e.Msg.Properties["n"] != strconv.Itoa(i) {
				t.Errorf("entry %d = seq %d endpoint %q n %q, want seq %d", i, e.Seq, e.Endpoint, e.Msg.Properties["n"], seqs[i])
			}
			if !e.StoredAt.Equal(clock.Now()) || !e.ExpiresAt.Equal(clock.Now().Add(DefaultTTL)) {
				t.Errorf("entry %d stored %v expires %v", i, e.StoredAt, e.ExpiresAt)
			}
		}
	})
	t.Run("rewind redelivers unacked", func(t *testing.T) {
		if err := r.Ack(seqs[1]); err != nil {
			t.Fatal(err)
		}
		r.Rewind()
		es, err := r.tryNext(10)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != 3 || es[0].Seq != seqs[2] {
			t.Fatalf("after ack of %d and rewind got %d entries from %v", seqs[1], len(es), es)
		}
	})
	t.Run("stats", func(t *testing.T) {
		st := s.Stats()[ep]
		if st.Len != 3 || st.Stored != 5 || st.Forwarded != 2 || st.Expired != 0 {
			t.Fatalf("stats = %+v", st)
		}
		if st.Priority != DefaultPriority || st.TTL != DefaultTTL || !st.Oldest.Equal(clock.Now()) {
			t.Fatalf("stats = %+v", st)
		}
		if u := s.Usage(); u.Bytes != st.Bytes || u.Bytes <= 0 {
			t.Fatalf("usage %+v vs endpoint bytes %d", u, st.Bytes)
		}
	})
	t.Run("ack all empties", func(t *testing.T) {
		if err := s.ackEndpoint(ep, seqs[4]); err != nil {
			t.Fatal(err)
		}
		st := s.Stats()[ep]
		if st.Len != 0 || st.Bytes != 0 || !st.Oldest.IsZero() || st.Forwarded != 5 {
			t.Fatalf("stats = %+v", st)
		}
		if u := s.Usage(); u.Bytes != 0 {
			t.Fatalf("usage bytes = %d", u.Bytes)
		}
		for name, st := range s.Stats() {
			if st.Len != 0 {
				t.Fatalf("endpoint %s holds %d, want every endpoint empty", name, st.Len)
			}
		}
	})
}

func TestEndpointsAreSeparateQueues(t *testing.T) {
	s, _ := openMem(t, Config{})
	eps := []string{"$upstream", "/modules/m/inputs/i", "/devices/d/messages/devicebound"}
	for i := range 30 {
		mustAppend(t, s, eps[i%3], msg("d", i))
	}
	for k, ep := range eps {
		t.Run(ep, func(t *testing.T) {
			all := readAll(t, s, ep)
			if len(all) != 10 {
				t.Fatalf("got %d entries", len(all))
			}
			for j, e := range all {
				if want := strconv.Itoa(k + 3*j); e.Msg.Properties["n"] != want {
					t.Fatalf("entry %d n = %s, want %s", j, e.Msg.Properties["n"], want)
				}
			}
		})
	}
}

func TestConcurrentAppendersKeepOrder(t *testing.T) {
	s, _ := openMem(t, Config{})
	const appenders, each = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	for a := range appenders {
		wg.Go(func() {
			dev := "dev" + strconv.Itoa(a)
			for i := range each {
				if _, err := s.appendOne(context.Background(), "$upstream", msg(dev, i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := readAll(t, s, "$upstream")
	if len(all) != appenders*each {
		t.Fatalf("got %d entries, want %d", len(all), appenders*each)
	}
	next := map[string]int{}
	for i, e := range all {
		if i > 0 && e.Seq <= all[i-1].Seq {
			t.Fatalf("seq %d after %d", e.Seq, all[i-1].Seq)
		}
		n, _ := strconv.Atoi(e.Msg.Properties["n"])
		if n != next[e.Msg.DeviceID] {
			t.Fatalf("%s: got message %d, want %d", e.Msg.DeviceID, n, next[e.Msg.DeviceID])
		}
		next[e.Msg.DeviceID]++
	}
}

func TestGroupCommit(t *testing.T) {
	t.Run("50 concurrent appenders share fsyncs", func(t *testing.T) {
		// On disk, so that a sync costs what it costs.
		s, err := Open(Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		const appenders, each = 50, 20
		var wg sync.WaitGroup
		var failed atomic.Int64
		for a := range appenders {
			wg.Go(func() {
				for i := range each {
					if _, err := s.appendOne(context.Background(), "$upstream", msg("d"+strconv.Itoa(a), i)); err != nil {
						failed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if failed.Load() != 0 {
			t.Fatalf("%d appends failed", failed.Load())
		}
		u := s.Usage()
		t.Logf("%d messages in %d commits", u.Appended, u.Commits)
		if u.Appended != appenders*each || u.Commits >= u.Appended {
			t.Fatalf("%d messages in %d commits: want fewer commits than messages", u.Appended, u.Commits)
		}
	})
	t.Run("one appender with many in flight", func(t *testing.T) {
		s, err := Open(Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		const n = 1000
		var mu sync.Mutex
		var got []uint64
		var wg sync.WaitGroup
		wg.Add(n)
		for i := range n {
			err := s.appendAsync([]Record{{Endpoint: "$upstream", Msg: msg("d", i)}}, func(seqs []uint64, err error) {
				defer wg.Done()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, seqs[0])
				mu.Unlock()
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		wg.Wait()
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Fatalf("callbacks out of order: %d after %d", got[i], got[i-1])
			}
		}
		u := s.Usage()
		t.Logf("%d messages in %d commits", u.Appended, u.Commits)
		if u.Commits*10 > n {
			t.Fatalf("%d commits for %d messages in flight", u.Commits, n)
		}
	})
}

func TestAppendRecordsAtomic(t *testing.T) {
	s, _ := openMem(t, Config{})
	m := msg("d", 1)
	seqs, err := s.AppendRecords(context.Background(), []Record{
		{Endpoint: "$upstream", Msg: m},
		{Endpoint: "/modules/m/inputs/i", Msg: m},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 2 || seqs[1] != seqs[0]+1 {
		t.Fatalf("seqs = %v", seqs)
	}
	for _, ep := range []string{"$upstream", "/modules/m/inputs/i"} {
		if got := readAll(t, s, ep); len(got) != 1 {
			t.Fatalf("%s has %d entries", ep, len(got))
		}
	}
}

func TestTTL(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(s *Store) error
		msgTTL   time.Duration // per-message TTL of the first two messages
		advance  time.Duration // between the first two messages and the third
		wantLive int
	}{
		{name: "default ttl not reached", advance: time.Hour, wantLive: 3},
		{name: "default ttl passed", advance: DefaultTTL, wantLive: 1},
		{name: "endpoint ttl", setup: func(s *Store) error {
			return s.SetEndpoint("q", EndpointConfig{Priority: 1, TTL: time.Minute})
		}, advance: time.Minute, wantLive: 1},
		{name: "store ttl change applies to stored", setup: func(s *Store) error {
			return s.SetTTL(10 * time.Second)
		}, advance: 10 * time.Second, wantLive: 1},
		{name: "message ttl overrides endpoint ttl", setup: func(s *Store) error {
			return s.SetEndpoint("q", EndpointConfig{TTL: time.Second})
		}, msgTTL: time.Hour, advance: time.Minute, wantLive: 3},
		{name: "short message ttl", msgTTL: time.Second, advance: time.Second, wantLive: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			s, _ := openMem(t, Config{Now: clock.Now})
			for i := range 2 {
				if _, err := s.AppendRecords(context.Background(), []Record{{Endpoint: "q", Msg: msg("d", i), TTL: tt.msgTTL}}); err != nil {
					t.Fatal(err)
				}
			}
			// The TTL in force when read applies, so a change after the
			// append still counts.
			if tt.setup != nil {
				if err := tt.setup(s); err != nil {
					t.Fatal(err)
				}
			}
			clock.Advance(tt.advance)
			mustAppend(t, s, "q", msg("d", 2))
			got := readAll(t, s, "q")
			if len(got) != tt.wantLive {
				t.Fatalf("read %d entries, want %d", len(got), tt.wantLive)
			}
			if got[len(got)-1].Msg.Properties["n"] != "2" {
				t.Fatalf("live message lost: last is %v", got[len(got)-1].Msg.Properties)
			}
			st := s.Stats()["q"]
			if wantExp := uint64(3 - tt.wantLive); st.Expired != wantExp || st.Len != int64(tt.wantLive) {
				t.Fatalf("stats %+v, want %d expired", st, wantExp)
			}
		})
	}
}

func TestExpiryLoopDeletesWithoutReader(t *testing.T) {
	clock := newFakeClock()
	s, _ := openMem(t, Config{Now: clock.Now, ExpiryInterval: 5 * time.Millisecond})
	for i := range 10 {
		mustAppend(t, s, "$upstream", msg("d", i))
	}
	clock.Advance(time.Hour)
	mustAppend(t, s, "$upstream", msg("d", 10))
	clock.Advance(DefaultTTL - time.Hour)
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		st := s.Stats()["$upstream"]
		if st.Expired != 10 || st.Len != 1 {
			return fmt.Errorf("stats %+v, want 10 expired, 1 left", st)
		}
		if want := clock.Now().Add(-(DefaultTTL - time.Hour)); !st.Oldest.Equal(want) {
			return fmt.Errorf("oldest %v, want %v", st.Oldest, want)
		}
		return nil
	})
}

func TestSettingsPersist(t *testing.T) {
	fs := vfs.NewMem()
	open := func(defTTL time.Duration) *Store {
		s, err := Open(Config{Dir: "edge", FS: fs, DefaultTTL: defTTL})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open(0)
	if s.TTL() != DefaultTTL {
		t.Fatalf("ttl = %v", s.TTL())
	}
	if err := s.SetTTL(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.SetEndpoint("/modules/m/inputs/i", EndpointConfig{Priority: 3, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []time.Duration{0, -time.Second, MaxTTL + time.Second} {
		if err := s.SetTTL(bad); err == nil {
			t.Errorf("SetTTL(%v) accepted", bad)
		}
	}
	if err := s.SetEndpoint("x", EndpointConfig{Priority: 10}); err == nil {
		t.Error("priority 10 accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(time.Minute)
	defer s.Close()
	if s.TTL() != 90*time.Second {
		t.Fatalf("ttl after reopen = %v, want 90s", s.TTL())
	}
	st := s.Stats()["/modules/m/inputs/i"]
	if st.Priority != 3 || st.TTL != time.Hour {
		t.Fatalf("endpoint after reopen = %+v", st)
	}
}

func TestQuota(t *testing.T) {
	s, _ := openMem(t, Config{MaxBytes: 10_000})
	m := &message.Message{DeviceID: "d", Body: bytes.Repeat([]byte("x"), 900)}
	var seqs []uint64
	var quotaErr error
	for range 20 {
		seq, err := s.appendOne(context.Background(), "$upstream", m)
		if err != nil {
			quotaErr = err
			break
		}
		seqs = append(seqs, seq)
	}
	t.Run("refused with a clear error", func(t *testing.T) {
		if !errors.Is(quotaErr, ErrQuotaExceeded) {
			t.Fatalf("err = %v, want ErrQuotaExceeded", quotaErr)
		}
		if !strings.Contains(quotaErr.Error(), "storage quota of 10000 bytes reached") {
			t.Fatalf("err text %q", quotaErr)
		}
		if len(seqs) == 0 || len(seqs) >= 20 {
			t.Fatalf("%d appends before refusal", len(seqs))
		}
	})
	t.Run("nothing written, nothing lost", func(t *testing.T) {
		st := s.Stats()["$upstream"]
		if st.Len != int64(len(seqs)) || st.Bytes > 10_000 || s.Usage().Bytes != st.Bytes {
			t.Fatalf("stats %+v after %d appends", st, len(seqs))
		}
		if got := readAll(t, s, "$upstream"); len(got) != len(seqs) {
			t.Fatalf("read %d, want %d", len(got), len(seqs))
		}
	})
	t.Run("resumes after ack", func(t *testing.T) {
		if err := s.ackEndpoint("$upstream", seqs[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := s.appendOne(context.Background(), "$upstream", m); err != nil {
			t.Fatalf("append after ack: %v", err)
		}
	})
}

func TestRefusals(t *testing.T) {
	s, _ := openMem(t, Config{})
	big := func(n int) *message.Message { return &message.Message{DeviceID: "d", Body: make([]byte, n)} }
	tests := []struct {
		name string
		rec  Record
		want error
	}{
		{"body at limit", Record{Endpoint: "e", Msg: big(message.MaxSize - 1)}, nil},
		{"body over limit", Record{Endpoint: "e", Msg: big(message.MaxSize + 1)}, ErrTooLarge},
		{"properties count", Record{Endpoint: "e", Msg: &message.Message{Body: make([]byte, message.MaxSize-2), Properties: map[string]string{"ab": "cd"}}}, ErrTooLarge},
		{"no endpoint", Record{Msg: big(1)}, errAny},
		{"nil message", Record{Endpoint: "e"}, errAny},
		{"negative ttl", Record{Endpoint: "e", Msg: big(1), TTL: -time.Second}, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.AppendRecords(context.Background(), []Record{tt.rec})
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("err = %v", err)
			case tt.want == errAny && err == nil:
				t.Fatal("accepted")
			case tt.want != nil && tt.want != errAny && !errors.Is(err, tt.want):
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestReclaimWithoutSweep(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), ReclaimBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, size = 512, 32 << 10 // 16 MiB
	var last uint64
	for i := 0; i < n; i += 64 {
		recs := make([]Record, 64)
		for j := range recs {
			// Random, so Pebble's compression cannot shrink it.
			body := make([]byte, size)
			rand.Read(body)
			recs[j] = Record{Endpoint: "$upstream", Msg: &message.Message{DeviceID: "d", Body: body}}
		}
		seqs, err := s.AppendRecords(context.Background(), recs)
		if err != nil {
			t.Fatal(err)
		}
		last = seqs[len(seqs)-1]
	}
	peak := s.Usage().DiskBytes
	if peak < n*size {
		t.Fatalf("disk usage %d after storing %d bytes", peak, n*size)
	}
	if err := s.ackEndpoint("$upstream", last); err != nil {
		t.Fatal(err)
	}
	// At least three quarters of the acked bytes must leave the disk; what
	// stays is the WAL and Pebble's fixed overhead, whose size varies with
	// when the memtable last flushed.
	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if u := s.Usage().DiskBytes; u > peak-n*size*3/4 {
			return fmt.Errorf("disk usage %d, peak %d: not reclaimed", u, peak)
		}
		return nil
	})
	t.Logf("disk usage %d after ack, peak %d", s.Usage().DiskBytes, peak)
}

func TestCrashRecovery(t *testing.T) {
	tests := []struct {
		name  string
		drain bool // ack everything before the crash
	}{
		{name: "acked messages survive"},
		{name: "drained queue does not reuse seqs", drain: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fs := openMem(t, Config{})
			const n = 300
			var mu sync.Mutex
			acked := map[uint64]int{}
			var wg sync.WaitGroup
			wg.Add(n)
			for i := range n {
				err := s.appendAsync([]Record{{Endpoint: "$upstream", Msg: msg("d", i)}}, func(seqs []uint64, err error) {
					defer wg.Done()
					if err == nil {
						mu.Lock()
						acked[seqs[0]] = i
						mu.Unlock()
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			wg.Wait()
			var maxSeq uint64
			for seq := range acked {
				maxSeq = max(maxSeq, seq)
			}
			if tt.drain {
				if err := s.ackEndpoint("$upstream", maxSeq); err != nil {
					t.Fatal(err)
				}
				// Acks are not synced; a synced commit after them makes
				// them durable.
				if err := s.Put([]byte("sync"), nil); err != nil {
					t.Fatal(err)
				}
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{})
			s.Close()

			s2, err := Open(Config{Dir: "edge", FS: crashed})
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			got := readAll(t, s2, "$upstream")
			if tt.drain {
				if len(got) != 0 {
					t.Fatalf("%d entries after drain", len(got))
				}
			} else {
				if len(got) != len(acked) {
					t.Fatalf("recovered %d of %d acked", len(got), len(acked))
				}
				for i, e := range got {
					if want, ok := acked[e.Seq]; !ok || e.Msg.Properties["n"] != strconv.Itoa(want) || want != i {
						t.Fatalf("entry %d: seq %d n %s, acked as %d", i, e.Seq, e.Msg.Properties["n"], want)
					}
				}
				if st := s2.Stats()["$upstream"]; st.Len != n || st.Bytes <= 0 || st.Oldest.IsZero() {
					t.Fatalf("recovered stats %+v", st)
				}
			}
			seq := mustAppend(t, s2, "$upstream", msg("d", n))
			if seq <= maxSeq {
				t.Fatalf("new seq %d reuses acked seqs (max %d)", seq, maxSeq)
			}
		})
	}
}

func TestRestartRecoversStats(t *testing.T) {
	fs := vfs.NewMem()
	clock := newFakeClock()
	s, err := Open(Config{Dir: "edge", FS: fs, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := range 6 {
		seqs = append(seqs, mustAppend(t, s, "a", msg("d", i)))
		mustAppend(t, s, "b", msg("d", i))
		clock.Advance(time.Second)
	}
	if err := s.ackEndpoint("a", seqs[2]); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Config{Dir: "edge", FS: fs, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	after := s.Stats()
	for _, ep := range []string{"a", "b"} {
		t.Run(ep, func(t *testing.T) {
			b, a := before[ep], after[ep]
			if a.Len != b.Len || a.Bytes != b.Bytes || !a.Oldest.Equal(b.Oldest) || a.Priority != b.Priority {
				t.Fatalf("after restart %+v, before %+v", a, b)
			}
		})
	}
	if got := after["a"].Oldest; !got.Equal(clock.Now().Add(-3 * time.Second)) {
		t.Fatalf("oldest of a = %v", got)
	}
}

func TestNextBlocks(t *testing.T) {
	s, _ := openMem(t, Config{})
	r, err := s.NewReader("$upstream")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("until append", func(t *testing.T) {
		got := make(chan []Entry, 1)
		go func() {
			es, err := r.Next(context.Background(), 10)
			if err != nil {
				t.Error(err)
			}
			got <- es
		}()
		mustAppend(t, s, "$upstream", msg("d", 1))
		select {
		case es := <-got:
			if len(es) != 1 {
				t.Fatalf("got %d entries", len(es))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Next did not return after append")
		}
	})
	t.Run("until ctx done", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := r.Next(ctx, 10); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("until close", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() {
			_, err := r.Next(context.Background(), 10)
			errc <- err
		}()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("err = %v, want ErrClosed", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second close: %v", err)
		}
		if _, err := s.appendOne(context.Background(), "$upstream", msg("d", 2)); !errors.Is(err, ErrClosed) {
			t.Fatalf("append after close: %v", err)
		}
	})
}

func TestNextByPriority(t *testing.T) {
	s, _ := openMem(t, Config{})
	if err := s.SetEndpoint("live", EndpointConfig{Priority: 0}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetEndpoint("backlog", EndpointConfig{Priority: 5}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		mustAppend(t, s, "backlog", msg("d", i))
	}
	mustAppend(t, s, "live", msg("d", 100))
	var readers []*Reader
	for _, ep := range []string{"backlog", "live"} {
		r, err := s.NewReader(ep)
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, r)
	}
	if st := s.Stats(); st["live"].Priority != 0 || st["live"].Len != 1 || st["backlog"].Priority != 5 || st["backlog"].Len != 3 {
		t.Fatalf("stats = %+v", st)
	}
	var order []string
	for range 3 {
		es, err := s.NextByPriority(context.Background(), readers, 2)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, fmt.Sprintf("%s:%d", es[0].Endpoint, len(es)))
	}
	if want := "live:1 backlog:2 backlog:1"; strings.Join(order, " ") != want {
		t.Fatalf("order %v, want %s", order, want)
	}
}

func TestAckSeqs(t *testing.T) {
	s, _ := openMem(t, Config{})
	var seqs []uint64
	for i := range 5 {
		seqs = append(seqs, mustAppend(t, s, "/modules/m/inputs/i", msg("d", i)))
	}
	if err := s.ackSeqs("/modules/m/inputs/i", seqs[3], seqs[0], seqs[0], 999999); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, s, "/modules/m/inputs/i")
	var ns []string
	for _, e := range got {
		ns = append(ns, e.Msg.Properties["n"])
	}
	if strings.Join(ns, ",") != "1,2,4" {
		t.Fatalf("left %v", ns)
	}
	if st := s.Stats()["/modules/m/inputs/i"]; st.Forwarded != 2 || st.Len != 3 {
		t.Fatalf("stats %+v", st)
	}
	if err := s.ackSeqs("nope", 1); err == nil {
		t.Fatal("ack of unknown endpoint accepted")
	}
}

func TestKV(t *testing.T) {
	s, _ := openMem(t, Config{})
	put := map[string]string{"id/a": "1", "id/b": "2", "twin/a": "3"}
	for k, v := range put {
		if err := s.Put([]byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	mustAppend(t, s, "$upstream", msg("d", 1))
	tests := []struct {
		prefix string
		want   string
	}{
		{"id/", "id/a=1 id/b=2"},
		{"twin/", "twin/a=3"},
		{"", "id/a=1 id/b=2 twin/a=3"},
		{"zz", ""},
	}
	for _, tt := range tests {
		t.Run("scan "+tt.prefix, func(t *testing.T) {
			var got []string
			err := s.Scan([]byte(tt.prefix), func(k, v []byte) error {
				got = append(got, string(k)+"="+string(v))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, " ") != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("get delete", func(t *testing.T) {
		v, err := s.Get([]byte("id/a"))
		if err != nil || string(v) != "1" {
			t.Fatalf("get = %q, %v", v, err)
		}
		if err := s.Delete([]byte("id/a")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get([]byte("id/a")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("get after delete: %v", err)
		}
	})
}

func TestOpenRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no dir", Config{FS: vfs.NewMem()}},
		{"negative quota", Config{Dir: "x", FS: vfs.NewMem(), MaxBytes: -1}},
		{"ttl too long", Config{Dir: "x", FS: vfs.NewMem(), DefaultTTL: MaxTTL + time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := Open(tt.cfg); err == nil {
				s.Close()
				t.Fatal("opened")
			}
		})
	}
}

// TestAckPastDeletedHead checks that acks, out-of-order acks and expiry,
// which start past the deleted head of the queue, count every deleted
// entry exactly once, that a rewound reader starts at the first live
// entry, and that a restart finds the same queue.
func TestAckPastDeletedHead(t *testing.T) {
	fs := vfs.NewMem()
	clock := newFakeClock()
	s, err := Open(Config{Dir: "edge", FS: fs, Now: clock.Now, DefaultTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := range 40 {
		seqs = append(seqs, mustAppend(t, s, "a", msg("d", i)))
	}
	r, err := s.NewReader("a")
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		do   func() error
		len  int64
		head uint64 // first seq a rewound reader returns
	}{
		{"ack 10", func() error { return s.ackEndpoint("a", seqs[9]) }, 30, seqs[10]},
		{"ack again", func() error { return s.ackEndpoint("a", seqs[9]) }, 30, seqs[10]},
		{"ack below head", func() error { return s.ackEndpoint("a", seqs[3]) }, 30, seqs[10]},
		{"ack seqs past head", func() error { return s.ackSeqs("a", seqs[12], seqs[14]) }, 28, seqs[10]},
		{"ack over holes", func() error { return s.ackEndpoint("a", seqs[15]) }, 24, seqs[16]},
		{"ack beyond the last", func() error { return s.ackEndpoint("a", seqs[39]+100) }, 0, 0},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := st.do(); err != nil {
				t.Fatal(err)
			}
			stats := s.Stats()["a"]
			if stats.Len != st.len {
				t.Fatalf("len %d, want %d", stats.Len, st.len)
			}
			r.Rewind()
			es, err := r.tryNext(1)
			if err != nil {
				t.Fatal(err)
			}
			if st.len == 0 {
				if len(es) != 0 || stats.Bytes != 0 {
					t.Fatalf("empty queue: read %d, bytes %d", len(es), stats.Bytes)
				}
				return
			}
			if len(es) != 1 || es[0].Seq != st.head {
				t.Fatalf("rewound reader read %v, want seq %d", es, st.head)
			}
		})
	}
	// A new entry after the queue emptied past a high ack is kept.
	late := mustAppend(t, s, "a", msg("d", 99))
	clock.Advance(2 * time.Hour)
	fresh := mustAppend(t, s, "a", msg("d", 100))
	if n, err := s.expire(); err != nil || n != 1 {
		t.Fatalf("expire: %d, %v", n, err)
	}
	before := s.Stats()["a"]
	if before.Len != 1 || before.Forwarded != 40 || before.Expired != 1 {
		t.Fatalf("stats %+v", before)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Config{Dir: "edge", FS: fs, Now: clock.Now, DefaultTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	after := s.Stats()["a"]
	if after.Len != before.Len || after.Bytes != before.Bytes {
		t.Fatalf("after restart %+v, before %+v", after, before)
	}
	if es := readAll(t, s, "a"); len(es) != 1 || es[0].Seq != fresh || late >= fresh {
		t.Fatalf("after restart read %v, want seq %d", es, fresh)
	}
}

func TestReclaimThreshold(t *testing.T) {
	tests := []struct {
		name          string
		reclaim, live int64
		want          int64
	}{
		{"short queue: ReclaimBytes", 4 << 20, 1 << 20, 4 << 20},
		{"empty queue: ReclaimBytes", 4 << 20, 0, 4 << 20},
		{"long queue: a quarter of it", 4 << 20, 400 << 20, 100 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Store{cfg: Config{ReclaimBytes: tt.reclaim}, bytes: tt.live}
			if got := s.reclaimThresholdLocked(); got != tt.want {
				t.Fatalf("threshold %d, want %d", got, tt.want)
			}
		})
	}
}

// While a long queue drains, acks below a quarter of what is still queued
// do not ask for a reclaim before the tick; past it they do.
func TestReclaimWaitsForShareOfQueue(t *testing.T) {
	s, _ := openMem(t, Config{ReclaimBytes: 1, ExpiryInterval: time.Hour})
	// Stop the maintenance loop, so a kick stays in its channel to be seen.
	s.cancel()
	<-s.maintained
	recs := make([]Record, 100)
	for i := range recs {
		recs[i] = Record{Endpoint: "$upstream", Msg: msg("d", i)}
	}
	seqs, err := s.AppendRecords(context.Background(), recs)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		ack    int // acked up to seqs[ack]
		kicked int
	}{
		{9, 0},  // 10 % of the bytes deleted, a ninth of the 90 % left
		{59, 1}, // 60 %, more than a quarter of the 40 % left
	} {
		if err := s.ackEndpoint("$upstream", seqs[step.ack]); err != nil {
			t.Fatal(err)
		}
		if got := len(s.kick); got != step.kicked {
			t.Fatalf("acked to entry %d: %d kicks pending, want %d", step.ack, got, step.kicked)
		}
	}
}

// A store keeps its id across reopens and power cuts, a new store in a
// wiped folder gets another, and AdvanceSeq moves the next sequence on
// (never back), recorded by the next commit.
func TestStoreIDAndAdvance(t *testing.T) {
	s, fs := openMem(t, Config{})
	id := s.ID()
	if len(id) != 32 {
		t.Fatalf("store id %q; want 32 hex digits", id)
	}
	mustAppend(t, s, "ep", msg("d", 1))
	s.AdvanceSeq(1000)
	s.AdvanceSeq(10) // never back
	if n := s.NextSeq(); n != 1000 {
		t.Fatalf("next sequence %d after AdvanceSeq(1000); want 1000", n)
	}
	if seq := mustAppend(t, s, "ep", msg("d", 2)); seq != 1000 {
		t.Fatalf("appended at %d; want 1000", seq)
	}

	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	s2, err := Open(Config{Dir: "edge", FS: crashed, MinFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.ID() != id {
		t.Errorf("after a power cut the id is %s; want %s kept", s2.ID(), id)
	}
	if n := s2.NextSeq(); n != 1001 {
		t.Errorf("after a power cut the next sequence is %d; want 1001", n)
	}

	wiped, err := Open(Config{Dir: "other", FS: crashed, MinFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer wiped.Close()
	if wiped.ID() == id || len(wiped.ID()) != 32 {
		t.Errorf("a new store's id %q; want a new one, not %s", wiped.ID(), id)
	}
}
