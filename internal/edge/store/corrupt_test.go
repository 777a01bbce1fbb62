package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/message"
	"outpost/internal/soak"
)

// corruptBase is a closed store whose older entries are in an sstable and
// newer ones only in the write-ahead log.
type corruptBase struct {
	fs      *vfs.MemFS
	bodies  map[uint64]string // every acked entry
	walSeqs []uint64          // the entries only the WAL holds, in order
	kv      map[string]string
	wal     string // the newest WAL
	sst     string // the newest sstable
}

func newCorruptBase(t *testing.T) corruptBase {
	b := corruptBase{fs: vfs.NewCrashableMem(), bodies: map[uint64]string{}, kv: map[string]string{}}
	s, err := Open(Config{Dir: "edge", FS: b.fs, MinFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	appendSome := func(n, size int) []uint64 {
		var seqs []uint64
		for i := 0; i < n; i += 5 {
			recs := make([]Record, 5)
			for j := range recs {
				body := strings.Repeat(strconv.Itoa(i+j)+".", size/4)
				recs[j] = Record{Endpoint: "$upstream", Msg: &message.Message{DeviceID: "d", Body: []byte(body)}}
			}
			got, err := s.AppendRecords(context.Background(), recs)
			if err != nil {
				t.Fatal(err)
			}
			for j, seq := range got {
				b.bodies[seq] = string(recs[j].Msg.Body)
			}
			seqs = append(seqs, got...)
		}
		return seqs
	}
	appendSome(150, 80)
	for i := range 5 {
		k, v := "twin/d"+strconv.Itoa(i), strings.Repeat("v"+strconv.Itoa(i), 30)
		if err := s.Put([]byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
		b.kv[k] = v
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	// Over 32 KiB, so that the WAL has blocks before its last one.
	b.walSeqs = appendSome(50, 2000)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	names, err := b.fs.List("edge")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names) // file numbers are zero-padded
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, ".log"):
			b.wal = "edge/" + n
		case strings.HasSuffix(n, ".sst"):
			b.sst = "edge/" + n
		}
	}
	if b.wal == "" || b.sst == "" {
		t.Fatalf("no WAL or sstable in %v", names)
	}
	return b
}

// mutate returns a copy of the base with file's bytes changed by f.
func (b corruptBase) mutate(t *testing.T, file string, f func([]byte) []byte) *vfs.MemFS {
	fs := b.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(0, 0))})
	in, err := fs.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(in)
	in.Close()
	if err != nil {
		t.Fatal(err)
	}
	data = f(data)
	if err := fs.Remove(file); err != nil {
		t.Fatal(err)
	}
	out, err := fs.Create(file, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		t.Fatal(err)
	}
	out.Close()
	return fs
}

// corruptOutcome is what a damaged store did.
type corruptOutcome string

const (
	detectedAtOpen corruptOutcome = "refused at open (corruption error)"
	detectedAtRead corruptOutcome = "opened, corruption error on read"
	intact         corruptOutcome = "opened, all data intact"
	tornTail       corruptOutcome = "opened, last WAL records dropped as a torn write"
)

