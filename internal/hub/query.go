package hub

import (
	"errors"
	"slices"

	"outpost/internal/query"
	"outpost/internal/status"
)

// CodeInvalidQuery is the error code of a query that does not parse or a
// continuation token that does not belong to it.
const CodeInvalidQuery = "InvalidQuery"

// Query runs an IoT Hub query over this replica's index, one page at a
// time: SELECT … FROM devices sees device twins (with status, scopes,
// capabilities), FROM devices.modules module twins. Documents are fed in
// device and module id order, which makes the offset-based continuation
// tokens of package query stable while the registry is unchanged.
// pageSize <= 0 means no limit.
func (h *Hub) Query(q string, pageSize int, continuation string) (query.Page, error) {
	pq, err := query.Parse(q)
	if err != nil {
		return query.Page{}, status.BadRequest(CodeInvalidQuery, "%v", err)
	}
	// Read the counters before the tables: a change racing with the
	// build then leaves a snapshot that the next query rebuilds.
	changes := [4]uint64{h.devTab.changeCount(), h.modTab.changeCount(), h.twinTab.changeCount(), h.presTab.changeCount()}
	docs, ok := h.qcache.snapshot(pq.Source(), changes)
	if !ok {
		t, docOf := h.devTab, h.deviceQueryDoc
		if pq.Source() == query.SourceModules {
			t, docOf = h.modTab, h.moduleQueryDoc
		}
		keys := h.qcache.keys(t)
		docs = make([]query.Doc, 0, len(keys))
		for _, k := range keys {
			if doc := docOf(k); doc != nil { // nil: removed since listed
				docs = append(docs, doc)
			}
		}
		h.qcache.store(pq.Source(), changes, docs)
	}
	page, err := query.Run(pq, slices.Values(docs), query.RunOptions{PageSize: pageSize, Continuation: continuation})
	if errors.Is(err, query.ErrContinuation) {
		return query.Page{}, status.BadRequest(CodeInvalidQuery, "%v", err)
	}
	return page, err
}
