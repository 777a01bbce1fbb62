// Package disktest gives tests a disk to fill: a small real tmpfs the
// test mounts (it needs root, or CAP_SYS_ADMIN) and unmounts when it
// ends, skipped with the reason where mounting is not possible; and an
// in-memory Pebble file system that injects ENOSPC, which runs
// everywhere.
package disktest

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Fill writes a file in dir until its file system is full, and returns
// its path: removing it frees the space again.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "disktest-filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("fill %s: %v", dir, err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for range 1 << 20 { // bounded: 4 GiB
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path
			}
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
	t.Fatalf("fill %s: not full after 4 GiB", dir)
	return ""
}
