package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"outpost/internal/disktest"
)

func TestDiskFull(t *testing.T) {
	t.Run("below reserve refused before pebble writes", func(t *testing.T) {
		fs := vfs.NewMem()
		fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 2 << 30})
		s, err := Open(Config{Dir: "edge", FS: fs, MinFreeBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		mustAppend(t, s, "$upstream", msg("d", 0))
		fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1<<20 + 10, TotalBytes: 2 << 30})
		if _, err := s.appendOne(context.Background(), "$upstream", msg("d", 1)); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("append below reserve: %v, want ErrDiskFull", err)
		}
		if got := readAll(t, s, "$upstream"); len(got) != 1 {
			t.Fatalf("%d entries after refusal, want 1", len(got))
		}
		fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 2 << 30})
		mustAppend(t, s, "$upstream", msg("d", 2))
	})
	t.Run("ENOSPC from the WAL is an error, not a crash", func(t *testing.T) {
		var full atomic.Bool
		mem := vfs.NewMem()
		fs := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
			if full.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite && strings.HasSuffix(op.Path, ".log") {
				return syscall.ENOSPC
			}
			return nil
		}))
		s, err := Open(Config{Dir: "edge", FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		seq := mustAppend(t, s, "$upstream", msg("d", 0))
		full.Store(true)
		for i := range 2 {
			// The first fails in Pebble, the second is refused until the
			// store has reopened its database.
			if _, err := s.appendOne(context.Background(), "$upstream", msg("d", 1)); !errors.Is(err, ErrDiskFull) {
				t.Fatalf("append %d on a full disk: %v, want ErrDiskFull", i, err)
			}
		}
		s.Close()
		full.Store(false)
		s, err = Open(Config{Dir: "edge", FS: fs})
		if err != nil {
			t.Fatalf("reopen after disk full: %v", err)
		}
		defer s.Close()
		got := readAll(t, s, "$upstream")
		if len(got) == 0 || got[0].Seq != seq {
			t.Fatalf("acked entry lost: %+v", got)
		}
		if next := mustAppend(t, s, "$upstream", msg("d", 2)); next <= seq {
			t.Fatalf("seq %d after %d", next, seq)
		}
	})
}

// fullDisk is a disk a test fills and frees.
type fullDisk struct {
	fs   vfs.FS
	dir  string
	fill func(t *testing.T)
	free func(t *testing.T)
}

// tmpfsDisk is a real 8 MiB tmpfs, filled by another file as another
// program on the device would fill it.
func tmpfsDisk(t *testing.T) fullDisk {
	mnt := disktest.Tmpfs(t, 8<<20)
	var filler string
	return fullDisk{
		fs:   vfs.Default,
		dir:  filepath.Join(mnt, "edge"),
		fill: func(t *testing.T) { filler = disktest.Fill(t, mnt) },
		free: func(t *testing.T) {
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// injectedDisk reports little free space and fails writes with ENOSPC
// while full; it runs everywhere.
func injectedDisk(t *testing.T) fullDisk {
	d := disktest.NewInjected()
	return fullDisk{
		fs:   d.FS,
		dir:  "edge",
		fill: func(*testing.T) { d.Fill() },
		free: func(*testing.T) { d.Free() },
	}
}

// TestDiskFullRecovers fills the disk under a store that holds acked
// messages: new messages are refused with ErrDiskFull, a KV write that
// reaches Pebble's write-ahead log on the full disk fails it (ENOSPC)
// with an error, not a panic, nothing acked is lost, and once the space
// is freed the store reopens its database by itself and takes appends
// again within a second.
func TestDiskFullRecovers(t *testing.T) {
	for _, v := range []struct {
		name string
		disk func(t *testing.T) fullDisk
	}{
		{"injected ENOSPC", injectedDisk},
		{"tmpfs", tmpfsDisk},
	} {
		t.Run(v.name, func(t *testing.T) {
			d := v.disk(t)
			cfg := Config{Dir: d.dir, FS: d.fs, MinFreeBytes: 1 << 20}
			s, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			const ep = "$upstream"
			var acked []uint64
			for i := range 20 {
				acked = append(acked, mustAppend(t, s, ep, msg("d", i)))
			}

			d.fill(t)
			if _, err := s.appendOne(context.Background(), ep, msg("d", 100)); !errors.Is(err, ErrDiskFull) {
				t.Fatalf("append on a full disk: %v, want ErrDiskFull", err)
			}
			// KV writes are not held to the reserve: on a disk full to
			// the last byte, one reaches Pebble and fails in its WAL.
			var putErr error
			big := make([]byte, 64<<10)
			for i := 0; i < 1000 && putErr == nil; i++ {
				putErr = s.Put([]byte("twin/d"), big)
			}
			if !errors.Is(putErr, ErrDiskFull) {
				t.Fatalf("KV write on a full disk: %v, want ErrDiskFull", putErr)
			}
			if _, err := s.appendOne(context.Background(), ep, msg("d", 101)); !errors.Is(err, ErrDiskFull) {
				t.Fatalf("append after the failed write: %v, want ErrDiskFull", err)
			}
			// The old database stays readable until there is room.
			checkAcked(t, readAll(t, s, ep), acked)

			d.free(t)
			freed := time.Now()
			var seq uint64
			checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				var err error
				seq, err = s.appendOne(context.Background(), ep, msg("d", 20))
				return err
			})
			took := time.Since(freed)
			t.Logf("intake again %v after the space was freed (%d reopens)", took.Round(time.Millisecond), s.Usage().Reopens)
			if took > time.Second {
				t.Errorf("intake again %v after the space was freed, want within 1 s", took)
			}
			acked = append(acked, seq)
			checkAcked(t, readAll(t, s, ep), acked)
			if err := s.Put([]byte("twin/d"), []byte("after")); err != nil {
				t.Fatalf("KV write after the space was freed: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err = Open(cfg)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			checkAcked(t, readAll(t, s, ep), acked)
		})
	}
}

// checkAcked fails unless got holds exactly the acked sequences, in
// order.
func checkAcked(t *testing.T, got []Entry, acked []uint64) {
	t.Helper()
	if len(got) != len(acked) {
		t.Fatalf("%d entries, want the %d acked", len(got), len(acked))
	}
	for i, e := range got {
		if e.Seq != acked[i] {
			t.Fatalf("entry %d is seq %d, want %d", i, e.Seq, acked[i])
		}
	}
}
