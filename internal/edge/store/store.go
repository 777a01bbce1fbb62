// Package store holds the edge's durable store-and-forward queues and its
// small key-value caches, in one Pebble database under the storage folder.
//
// Durability: an append is acknowledged only after the Pebble batch holding
// it was committed with pebble.Sync. One committer goroutine takes every
// append queued since its previous commit, writes them as one batch and
// syncs once, so concurrent appenders, and one appender with many messages
// in flight, share fsyncs (application-level group commit).
//
// Keys, big-endian so that byte order is numeric order:
//
//	'q' endpoint-id:4 seq:8   a queued message
//	'm' 0 "seq" | 0 "ttl"     sequence high-water mark, store TTL
//	'm' 0 "now"               the latest time the store's clock showed
//	'm' 0 "sid"               the store's id
//	'm' 1 endpoint-name       endpoint id, priority and TTL
//	'm' 2|3 endpoint-id:4     entries committed to and deleted from a queue
//	'm' 0 "ctr"               the store keeps those counters (counters.go)
//	'k' key                   the KV API (identity, twin and settings caches)
//
// Sequences are per store, never reused (the high-water mark is written
// in every commit), and assigned in append order, so each endpoint is a FIFO
// in stored order and Entry.Seq can identify a message to the hub.
//
// Each store has an id, random and made when the store is created (ID).
// A wiped storage folder therefore makes a new store with a new id, so
// its sequences, which start at 1 again, are never taken for those of
// the old one. A copy of the folder (a backup restored, a disk cloned)
// keeps the id and its high-water mark: AdvanceSeq moves it past the
// sequences the hub has seen from the store, and Entry.StoredAt tells
// apart the entries a copy and its original both numbered alike.
//
// TTL: an entry expires at storedAt + TTL, where TTL is the explicit
// per-message TTL a route gave (Record.TTL), else the endpoint's TTL, else
// the store's TTL, the last two as in force when the entry is read. So a
// TTL change from the $edgeHub twin applies to messages already stored, as
// the operator expects. Expired entries are never returned; readers delete
// those they pass and a background loop deletes expired heads of queues.
//
// The store's clock (Config.Now) never runs back: a clock set back (a
// device that boots with a stale time, then syncs it) leaves the store
// at the latest time it showed, recorded in every commit, until the clock
// passes it again. So an entry once expired stays expired, and entries
// stored while the clock was behind are stamped no earlier than those
// before them, and do not expire early once the clock is corrected.
//
// Acks and expiry deletions are committed without sync: losing one in a
// power cut means a redelivery (delivery is at-least-once), never a loss.
//
// A failed write (a full disk) makes Pebble's commit pipeline unusable.
// The store then refuses writes, and reopens its database by itself as
// soon as the disk has room again (see heal.go), so intake resumes
// without a restart.
//
// Lock order: closeMu, then endpoint.delMu, then metaMu, then mu.
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/edgeproto"
	"outpost/internal/message"
)

const (
	// DefaultTTL is IoT Edge's default store-and-forward time to live.
	DefaultTTL = 7200 * time.Second
	// MaxTTL is the largest TTL IoT Edge accepts (int32 seconds).
	MaxTTL = math.MaxInt32 * time.Second
	// MaxPriority is the lowest route priority; 0 is the highest, as in
	// IoT Edge routes.
	MaxPriority = 9
	// DefaultPriority is the priority of an endpoint nobody configured.
	DefaultPriority = MaxPriority

	maxEndpointName = 1024
	maxBatchBytes   = 1 << 20
)

var (
	// ErrClosed is returned by every call on a closed store.
	ErrClosed = errors.New("store closed")
	// ErrTooLarge refuses a message over message.MaxSize. Retrying cannot help.
	ErrTooLarge = errors.New("message larger than 256 KiB")
	// ErrQuotaExceeded matches (errors.Is) the error an append returns
	// when it would take the store over Config.MaxBytes; that error's text
	// names the quota. Retrying helps once acks or expiry free space.
	ErrQuotaExceeded = errors.New("storage quota reached")
	// ErrDiskFull is returned (wrapped) when the storage folder's file
	// system is full or below Config.MinFreeBytes.
	ErrDiskFull = errors.New("storage folder is out of disk space")
	// ErrNotFound is returned by Get for a missing key.
	ErrNotFound = errors.New("key not found")
	// ErrCorrupt is returned (wrapped) when the store's files are
	// damaged: a checksum mismatch, a damaged log or table, a value that
	// does not decode. Retrying cannot help; the error names the file.
	ErrCorrupt = errors.New("edge store is corrupt")
)

