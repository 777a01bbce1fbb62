package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"outpost/internal/clocktest"
	"outpost/internal/disktest"
	"outpost/internal/message"
	"outpost/internal/soak"
)

// The power-cut test runs a seeded, randomized workload on Pebble's
// crashable in-memory file system (which knows what was synced) and
// takes crash clones at chosen moments: before a WAL sync, right after an
// append was acknowledged, during a reclaim compaction, during TTL
// expiry deletions, during a KV (twin cache) write, and at any other file
// operation. A clone keeps what was synced and a random share of what was
// not. Each clone is reopened as a new store and checked:
//
//   - it opens, and nothing panics;
//   - every append acknowledged before the crash, not acked away by a
//     reader and not expired, is there, under its sequence (0 acked lost);
//   - every entry there is byte for byte one that was appended, and each
//     writer's entries are in the order it appended them (nothing wrong,
//     nothing reordered);
//   - no entry is expired at the crash's time (0 expired forwarded);
//   - the next sequence is past every acknowledged one;
//   - every KV write acknowledged is there, or a later one.

const pcTTL = 2 * time.Hour

// crash kinds: where a crash point was taken.
const (
	atWALSync = "before a WAL sync"
	atAcked   = "right after an append was acknowledged"
	atReclaim = "during a reclaim compaction"
	atExpiry  = "during TTL expiry deletions"
	atKV      = "during a KV (twin) write"
	atOther   = "at another file operation"
)

var crashKinds = []string{atWALSync, atAcked, atReclaim, atExpiry, atKV, atOther}

// pcEntry is an append the workload made.
type pcEntry struct {
	writer, n int
	endpoint  string
	expires   time.Time
	body      []byte
}

func pcBody(writer, n, size int) []byte {
	prefix := fmt.Sprintf("w%d-%d:", writer, n)
	b := []byte(strings.Repeat(prefix, size/len(prefix)+1))
	return b[:max(size, len(prefix))]
}

// pcState is what the workload knows; crash points copy it.
type pcState struct {
	mu sync.Mutex
	// mu guards the following fields.
	attempted map[string]*pcEntry // by "writer/n"
	acked     map[uint64]*pcEntry // by sequence
	ackedUpTo map[string]uint64   // per endpoint: entries up to it may be gone
	kvAcked   map[string]int      // key -> last version acknowledged
	kvTried   map[string]int      // key -> last version attempted
}

// pcCrash is one crash point to verify.
type pcCrash struct {
	n         int
	kind      string
	fs        *vfs.MemFS
	now       time.Time
	acked     map[uint64]*pcEntry
	ackedUpTo map[string]uint64
	kvAcked   map[string]int
	kvTried   map[string]int
}

// pcRun is one store under the workload.
type pcRun struct {
	t     *testing.T
	rng   *rand.Rand // the driver's; writers have their own
	mem   *vfs.MemFS
	s     *Store
	clock *clocktest.Clock
	// clockMu: writers hold it for reading across appendAsync, so the
	// stored time the store takes is the one they record; the driver
	// holds it to move the clock.
	clockMu sync.RWMutex
	st      pcState

	// What the workload is doing, for the crash kinds.
	reclaiming, expiring, kvWriting atomic.Int32
	armed                           atomic.Bool // the store is open

	// tokens paces the writers: the driver hands out a few appends per
	// step, so the data grows with the steps, not with the CPU.
	tokens chan struct{}

	crashMu   sync.Mutex
	crashRNG  *rand.Rand // under crashMu
	quota     map[string]int
	taken     map[string]int
	crashes   chan pcCrash
	nCrashes  *atomic.Int64
	crashDone atomic.Bool
}

func (r *pcRun) wantCrash(kind string, p float64) bool {
	// Caller holds crashMu.
	if r.taken[kind] >= r.quota[kind] {
		return false
	}
	return r.crashRNG.Float64() < p
}

