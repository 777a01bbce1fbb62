package store

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// PutBatch is one synced write: after a power cut right after it returns,
// every pair is there; an invalid pair stores none.
func TestPutBatchDurableAndAtomic(t *testing.T) {
	s, fs := openMem(t, Config{})
	if err := s.PutBatch(KV{Key: []byte("a"), Value: []byte("1")}, KV{Key: []byte("b"), Value: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBatch(KV{Key: []byte("c"), Value: []byte("3")}, KV{Key: nil, Value: []byte("x")}); err == nil {
		t.Fatal("a pair with an empty key was accepted")
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	s2, err := Open(Config{Dir: "edge", FS: crashed, MinFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for k, want := range map[string]string{"a": "1", "b": "2"} {
		if got, err := s2.Get([]byte(k)); err != nil || !bytes.Equal(got, []byte(want)) {
			t.Errorf("after a power cut %s = %q, %v; want %q", k, got, err, want)
		}
	}
	if _, err := s2.Get([]byte("c")); err != ErrNotFound {
		t.Errorf("c of the refused batch: %v; want ErrNotFound", err)
	}
}