// quotaError names the quota, and matches ErrQuotaExceeded.
type quotaError struct{ max int64 }

func (e *quotaError) Error() string {
	return fmt.Sprintf("storage quota of %d bytes reached", e.max)
}

func (e *quotaError) Is(target error) bool { return target == ErrQuotaExceeded }

// Config configures a Store.
type Config struct {
	// Dir is the storage folder; the database lives in it.
	Dir string
	// FS is the file system; nil means the disk. Tests use
	// vfs.NewCrashableMem to simulate power cuts.
	FS vfs.FS
	// MaxBytes caps the stored messages' logical size (keys and values);
	// 0 means no cap. Pebble's files may exceed it by its write-ahead log,
	// memtable and compaction overhead.
	MaxBytes int64
	// DefaultTTL is the store TTL until SetTTL persists another; 0 means
	// DefaultTTL (7200 s).
	DefaultTTL time.Duration
	// Now is the clock for stored times and expiry; nil means time.Now.
	Now func() time.Time
	// Logger receives store and Pebble logs; nil discards them.
	Logger *slog.Logger
	// ExpiryInterval is how often the background loop deletes expired
	// entries and reclaims space; 0 means 5 s.
	ExpiryInterval time.Duration
	// ReclaimBytes is how many deleted bytes trigger a compaction of the
	// deleted ranges before the next tick, or a quarter of the bytes
	// still queued if that is more; 0 means 4 MiB.
	ReclaimBytes int64
	// MinFreeBytes is the free space the file system must keep: appends
	// that would leave less are refused with ErrDiskFull, so that a full
	// disk rarely reaches Pebble, which cannot go on after a failed
	// write-ahead-log write (the store then reopens it, see heal.go). A
	// failed store also waits for this much free space before reopening.
	// 0 means 64 MiB; negative disables the check. File systems that
	// cannot report free space (in-memory ones) are not checked.
	MinFreeBytes int64
}

// EndpointConfig is what a caller sets for an endpoint.
type EndpointConfig struct {
	// Priority is 0 (highest) to 9 (lowest).
	Priority int
	// TTL overrides the store TTL for this endpoint; 0 means the store's.
	TTL time.Duration
}

// EndpointStats describes one endpoint's queue. Counters count since Open;
// the rest is recovered at Open.
type EndpointStats struct {
	Priority int
	// TTL is the endpoint's TTL in force, its own or the store's.
	TTL   time.Duration
	Len   int64
	Bytes int64
	// Oldest is the stored time of the queue's head; zero when empty.
	Oldest    time.Time
	Stored    uint64
	Forwarded uint64
	Expired   uint64
}

// Usage is the store's overall use.
type Usage struct {
	// Bytes is the logical size of the stored messages, as the quota counts.
	Bytes    int64
	MaxBytes int64
	// DiskBytes is Pebble's own count of its files.
	DiskBytes uint64
	// Commits counts synced append commits since Open.
	Commits uint64
	// Appended counts appended records since Open.
	Appended uint64
	// Reopens counts the times the store reopened its database after a
	// failed write, since Open.
	Reopens uint64
}

type endpoint struct {
	name string
	id   uint32
	// delMu serializes deletions (acks, expiry) so that every deleted
	// entry is counted exactly once.
	delMu sync.Mutex
	// low is a sequence below which every entry of the queue is deleted.
	// Iterators start there rather than at the queue's first possible
	// key: a drained queue's head is a long run of deleted keys, and
	// Pebble steps over each tombstone on every seek into it, so the cost
	// of a seek would grow with everything ever forwarded. It only rises,
	// under delMu, and only past entries that existed and were deleted;
	// commits are in sequence order, so nothing below it can appear later.
	low atomic.Uint64

	// Store.mu guards the following fields.
	priority  int
	ttl       time.Duration
	count     int64
	bytes     int64
	oldest    time.Time
	stored    uint64
	forwarded uint64
	expired   uint64
	// added and removed are the persisted totals (counters.go); added
	// is written by the committer, removed under delMu.
	added, removed tally
	dirty          bool          // deletions not yet reclaimed
	notify         chan struct{} // closed and replaced when entries are committed
}