// maybeCrash takes a crash point of kind with probability p while the
// kind's quota lasts.
func (r *pcRun) maybeCrash(kind string, p float64) {
	r.crashMu.Lock()
	defer r.crashMu.Unlock()
	if !r.wantCrash(kind, p) {
		return
	}
	r.taken[kind]++
	// Acked before the clone is durable in it; deletions and KV writes
	// started before it may be in it, so those are read after.
	r.st.mu.Lock()
	acked := make(map[uint64]*pcEntry, len(r.st.acked))
	for k, v := range r.st.acked {
		acked[k] = v
	}
	kvAcked := make(map[string]int, len(r.st.kvAcked))
	for k, v := range r.st.kvAcked {
		kvAcked[k] = v
	}
	r.st.mu.Unlock()
	pct := []int{0, 0, 30, 70, 100}[r.crashRNG.IntN(5)]
	clone := r.mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(r.crashRNG.Uint64(), 1))})
	now := r.clock.Now()
	r.st.mu.Lock()
	upTo := make(map[string]uint64, len(r.st.ackedUpTo))
	for k, v := range r.st.ackedUpTo {
		upTo[k] = v
	}
	kvTried := make(map[string]int, len(r.st.kvTried))
	for k, v := range r.st.kvTried {
		kvTried[k] = v
	}
	r.st.mu.Unlock()
	r.crashes <- pcCrash{n: int(r.nCrashes.Add(1)), kind: kind, fs: clone, now: now, acked: acked, ackedUpTo: upTo, kvAcked: kvAcked, kvTried: kvTried}
	done := true
	for _, k := range crashKinds {
		done = done && r.taken[k] >= r.quota[k]
	}
	r.crashDone.Store(done)
}

// inject is the file system hook: every file operation may be a crash
// point.
func (r *pcRun) inject(op errorfs.Op) error {
	if !r.armed.Load() {
		return nil // still opening
	}
	isWAL := strings.HasSuffix(op.Path, ".log")
	switch {
	case isWAL && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData):
		r.maybeCrash(atWALSync, 0.2)
	case r.reclaiming.Load() > 0:
		r.maybeCrash(atReclaim, 0.1)
	case r.expiring.Load() > 0:
		r.maybeCrash(atExpiry, 0.2)
	case r.kvWriting.Load() > 0:
		r.maybeCrash(atKV, 0.2)
	case op.Kind.ReadOrWrite() == errorfs.OpIsWrite:
		r.maybeCrash(atOther, 0.02)
	}
	return nil
}

var pcEndpoints = []string{"$upstream", "/modules/m/inputs/i"}

// writer appends numbered messages, a few in flight at once.
func (r *pcRun) writer(ctx context.Context, id int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, uint64(id)))
	inflight := make(chan struct{}, 4)
	for n := 1; ctx.Err() == nil; n++ {
		select {
		case <-r.tokens:
		case <-ctx.Done():
			return
		}
		select {
		case inflight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		ep := pcEndpoints[rng.IntN(len(pcEndpoints))]
		var ttl time.Duration
		if rng.IntN(3) == 0 {
			ttl = time.Duration(1+rng.IntN(180)) * time.Minute
		}
		e := &pcEntry{writer: id, n: n, endpoint: ep, body: pcBody(id, n, 20+rng.IntN(400))}
		m := &message.Message{DeviceID: "w" + strconv.Itoa(id), Body: e.body, Properties: map[string]string{"n": strconv.Itoa(n)}}
		r.clockMu.RLock()
		at := r.clock.Now()
		e.expires = at.Add(pcTTL)
		if ttl != 0 {
			e.expires = at.Add(ttl)
		}
		r.st.mu.Lock()
		r.st.attempted[pcKey(id, n)] = e
		r.st.mu.Unlock()
		err := r.s.appendAsync([]Record{{Endpoint: ep, Msg: m, TTL: ttl}}, func(seqs []uint64, err error) {
			<-inflight
			if err != nil {
				r.t.Errorf("append w%d/%d: %v", id, n, err)
				return
			}
			r.st.mu.Lock()
			r.st.acked[seqs[0]] = e
			r.st.mu.Unlock()
			r.maybeCrash(atAcked, 0.01)
		})
		r.clockMu.RUnlock()
		if err != nil {
			<-inflight
			if ctx.Err() == nil {
				r.t.Errorf("append w%d/%d: %v", id, n, err)
			}
			return
		}
	}
	for range cap(inflight) {
		inflight <- struct{}{} // wait for the callbacks
	}
}

func pcKey(writer, n int) string { return strconv.Itoa(writer) + "/" + strconv.Itoa(n) }

