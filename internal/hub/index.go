package hub

import (
	"context"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// row is one live key of a bucket as this process knows it. val is the
// decoded value; raw the bytes stored in KV.
type row struct {
	rev uint64
	raw []byte
	val any
}

// table mirrors one KV bucket in memory. A KV watcher feeds it every change
// made by any hub replica; this process's own writes are applied at once
// from their write results, so a read after a write here always sees it.
//
// Both feeds may deliver the same change, in either order. A change is
// applied only when its revision is newer than what the table holds for
// the key; dead remembers the revision of keys this process deleted until
// the watcher has caught up with the delete, so a late watcher event for an
// older revision cannot bring the key back.
type table struct {
	name   string
	decode func(key string, rev uint64, raw []byte) (any, error)
	// onChange, when set, runs under mu after every applied change, so
	// secondary indexes stay in step with rows. old or cur is nil for a
	// creation or a removal.
	onChange func(key string, old, cur *row)

	mu   sync.RWMutex // guards the following fields
	rows map[string]*row
	dead map[string]uint64
	// changes counts applied changes, so caches built from the table
	// know when they are still current.
	changes uint64
	// gen counts changes of membership (keys added or removed), so
	// sorted key lists know when to rebuild.
	gen uint64
	// subs maps a device key to the keys below it (its modules), so a
	// device's modules are found without a scan.
	subs map[string]map[string]struct{}
}

func newTable(name string, decode func(string, uint64, []byte) (any, error)) *table {
	return &table{name: name, decode: decode, rows: map[string]*row{}, dead: map[string]uint64{}, subs: map[string]map[string]struct{}{}}
}

func (t *table) get(key string) (*row, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	r, ok := t.rows[key]
	return r, ok
}

// applyPut records a write of raw at rev; val is its decoded form.
func (t *table) applyPut(key string, rev uint64, raw []byte, val any, fromWatcher bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.staleLocked(key, rev, fromWatcher) {
		return
	}
	old := t.rows[key]
	cur := &row{rev: rev, raw: raw, val: val}
	t.rows[key] = cur
	t.changes++
	delete(t.dead, key)
	if old == nil {
		t.linkLocked(key)
		t.gen++
	}
	if t.onChange != nil {
		t.onChange(key, old, cur)
	}
}

// applyDelete records the removal of key at rev.
func (t *table) applyDelete(key string, rev uint64, fromWatcher bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.staleLocked(key, rev, fromWatcher) {
		return
	}
	old := t.rows[key]
	delete(t.rows, key)
	t.changes++
	if old != nil {
		t.unlinkLocked(key)
		t.gen++
	}
	if fromWatcher {
		delete(t.dead, key)
	} else {
		t.dead[key] = rev
	}
	if old != nil && t.onChange != nil {
		t.onChange(key, old, nil)
	}
}

// staleLocked reports whether a change at rev is older than what the table
// holds. A watcher event at or past a tombstone retires the tombstone: the
// watcher delivers in stream order, so nothing older can follow it.
func (t *table) staleLocked(key string, rev uint64, fromWatcher bool) bool {
	d, isDead := t.dead[key]
	if fromWatcher && isDead && rev >= d {
		delete(t.dead, key)
	}
	if isDead && rev <= d {
		return true
	}
	if r, ok := t.rows[key]; ok && rev <= r.rev {
		return true
	}
	return false
}

func (t *table) linkLocked(key string) {
	parent, _, ok := strings.Cut(key, ".")
	if !ok {
		return
	}
	set := t.subs[parent]
	if set == nil {
		set = map[string]struct{}{}
		t.subs[parent] = set
	}
	set[key] = struct{}{}
}

func (t *table) unlinkLocked(key string) {
	parent, _, ok := strings.Cut(key, ".")
	if !ok {
		return
	}
	if set := t.subs[parent]; set != nil {
		delete(set, key)
		if len(set) == 0 {
			delete(t.subs, parent)
		}
	}
}

// below returns the keys below parent (a device key): its modules.
func (t *table) below(parent string) []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	keys := make([]string, 0, len(t.subs[parent]))
	for k := range t.subs[parent] {
		keys = append(keys, k)
	}
	return keys
}

// changeCount returns the number of changes applied so far.
func (t *table) changeCount() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changes
}

// generation returns the membership generation.
func (t *table) generation() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.gen
}

// each calls fn for every row, under the read lock; fn must not call back
// into the table. It stops when fn returns false.
func (t *table) each(fn func(key string, r *row) bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for k, r := range t.rows {
		if !fn(k, r) {
			return
		}
	}
}

func (t *table) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.rows)
}

// follow feeds t from a watcher on b until ctx ends or the watcher closes.
// ready is closed once the initial values are loaded.
func (t *table) follow(ctx context.Context, w jetstream.KeyWatcher, ready chan<- struct{}, onErr func(key string, err error)) {
	defer w.Stop()
	readyClosed := false
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if !readyClosed {
					close(ready)
					readyClosed = true
				}
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValuePut:
				val, err := t.decode(e.Key(), e.Revision(), e.Value())
				if err != nil {
					onErr(e.Key(), err)
					continue
				}
				t.applyPut(e.Key(), e.Revision(), e.Value(), val, true)
			default:
				t.applyDelete(e.Key(), e.Revision(), true)
			}
		}
	}
}
