package store

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
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
		if _, err := s.Append(context.Background(), "$upstream", msg("d", 1)); !errors.Is(err, ErrDiskFull) {
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
			// The first fails in Pebble, the second is refused because
			// Pebble's commit pipeline is unusable after that.
			if _, err := s.Append(context.Background(), "$upstream", msg("d", 1)); !errors.Is(err, ErrDiskFull) {
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