// Store is the edge's Pebble database. Its methods are safe for
// concurrent use.
type Store struct {
	cfg      Config
	opts     *pebble.Options
	db       *pebble.DB // nil while heal reopens it; guarded by closeMu
	log      *slog.Logger
	errQuota error
	id       string // set by recover, then immutable

	done   chan struct{} // closed by Close, wakes blocked readers
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // asks the maintenance loop to reclaim now
	// healKick asks healLoop to reopen the database after a failed write.
	healKick chan struct{}
	// maintained is closed when the maintenance loop has returned, so a
	// test that stops it can read kick without racing it.
	maintained chan struct{}

	// closeMu is held for reading by every call that uses db (the
	// committer included), and for writing by Close around db.Close and by
	// heal while it reopens db. No call holding it for reading takes it
	// again: a waiting writer would deadlock them.
	closeMu sync.RWMutex
	closed  bool

	// metaMu serializes writes of endpoint metadata and settings.
	metaMu sync.Mutex

	// clockMu guards seen, the latest time now returned; it is taken
	// last, with nothing else taken under it.
	clockMu sync.Mutex
	seen    time.Time

	mu         sync.Mutex
	commitCond *sync.Cond
	// mu guards the following fields.
	endpoints   map[string]*endpoint
	nextID      uint32
	ttl         time.Duration
	nextSeq     uint64
	bytes       int64 // committed
	reserved    int64 // queued for the committer
	pending     []*appendReq
	stopping    bool
	notify      chan struct{} // closed and replaced on every commit
	commits     uint64
	appended    uint64
	unreclaimed int64
	// failed is set when a write failed inside Pebble (see write);
	// Pebble's commit pipeline is unusable after that, so writes are
	// refused until heal has reopened the database.
	failed  error
	reopens uint64

	closeOnce sync.Once
	closeErr  error
}