// step is one random action of the driver.
func (r *pcRun) step(ctx context.Context, readers map[string]*Reader, kvVersion map[string]int) {
	for range r.rng.IntN(8) {
		select {
		case r.tokens <- struct{}{}:
		case <-ctx.Done():
			return
		}
	}
	switch k := r.rng.IntN(10); {
	case k < 5: // a reader forwards some and acks them
		ep := pcEndpoints[r.rng.IntN(len(pcEndpoints))]
		es, err := readers[ep].tryNext(1 + r.rng.IntN(50))
		if err != nil {
			r.t.Errorf("read: %v", err)
			return
		}
		if len(es) == 0 {
			return
		}
		last := es[len(es)-1].Seq
		r.st.mu.Lock()
		r.st.ackedUpTo[ep] = max(r.st.ackedUpTo[ep], last)
		r.st.mu.Unlock()
		if err := readers[ep].Ack(last); err != nil {
			r.t.Errorf("ack: %v", err)
		}
	case k < 7: // time passes; the expiry loop deletes expired heads
		r.clockMu.Lock()
		r.clock.Advance(time.Duration(1+r.rng.IntN(40)) * time.Minute)
		r.clockMu.Unlock()
		r.expiring.Add(1)
		if _, err := r.s.expire(); err != nil {
			r.t.Errorf("expire: %v", err)
		}
		r.expiring.Add(-1)
	case k < 9: // a twin cache write
		key := "twin/d" + strconv.Itoa(r.rng.IntN(4))
		kvVersion[key]++
		v := kvVersion[key]
		r.st.mu.Lock()
		r.st.kvTried[key] = v
		r.st.mu.Unlock()
		r.kvWriting.Add(1)
		err := r.s.Put([]byte(key), pcKVValue(key, v))
		r.kvWriting.Add(-1)
		if err != nil {
			r.t.Errorf("put: %v", err)
			return
		}
		r.st.mu.Lock()
		r.st.kvAcked[key] = v
		r.st.mu.Unlock()
	default: // a reclaim, as the maintenance loop kicks one
		r.reclaiming.Add(1)
		if err := r.s.reclaim(ctx); err != nil {
			r.t.Errorf("reclaim: %v", err)
		}
		r.reclaiming.Add(-1)
	}
}

func pcKVValue(key string, v int) []byte {
	return []byte(strings.Repeat(fmt.Sprintf("%s@%d;", key, v), 20))
}

// verify reopens a crash clone and checks it.
func verifyCrash(t *testing.T, c pcCrash, attempted map[string]*pcEntry) {
	fail := func(format string, args ...any) {
		t.Errorf("crash point %d (%s): %s", c.n, c.kind, fmt.Sprintf(format, args...))
	}
	s, err := Open(Config{Dir: "edge", FS: c.fs, Now: func() time.Time { return c.now }, DefaultTTL: pcTTL, MinFreeBytes: -1, ExpiryInterval: time.Hour})
	if err != nil {
		fail("reopen: %v", err)
		return
	}
	defer s.Close()
	if err := s.checkCounters(); err != nil {
		fail("%v", err)
	}
	present := map[uint64]bool{}
	var maxSeq uint64
	for _, ep := range pcEndpoints {
		r, err := s.NewReader(ep)
		if err != nil {
			fail("reader: %v", err)
			return
		}
		lastN := map[string]int{}
		var lastSeq uint64
		for {
			es, err := r.tryNext(500)
			if err != nil {
				fail("read %s: %v", ep, err)
				return
			}
			if len(es) == 0 {
				break
			}
			for _, e := range es {
				present[e.Seq] = true
				maxSeq = max(maxSeq, e.Seq)
				n, _ := strconv.Atoi(e.Msg.Properties["n"])
				w, _ := strconv.Atoi(strings.TrimPrefix(e.Msg.DeviceID, "w"))
				want := attempted[pcKey(w, n)]
				switch {
				case want == nil || want.endpoint != ep || string(want.body) != string(e.Msg.Body):
					fail("seq %d in %s is not a message that was appended there: %s/%q", e.Seq, ep, e.Msg.DeviceID, e.Msg.Body)
				case !e.ExpiresAt.After(c.now) || !e.ExpiresAt.Equal(want.expires):
					fail("seq %d returned though expired, or with the wrong expiry: %v at %v, appended to expire %v", e.Seq, e.ExpiresAt, c.now, want.expires)
				case e.Seq <= lastSeq || n <= lastN[e.Msg.DeviceID]:
					fail("seq %d (%s #%d) after seq %d (#%d): reordered", e.Seq, e.Msg.DeviceID, n, lastSeq, lastN[e.Msg.DeviceID])
				}
				lastSeq, lastN[e.Msg.DeviceID] = e.Seq, n
			}
		}
	}
	var lost []string
	for seq, e := range c.acked {
		maxSeq = max(maxSeq, seq)
		if present[seq] || seq <= c.ackedUpTo[e.endpoint] || !e.expires.After(c.now) {
			continue
		}
		lost = append(lost, fmt.Sprintf("seq %d (w%d #%d)", seq, e.writer, e.n))
	}
	if len(lost) > 0 {
		sort.Strings(lost)
		fail("%d acked appends lost, e.g. %v", len(lost), lost[:min(len(lost), 5)])
	}
	if next := s.NextSeq(); next <= maxSeq {
		fail("next sequence %d reuses acked sequence %d", next, maxSeq)
	}
	for key, tried := range c.kvTried {
		v, err := s.Get([]byte(key))
		acked := c.kvAcked[key]
		if err != nil {
			if acked > 0 || !errors.Is(err, ErrNotFound) {
				fail("KV %s: %v (version %d was acknowledged)", key, err, acked)
			}
			continue
		}
		ok := false
		for ver := max(acked, 1); ver <= tried; ver++ {
			ok = ok || string(v) == string(pcKVValue(key, ver))
		}
		if !ok {
			fail("KV %s holds %.40q; want a version from %d to %d", key, v, acked, tried)
		}
	}
}

