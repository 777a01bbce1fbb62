//go:build !linux

package disktest

import "testing"

// Tmpfs skips the test: mounting a tmpfs needs Linux.
func Tmpfs(t testing.TB, size int64) string {
	t.Skip("mounting a tmpfs needs Linux; the injected-ENOSPC variant covers this case")
	return ""
}

// Free is not known off Linux.
func Free(t testing.TB, dir string) int64 {
	t.Skip("free space needs Linux")
	return 0
}
