package edge

import (
	"log/slog"
	"testing"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/edgeproto"
)

// Set-aside counts are kept in the store: a new run reads them back, and
// an entry counted before a crash (refused again because its ack had not
// reached the queue) is not counted twice.
func TestSetAsideCountsKept(t *testing.T) {
	dir := t.TempDir()
	open := func() (*setAsides, *store.Store) {
		st, err := store.Open(store.Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		s := &setAsides{st: st, log: slog.New(slog.DiscardHandler)}
		if err := s.load(); err != nil {
			t.Fatal(err)
		}
		return s, st
	}
	at := time.Unix(1_800_000_000, 0).UTC()
	sa := func(ep string, seq uint64, reason string) SetAside {
		return SetAside{Endpoint: ep, Seq: seq, DeviceID: "gone", Reason: reason, Message: "refused"}
	}
	s, st := open()
	s.add(at, sa("$upstream", 3, edgeproto.RefusedNotInScope))
	s.add(at, sa("$upstream", 7, edgeproto.RefusedTooLarge))
	s.add(at, sa("$upstream/p1", 2, edgeproto.RefusedNotInScope))
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	s, st = open()
	defer st.Close()
	got := s.status()
	if got.Total != 3 || got.ByReason[edgeproto.RefusedNotInScope] != 2 || got.ByReason[edgeproto.RefusedTooLarge] != 1 || len(got.Recent) != 3 {
		t.Fatalf("after reopening: %+v; want 3 (2 not in scope, 1 too large)", got)
	}
	if r := got.Recent[1]; r.Seq != 7 || r.Endpoint != "$upstream" || !r.At.Equal(at) || r.DeviceID != "gone" {
		t.Errorf("kept entry %+v", r)
	}
	s.add(at, sa("$upstream", 7, edgeproto.RefusedTooLarge))   // refused again after the restart
	s.add(at, sa("$upstream/p1", 1, edgeproto.RefusedInvalid)) // below the mark: counted before
	s.add(at, sa("$upstream", 8, edgeproto.RefusedNotInScope)) // new
	if got := s.status(); got.Total != 4 || got.ByReason[edgeproto.RefusedNotInScope] != 3 || got.ByReason[edgeproto.RefusedInvalid] != 0 {
		t.Errorf("after entries refused again and a new one: %+v; want 4, 3 not in scope", got)
	}
}