func TestPowerCut(t *testing.T) {
	// Crash points of each kind, spread over the seeds' workloads.
	perKind := soak.N(8, 500)
	seeds := soak.N(2, 20)
	maxSteps := soak.N(5000, 50000)
	var nCrashes, verifyTime atomic.Int64
	taken := map[string]int{}
	start := time.Now()
	for seed := range uint64(seeds) {
		t.Run("seed "+strconv.FormatUint(seed, 10), func(t *testing.T) {
			r := &pcRun{
				t:        t,
				rng:      rand.New(rand.NewPCG(seed, 0)),
				crashRNG: rand.New(rand.NewPCG(seed, 1)),
				clock:    newFakeClock(),
				quota:    map[string]int{},
				taken:    map[string]int{},
				crashes:  make(chan pcCrash, 4),
				tokens:   make(chan struct{}, 16),
				nCrashes: &nCrashes,
				st: pcState{
					attempted: map[string]*pcEntry{},
					acked:     map[uint64]*pcEntry{},
					ackedUpTo: map[string]uint64{},
					kvAcked:   map[string]int{},
					kvTried:   map[string]int{},
				},
			}
			for _, k := range crashKinds {
				// This seed's share, and what earlier ones missed.
				r.quota[k] = max(perKind*(int(seed)+1)/seeds-taken[k], 0)
			}
			r.mem = vfs.NewCrashableMem()
			s, err := Open(Config{
				Dir: "edge", FS: disktest.Faults(r.mem, errorfs.InjectorFunc(r.inject)),
				Now: r.clock.Now, DefaultTTL: pcTTL, MinFreeBytes: -1, ExpiryInterval: time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			// The driver expires and reclaims, so that it knows when.
			s.cancel()
			<-s.maintained
			r.s = s
			r.armed.Store(true)

			verified := make(chan struct{})
			go func() {
				defer close(verified)
				for c := range r.crashes {
					r.st.mu.Lock()
					attempted := make(map[string]*pcEntry, len(r.st.attempted))
					for k, v := range r.st.attempted {
						attempted[k] = v
					}
					r.st.mu.Unlock()
					t0 := time.Now()
					verifyCrash(t, c, attempted)
					verifyTime.Add(int64(time.Since(t0)))
				}
			}()

			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for w := range 3 {
				wg.Go(func() { r.writer(ctx, w, seed) })
			}
			readers := map[string]*Reader{}
			for _, ep := range pcEndpoints {
				if readers[ep], err = s.NewReader(ep); err != nil {
					t.Fatal(err)
				}
			}
			kvVersion := map[string]int{}
			steps := 0
			for ; steps < maxSteps && !r.crashDone.Load() && !t.Failed(); steps++ {
				r.step(ctx, readers, kvVersion)
			}
			cancel()
			wg.Wait()
			if err := s.Close(); err != nil {
				t.Error(err)
			}
			r.crashMu.Lock()
			close(r.crashes)
			for k, n := range r.taken {
				taken[k] += n
			}
			r.crashMu.Unlock()
			<-verified
			r.st.mu.Lock()
			t.Logf("%d steps, %d appends acknowledged, crash points %v", steps, len(r.st.acked), r.taken)
			r.st.mu.Unlock()
		})
	}
	t.Logf("%d crash points in %v (verifying %v): %v", nCrashes.Load(), time.Since(start).Round(time.Millisecond), time.Duration(verifyTime.Load()).Round(time.Millisecond), taken)
	for _, k := range crashKinds {
		if taken[k] < perKind {
			t.Errorf("%d crash points %s, want %d", taken[k], k, perKind)
		}
	}
}
