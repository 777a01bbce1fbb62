package hub

import (
	"slices"
	"sync"
)

// scopeIndex maps a parent scope to the device ids that name it in their
// parentScopes. It is fed by the devices table, so it answers "children of
// this edge" without a scan of the registry.
type scopeIndex struct {
	mu       sync.RWMutex // guards byScope
	byScope  map[string]map[string]struct{}
	scopesOf func(val any) (id string, parents []string)
}

func newScopeIndex(scopesOf func(val any) (string, []string)) *scopeIndex {
	return &scopeIndex{byScope: map[string]map[string]struct{}{}, scopesOf: scopesOf}
}

// onChange is the devices table's change hook.
func (s *scopeIndex) onChange(_ string, old, cur *row) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old != nil {
		id, parents := s.scopesOf(old.val)
		for _, p := range parents {
			if set := s.byScope[p]; set != nil {
				delete(set, id)
				if len(set) == 0 {
					delete(s.byScope, p)
				}
			}
		}
	}
	if cur != nil {
		id, parents := s.scopesOf(cur.val)
		for _, p := range parents {
			if p == "" {
				continue
			}
			set := s.byScope[p]
			if set == nil {
				set = map[string]struct{}{}
				s.byScope[p] = set
			}
			set[id] = struct{}{}
		}
	}
}

// children returns, sorted, the ids of devices whose parent is scope.
func (s *scopeIndex) children(scope string) []string {
	if scope == "" {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]string, 0, len(s.byScope[scope]))
	for id := range s.byScope[scope] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