// Open opens or creates the store in cfg.Dir and recovers its sequence,
// settings and queue statistics.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("open store: no directory")
	}
	if cfg.MaxBytes < 0 {
		return nil, errors.New("open store: negative MaxBytes")
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = DefaultTTL
	}
	if err := checkTTL(cfg.DefaultTTL); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ExpiryInterval <= 0 {
		cfg.ExpiryInterval = 5 * time.Second
	}
	if cfg.ReclaimBytes <= 0 {
		cfg.ReclaimBytes = 4 << 20
	}
	if cfg.MinFreeBytes == 0 {
		cfg.MinFreeBytes = 64 << 20
	}
	if cfg.FS == nil {
		cfg.FS = vfs.Default
	}
	opts := &pebble.Options{
		FS:                 cfg.FS,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleLogger{cfg.Logger},
		EventListener: &pebble.EventListener{
			// Pebble's default calls Fatalf, on whatever goroutine read
			// the damaged block (a reader, a compaction): a bit flip on
			// disk would take the edge down. The read returns the
			// corruption error anyway, so log it and let it.
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				cfg.Logger.Error("store: on-disk corruption", "component", "pebble", "path", info.Path, "err", info.Details)
			},
		},
	}
	db, err := openDB(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &Store{
		cfg:        cfg,
		opts:       opts,
		db:         db,
		log:        cfg.Logger,
		errQuota:   &quotaError{max: cfg.MaxBytes},
		done:       make(chan struct{}),
		kick:       make(chan struct{}, 1),
		healKick:   make(chan struct{}, 1),
		maintained: make(chan struct{}),
		endpoints:  make(map[string]*endpoint),
		nextID:     1,
		ttl:        cfg.DefaultTTL,
		notify:     make(chan struct{}),
	}
	s.commitCond = sync.NewCond(&s.mu)
	if err := s.recover(); err != nil {
		_ = closeDB(db)
		return nil, fmt.Errorf("open store: %w", pebbleErr(err))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(3)
	go s.commitLoop()
	go s.maintain(ctx)
	go s.healLoop(ctx)
	return s, nil
}

// recover loads settings, endpoints and queue statistics (a few keys per
// endpoint; a store without counters yet is scanned once); it runs before
// any goroutine starts.
func (s *Store) recover() error {
	hwm, err := s.readHWM()
	if err != nil {
		return err
	}
	if err := s.recoverID(); err != nil {
		return err
	}
	if v, err := s.get(metaNowKey); err == nil {
		d := decoder{b: v}
		at := d.varint()
		if d.err != nil {
			return fmt.Errorf("read clock: %w", errCorrupt)
		}
		s.seen = time.Unix(0, at)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	if v, err := s.get(metaTTLKey); err == nil {
		d := decoder{b: v}
		ttl := time.Duration(d.varint())
		if d.err != nil || checkTTL(ttl) != nil {
			return fmt.Errorf("read ttl: %w", errCorrupt)
		}
		s.ttl = ttl
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}

	byID := make(map[uint32]*endpoint)
	err = s.scan(metaEndpointPfx, func(k, v []byte) error {
		m, err := decodeEndpointMeta(v)
		if err != nil {
			return fmt.Errorf("read endpoint %q: %w", k[len(metaEndpointPfx):], err)
		}
		ep := &endpoint{name: string(k[len(metaEndpointPfx):]), id: m.id, priority: m.priority, ttl: m.ttl, notify: make(chan struct{})}
		s.endpoints[ep.name] = ep
		byID[ep.id] = ep
		s.nextID = max(s.nextID, m.id+1)
		return nil
	})
	if err != nil {
		return err
	}
	q, ok, err := s.loadCounters(byID)
	if err != nil {
		return err
	}
	if !ok {
		if q, err = s.scanQueues(byID); err != nil {
			return err
		}
		// Without them (a full disk) the store serves all the same, and
		// the next open scans again.
		if err := s.writeCounters(q); err != nil {
			s.log.Warn("store: queue counters not written; the next open reads every entry again", "err", err)
		}
	}
	q.apply(s)
	// Every commit records its last sequence, so hwm is past every entry.
	s.nextSeq = max(hwm, q.maxSeq) + 1
	return nil
}

// readHWM reads the sequence high-water mark.
func (s *Store) readHWM() (uint64, error) {
	v, err := s.get(metaSeqKey)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	d := decoder{b: v}
	hwm := d.uvarint()
	if d.err != nil {
		return 0, fmt.Errorf("read sequence: %w", d.err)
	}
	return hwm, nil
}

// queueState is what scanQueues found of one endpoint's queue.
type queueState struct {
	count, bytes   int64
	oldest         time.Time
	low            uint64
	added, removed tally
}

// queueScan is what scanQueues found of every queue.
type queueScan struct {
	eps    map[*endpoint]*queueState
	bytes  int64
	maxSeq uint64
}

// scanQueues reads every queued entry once, to rebuild the queues'
// statistics. byID must name every endpoint with entries.
func (s *Store) scanQueues(byID map[uint32]*endpoint) (queueScan, error) {
	q := queueScan{eps: make(map[*endpoint]*queueState, len(byID))}
	err := s.scan([]byte{prefixQueue}, func(k, v []byte) error {
		id, seq, ok := parseQueueKey(k)
		if !ok {
			return fmt.Errorf("queue key %x: %w", k, errCorrupt)
		}
		q.maxSeq = max(q.maxSeq, seq)
		ep := byID[id]
		if ep == nil {
			return fmt.Errorf("queue key %x: unknown endpoint %d", k, id)
		}
		st := q.eps[ep]
		if st == nil {
			h, err := decodeHeader(v)
			if err != nil {
				return fmt.Errorf("queue key %x: %w", k, err)
			}
			st = &queueState{oldest: h.storedAt, low: seq}
			q.eps[ep] = st
		}
		st.count++
		st.bytes += int64(len(k) + len(v))
		st.added = st.added.plus(1, int64(len(k)+len(v)))
		q.bytes += int64(len(k) + len(v))
		return nil
	})
	return q, err
}

// apply sets the statistics of every endpoint of s from q. The caller
// holds mu, or runs before any goroutine starts.
func (q queueScan) apply(s *Store) {
	for _, ep := range s.endpoints {
		st := q.eps[ep]
		if st == nil {
			st = &queueState{low: ep.low.Load()}
		}
		ep.count, ep.bytes, ep.oldest = st.count, st.bytes, st.oldest
		ep.added, ep.removed = st.added, st.removed
		ep.low.Store(st.low)
	}
	s.bytes = q.bytes
}

// recoverID reads the store's id, or makes one for a new store (or one
// written before stores had ids) and syncs it before anything is
// appended, so no entry is ever numbered under an id that could change.
func (s *Store) recoverID() error {
	v, err := s.get(metaStoreIDKey)
	if err == nil {
		if !edgeproto.ValidStoreID(string(v)) {
			return fmt.Errorf("read store id: %w", errCorrupt)
		}
		s.id = string(v)
		return nil
	}
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	id := message.NewID()
	if err := s.write(func(db *pebble.DB) error { return db.Set(metaStoreIDKey, []byte(id), pebble.Sync) }); err != nil {
		return fmt.Errorf("write store id: %w", err)
	}
	s.id = id
	return nil
}

// now is the store's clock: Config.Now, but never earlier than a time it
// showed before (see the package comment).
func (s *Store) now() time.Time {
	t := s.cfg.Now().Round(0) // the wall clock: a set-back is what counts
	s.clockMu.Lock()
	defer s.clockMu.Unlock()
	if t.Before(s.seen) {
		return s.seen
	}
	s.seen = t
	return t
}

// seenNanos is the latest time now showed, for the commit to record.
func (s *Store) seenNanos() int64 {
	s.clockMu.Lock()
	defer s.clockMu.Unlock()
	return s.seen.UnixNano()
}

// ID is the store's id: 32 hex digits, made when the store was created
// and kept for its life, so a new store in a wiped folder has another.
func (s *Store) ID() string { return s.id }

// NextSeq is the sequence the next appended entry will get.
func (s *Store) NextSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextSeq
}

// AdvanceSeq makes the next appended entry's sequence at least next. The
// upstream link calls it when the hub has stored sequences of this store
// that it no longer holds: a backup restored, or a copy. It is not synced
// by itself: the next commit's high-water mark records it, and until
// then a restart would only ask the hub again.
func (s *Store) AdvanceSeq(next uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextSeq = max(s.nextSeq, next)
}

// Close waits for queued appends to commit, stops the background loops and
// closes the database. It is safe to call more than once.
func (s *Store) Close() error {
	// A second Close waits for the first and returns its result.
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Store) close() error {
	s.mu.Lock()
	s.stopping = true
	s.commitCond.Broadcast()
	s.mu.Unlock()
	close(s.done)
	s.cancel()
	s.wg.Wait()

	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	s.closed = true
	if s.db == nil {
		return nil // a heal closed it and could not open it again
	}
	if err := closeDB(s.db); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// enter guards a use of db against a concurrent Close; leave ends it.
func (s *Store) enter() error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	if s.db == nil {
		s.closeMu.RUnlock()
		return s.failedErr()
	}
	return nil
}

func (s *Store) leave() { s.closeMu.RUnlock() }

func checkTTL(d time.Duration) error {
	if d <= 0 || d > MaxTTL {
		return fmt.Errorf("ttl %v out of range (0, %v]", d, MaxTTL)
	}
	return nil
}

// SetTTL sets and persists the store TTL, which applies to entries already
// stored whose endpoint and route set none.
func (s *Store) SetTTL(d time.Duration) error {
	if err := checkTTL(d); err != nil {
		return fmt.Errorf("set ttl: %w", err)
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	if err := s.write(func(db *pebble.DB) error { return db.Set(metaTTLKey, binaryVarint(int64(d)), pebble.Sync) }); err != nil {
		return fmt.Errorf("set ttl: %w", err)
	}
	s.mu.Lock()
	s.ttl = d
	s.mu.Unlock()
	return nil
}

// TTL returns the store TTL.
func (s *Store) TTL() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ttl
}

// SetEndpoint sets and persists an endpoint's priority and TTL, creating
// the endpoint if needed.
func (s *Store) SetEndpoint(name string, c EndpointConfig) error {
	if c.Priority < 0 || c.Priority > MaxPriority {
		return fmt.Errorf("set endpoint: priority %d out of range [0, %d]", c.Priority, MaxPriority)
	}
	if c.TTL != 0 {
		if err := checkTTL(c.TTL); err != nil {
			return fmt.Errorf("set endpoint: %w", err)
		}
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if _, err := s.endpointConfigured(name, &c); err != nil {
		return fmt.Errorf("set endpoint: %w", err)
	}
	return nil
}

// endpoint returns the named endpoint, creating it with default settings.
// The caller is inside enter.
func (s *Store) endpoint(name string) (*endpoint, error) {
	s.mu.Lock()
	ep := s.endpoints[name]
	s.mu.Unlock()
	if ep != nil {
		return ep, nil
	}
	return s.endpointConfigured(name, nil)
}

// endpointConfigured creates or updates an endpoint, persisting its
// metadata before anything can be stored under its id.
func (s *Store) endpointConfigured(name string, c *EndpointConfig) (*endpoint, error) {
	if name == "" || len(name) > maxEndpointName {
		return nil, fmt.Errorf("endpoint name must be 1 to %d bytes", maxEndpointName)
	}
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	s.mu.Lock()
	ep := s.endpoints[name]
	m := endpointMeta{id: s.nextID, priority: DefaultPriority}
	if ep != nil {
		m = endpointMeta{id: ep.id, priority: ep.priority, ttl: ep.ttl}
	}
	s.mu.Unlock()
	if ep != nil && c == nil {
		return ep, nil
	}
	if ep == nil && m.id > maxEndpointID {
		return nil, errors.New("too many endpoints")
	}
	if c != nil {
		m.priority, m.ttl = c.Priority, c.TTL
	}
	if err := s.write(func(db *pebble.DB) error {
		return db.Set(endpointMetaKey(name), encodeEndpointMeta(m), pebble.Sync)
	}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ep == nil {
		ep = &endpoint{name: name, id: m.id, notify: make(chan struct{})}
		s.endpoints[name] = ep
		s.nextID++
	}
	ep.priority, ep.ttl = m.priority, m.ttl
	return ep, nil
}

// Stats returns every known endpoint's statistics.
func (s *Store) Stats() map[string]EndpointStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]EndpointStats, len(s.endpoints))
	for name, ep := range s.endpoints {
		out[name] = EndpointStats{
			Priority:  ep.priority,
			TTL:       s.ttlLocked(ep),
			Len:       ep.count,
			Bytes:     ep.bytes,
			Oldest:    ep.oldest,
			Stored:    ep.stored,
			Forwarded: ep.forwarded,
			Expired:   ep.expired,
		}
	}
	return out
}

