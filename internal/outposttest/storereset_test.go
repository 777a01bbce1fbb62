package outposttest

import (
	"os"
	"testing"
	"time"

	"outpost/internal/edgeserver"
)

// copyDir copies the storage folder src to dst, which must not exist: a
// backup taken, or a disk cloned.
func copyDir(t *testing.T, dst, src string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

// replaceDir makes dir hold exactly what src holds.
func replaceDir(t *testing.T, dir, src string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, dir, src)
}

// An edge whose storage folder was wiped syncs again and serves; the
// messages it acks from then on must all reach the hub, though its new
// store numbers them from 1 again, as the old one did.
func TestWipedStore(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1"})
	p := newPublisher(s.node.Child(t, "child1"))
	p.sendN(t, 20)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))

	s.node.RestartAfter(t, func(dir string) {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	})
	p.sendN(t, 20)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))
}

// A store restored from a backup has the id and sequences the backup
// had. The backup is taken while the link is down, so the original
// numbers the messages it takes after it just past it, as the restored
// store will number its own: the hub stores the original's, and then the
// restored store acks others under the same sequences, offline: fewer
// than the original did, so that it connects behind what the hub stored
// from the store, which the hub counts. They must all reach the hub, and
// once connected the store moves past the hub's record. (A restored
// store that numbered as many as the original before it connects is not
// told from the original by its position; its messages reach the hub
// all the same, by their stored times.)
func TestRestoredStore(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1"})
	p := newPublisher(s.node.Child(t, "child1"))
	p.sendN(t, 10)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))

	s.node.Cut()
	backup := t.TempDir() + "/backup"
	s.node.RestartAfter(t, func(dir string) { copyDir(t, backup, dir) })
	p.sendN(t, 10)
	s.node.Restore()
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))

	s.node.Cut()
	s.node.RestartAfter(t, func(dir string) { replaceDir(t, dir, backup) })
	p.sendN(t, 5)
	s.node.Restore()
	s.node.AwaitLink(t, true, 30*time.Second)
	p.sendN(t, 10)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))
	if c := s.env.Plane.EdgeCounts()["edge1"]; c.StoreRewinds == 0 {
		t.Errorf("hub counted no store behind what it stored: %+v", c)
	}
}

// A store copied to a second machine, which then serves as the same
// edge once the first is gone: both number new messages alike, and every
// message either acks must reach the hub.
func TestCopiedStore(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1"})
	p := newPublisher(s.node.Child(t, "child1"))
	p.sendN(t, 10)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))

	s.node.Cut()
	clone := t.TempDir() + "/clone"
	s.node.RestartAfter(t, func(dir string) { copyDir(t, clone, dir) })
	p.sendN(t, 10)
	s.node.Restore()
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))
	if err := s.node.Stop(); err != nil {
		t.Fatal(err)
	}
	p.c.Close()

	// The copy starts offline, serves from its caches, then connects.
	second := s.env.StartEdge(t, "edge1", StartOffline(), WithEdgeConfig(func(c *edgeserver.Config) { c.StorageDir = clone }))
	second.AwaitReady(t, 30*time.Second)
	p2 := newPublisher(second.Child(t, "child1"))
	p2.next = p.next
	p2.sendN(t, 10)
	second.Restore()
	second.AwaitLink(t, true, 30*time.Second)
	p2.sendN(t, 10)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p, p2))
}
