package query

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
)

// ErrContinuation is wrapped by Run's error for a continuation token that
// is malformed or belongs to another query; retrying with it cannot help.
var ErrContinuation = errors.New("invalid continuation token")

// RunOptions control paging.
type RunOptions struct {
	// PageSize is the most items a page holds; 0 or less means no limit.
	PageSize int
	// Continuation is the token of the previous page, "" for the first.
	Continuation string
}

// Page is one page of results.
type Page struct {
	Items []map[string]any
	// Continuation is the token for the next page, "" when there is none.
	Continuation string
}

const tokenVersion = 1

// Run evaluates q over docs, in their order, and returns one page of
// results. Paging skips the matches earlier pages returned, so the caller
// must feed the same documents in the same (stable) order each time; the
// hub feeds them sorted by deviceId and moduleId. The continuation token
// is opaque: a version, a hash of the query's canonical text (a token
// handed to another query is refused) and the offset of the next match.
//
// An aggregate query (COUNT, GROUP BY) returns all its rows in one page
// and never a continuation. Groups appear in the order of their first
// document.
func Run(q *Query, docs iter.Seq[Doc], opts RunOptions) (Page, error) {
	offset, err := q.decodeToken(opts.Continuation)
	if err != nil {
		return Page{}, err
	}
	if q.agg {
		return Page{Items: q.aggregate(docs)}, nil
	}
	limit := -1 // matches still allowed by TOP
	if q.top >= 0 {
		limit = max(0, q.top-int(min(offset, uint64(q.top))))
	}
	page := Page{Items: []map[string]any{}}
	var seen uint64
	more := false
	for d := range docs {
		if !q.Match(d) {
			continue
		}
		seen++
		if seen <= offset {
			continue
		}
		if len(page.Items) == limit || (opts.PageSize > 0 && len(page.Items) == opts.PageSize) {
			more = len(page.Items) != limit
			break
		}
		page.Items = append(page.Items, q.Project(d))
	}
	if more {
		page.Continuation = q.encodeToken(offset + uint64(len(page.Items)))
	}
	return page, nil
}

func (q *Query) hash() []byte {
	h := sha256.Sum256([]byte(q.canon))
	return h[:8]
}

func (q *Query) encodeToken(offset uint64) string {
	b := make([]byte, 0, 1+8+binary.MaxVarintLen64)
	b = append(b, tokenVersion)
	b = append(b, q.hash()...)
	b = binary.AppendUvarint(b, offset)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (q *Query) decodeToken(tok string) (uint64, error) {
	if tok == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 10 || b[0] != tokenVersion {
		return 0, fmt.Errorf("%w: malformed", ErrContinuation)
	}
	if string(b[1:9]) != string(q.hash()) {
		return 0, fmt.Errorf("%w: it belongs to another query", ErrContinuation)
	}
	off, n := binary.Uvarint(b[9:])
	if n <= 0 || 9+n != len(b) {
		return 0, fmt.Errorf("%w: malformed", ErrContinuation)
	}
	return off, nil
}

// aggregate counts matches, per group when there is a GROUP BY. A row
// holds the selected items, plus any grouped field not selected (under
// its last segment), plus the count; a group field undefined in a
// document is left out of that group's row.
func (q *Query) aggregate(docs iter.Seq[Doc]) []map[string]any {
	type group struct {
		vals  []any
		defs  []bool
		count int
	}
	var order []*group
	groups := map[string]*group{}
	var key []byte
	for d := range docs {
		if !q.Match(d) {
			continue
		}
		vals := make([]any, len(q.groupBy))
		defs := make([]bool, len(q.groupBy))
		key = key[:0]
		for i, g := range q.groupBy {
			vals[i], defs[i] = d.Lookup(g)
			key = appendGroupKey(key, vals[i], defs[i])
		}
		g, ok := groups[string(key)]
		if !ok {
			g = &group{vals: vals, defs: defs}
			groups[string(key)] = g
			order = append(order, g)
		}
		g.count++
	}
	if len(q.groupBy) == 0 && len(order) == 0 {
		order = append(order, &group{}) // COUNT() over nothing is 0
	}
	rows := make([]map[string]any, 0, len(order))
	for _, g := range order {
		row := map[string]any{}
		for i, path := range q.groupBy {
			name := lastSeg(path)
			for _, it := range q.items {
				if it.path != nil && slices.Equal(it.path, path) {
					name = it.name()
				}
			}
			if g.defs[i] {
				row[name] = g.vals[i]
			}
		}
		for _, it := range q.items {
			if it.path == nil {
				row[it.name()] = g.count
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// appendGroupKey encodes a group value so that equal JSON values (1 and
// 1.0, maps in any order) share a key and undefined differs from null.
func appendGroupKey(b []byte, v any, ok bool) []byte {
	if !ok {
		return append(b, 'u', 0)
	}
	j, err := json.Marshal(canonicalJSON(v))
	if err != nil {
		j = fmt.Appendf(nil, "%#v", v)
	}
	b = append(b, 'v')
	b = append(b, j...)
	return append(b, 0)
}

// canonicalJSON normalises numbers so that json.Marshal (which sorts map
// keys) gives equal values equal bytes.
func canonicalJSON(v any) any {
	switch v := norm(v).(type) {
	case LooseString:
		return string(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = canonicalJSON(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = canonicalJSON(e)
		}
		return out
	default:
		return v
	}
}