// Usage returns the store's overall use.
func (s *Store) Usage() Usage {
	var disk uint64
	if s.enter() == nil {
		disk = s.db.Metrics().DiskSpaceUsage()
		s.leave()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return Usage{Bytes: s.bytes, MaxBytes: s.cfg.MaxBytes, DiskBytes: disk, Commits: s.commits, Appended: s.appended, Reopens: s.reopens}
}

func (s *Store) ttlLocked(ep *endpoint) time.Duration {
	if ep.ttl != 0 {
		return ep.ttl
	}
	return s.ttl
}

// get reads a raw key; the caller is inside enter or in Open.
func (s *Store) get(key []byte) ([]byte, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, pebbleErr(err)
	}
	out := append([]byte(nil), v...)
	return out, closer.Close()
}

// scan calls fn for every raw key with prefix; k and v are valid only
// during fn.
func (s *Store) scan(prefix []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return pebbleErr(err)
	}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return pebbleErr(err)
		}
		if err := fn(it.Key(), v); err != nil {
			_ = it.Close()
			return err
		}
	}
	return pebbleErr(it.Close())
}

// prefixEnd returns the smallest key greater than every key with prefix,
// or nil if there is none.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func binaryVarint(x int64) []byte { return binary.AppendVarint(nil, x) }

// pebbleErr makes Pebble's out-of-space errors recognisable as
// ErrDiskFull, and its corruption errors (checksum mismatch, a damaged
// log or table), whose marks errors.Is does not see, as ErrCorrupt.
func pebbleErr(err error) error {
	switch {
	case err == nil || errors.Is(err, ErrDiskFull) || errors.Is(err, ErrCorrupt):
		return err
	case vfs.IsNoSpaceError(err):
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	case pebble.IsCorruptionError(err):
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}

// pebbleLogger routes Pebble's logs to slog. Pebble expects Fatalf not to
// return; it is called only for internal invariant violations.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	f := &pebbleFatal{msg: fmt.Sprintf(format, args...)}
	for _, a := range args {
		if err, ok := a.(error); ok {
			f.err = err
		}
	}
	p.l.Error(f.msg, "component", "pebble")
	panic(f)
}

// pebbleFatal is the panic value of Pebble's Fatalf. write recovers it:
// Pebble calls Fatalf when a WAL or MANIFEST write fails (a full disk),
// and the edge must report that, not crash.
type pebbleFatal struct {
	msg string
	err error
}

func (f *pebbleFatal) Error() string { return f.msg }
func (f *pebbleFatal) Unwrap() error { return f.err }