// checkDamaged opens a damaged copy and classifies what it does; any
// panic, unclear error, wrong data or silent loss outside the WAL's tail
// fails the test.
func (b corruptBase) checkDamaged(t *testing.T, name string, fs *vfs.MemFS, isWAL bool) (out corruptOutcome, lost int) {
	fail := func(format string, args ...any) {
		t.Errorf("%s: %s", name, fmt.Sprintf(format, args...))
	}
	clear := func(err error) bool { return errors.Is(err, ErrCorrupt) }
	defer func() {
		if r := recover(); r != nil {
			fail("panic: %v", r)
		}
	}()
	s, err := Open(Config{Dir: "edge", FS: fs, MinFreeBytes: -1})
	if err != nil {
		if !clear(err) {
			fail("refused at open with an error that does not say corruption: %v", err)
		}
		return detectedAtOpen, 0
	}
	defer s.Close()
	out = intact
	r, err := s.NewReader("$upstream")
	if err != nil {
		fail("reader: %v", err)
		return out, 0
	}
	present := map[uint64]bool{}
	for {
		es, err := r.tryNext(100)
		if err != nil {
			if !clear(err) {
				fail("read error that does not say corruption: %v", err)
			}
			out = detectedAtRead
			break
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if want, ok := b.bodies[e.Seq]; !ok || want != string(e.Msg.Body) {
				fail("seq %d holds %q: wrong data", e.Seq, e.Msg.Body)
			}
			present[e.Seq] = true
		}
	}
	for k, want := range b.kv {
		v, err := s.Get([]byte(k))
		switch {
		case err != nil && clear(err):
			out = detectedAtRead
		case err != nil:
			fail("KV %s: %v", k, err)
		case string(v) != want:
			fail("KV %s holds %q: wrong data", k, v)
		}
	}
	if out == detectedAtRead {
		return out, 0
	}
	// Nothing was reported: whatever is missing must be the WAL's tail.
	inWAL := map[uint64]bool{}
	for _, seq := range b.walSeqs {
		inWAL[seq] = true
	}
	gone := false
	for _, seq := range b.walSeqs {
		if !present[seq] {
			gone = true
			lost++
		} else if gone {
			fail("seq %d present after a missing one: a hole, not a torn tail", seq)
		}
	}
	for seq := range b.bodies {
		if !present[seq] && !inWAL[seq] {
			fail("seq %d from the sstable missing with no error", seq)
		}
	}
	switch {
	case lost > 0 && isWAL:
		out = tornTail
	case lost > 0:
		fail("%d WAL entries missing after damage to the sstable", lost)
	}
	return out, lost
}

// TestCorruptTail damages the tail of the newest WAL and of the newest
// sstable, by truncating them and by flipping one bit, and opens the
// store: it must refuse with a corruption error, or report one on
// read, or return only what was stored — never panic, never return
// wrong data. The one damage no store can tell from a power cut is the
// loss of the WAL's last records (a truncated tail, or a bad last
// record): those are dropped as a torn write, and counted.
func TestCorruptTail(t *testing.T) {
	b := newCorruptBase(t)
	trials := soak.N(30, 1000)
	rng := rand.New(rand.NewPCG(7, 7))
	for _, f := range []struct {
		kind, path string
		wal        bool
	}{{"WAL", b.wal, true}, {"sstable", b.sst, false}} {
		t.Run(f.kind, func(t *testing.T) {
			in, err := b.fs.Stat(f.path)
			if err != nil {
				t.Fatal(err)
			}
			size := int(in.Size())
			tail := min(size, 4096)
			counts := map[string]int{}
			lostMax := 0
			for i := range trials {
				var name string
				var mut func([]byte) []byte
				switch i % 3 {
				case 0: // truncated within the tail
					n := size - 1 - rng.IntN(tail)
					name = fmt.Sprintf("%s truncated to %d of %d bytes", f.kind, n, size)
					mut = func(d []byte) []byte { return d[:n] }
				case 1: // a bit flipped within the tail
					off, bit := size-1-rng.IntN(tail), rng.IntN(8)
					name = fmt.Sprintf("%s bit %d of byte %d of %d flipped", f.kind, bit, off, size)
					mut = func(d []byte) []byte { d[off] ^= 1 << bit; return d }
				default: // a bit flipped anywhere
					off, bit := rng.IntN(size), rng.IntN(8)
					name = fmt.Sprintf("%s bit %d of byte %d of %d flipped", f.kind, bit, off, size)
					mut = func(d []byte) []byte { d[off] ^= 1 << bit; return d }
				}
				out, lost := b.checkDamaged(t, name, b.mutate(t, f.path, mut), f.wal)
				counts[string(out)]++
				lostMax = max(lostMax, lost)
			}
			t.Logf("%d damaged copies of a %d-byte %s: %v; at most %d acked entries dropped as a torn tail", trials, size, f.kind, counts, lostMax)
		})
	}
}
