package service

import (
	"context"
	"encoding/json"
	"errors"
	"iter"
	"net/http"
	"strconv"
)

// Paging headers of POST /devices/query. The hub sets the continuation
// only when more pages exist; the client sends it back to get the next.
const (
	headerMaxItemCount = "x-ms-max-item-count"
	headerContinuation = "x-ms-continuation"
)

// QueryPage is one page of query results.
type QueryPage struct {
	Items []json.RawMessage
	// Continuation is empty on the last page.
	Continuation string
}

// QueryPage runs one page of an IoT Hub query. pageSize 0 lets the hub
// choose; continuation is empty for the first page.
func (c *Client) QueryPage(ctx context.Context, query string, pageSize int, continuation string) (QueryPage, error) {
	if query == "" {
		return QueryPage{}, errors.New("query: empty query")
	}
	h := http.Header{}
	if pageSize > 0 {
		h.Set(headerMaxItemCount, strconv.Itoa(pageSize))
	}
	if continuation != "" {
		h.Set(headerContinuation, continuation)
	}
	var items []json.RawMessage
	rh, err := c.doJSON(ctx, http.MethodPost, Path("devices", "query"), map[string]string{"query": query}, h, &items)
	if err != nil {
		return QueryPage{}, err
	}
	return QueryPage{Items: items, Continuation: rh.Get(headerContinuation)}, nil
}

// Query runs an IoT Hub query and yields its results, fetching pages of
// pageSize (0: the hub's choice) as the caller iterates. Iteration stops at
// the first error, which is yielded with a nil item.
func (c *Client) Query(ctx context.Context, query string, pageSize int) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		cont := ""
		for {
			page, err := c.QueryPage(ctx, query, pageSize, cont)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, it := range page.Items {
				if !yield(it, nil) {
					return
				}
			}
			if page.Continuation == "" {
				return
			}
			if page.Continuation == cont {
				yield(nil, errors.New("query: hub repeated its continuation token"))
				return
			}
			cont = page.Continuation
		}
	}
}
