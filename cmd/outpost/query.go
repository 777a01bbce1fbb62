package main

import (
	"context"
	"encoding/json"
	"fmt"

	"outpost/internal/service"
)

// runQuery is `outpost query -q "SELECT …"`, shaped like `az iot hub query`.
func runQuery(ctx context.Context, args []string) error {
	c := newHubCommand("query", `-q "SELECT * FROM devices WHERE …" [-o json|table|tsv] [--top N]`)
	q := c.requiredString("q", "the IoT Hub query")
	c.StringVar(q, "query-command", "", "the IoT Hub query (same as -q)")
	top := c.Int("top", 0, "return at most N results (0: all)")
	c.output("json")
	c.check(func() error {
		if *top < 0 {
			return fmt.Errorf("--top: want a positive number, not %d", *top)
		}
		return nil
	})
	return c.run(args, func(s *service.Client) (any, error) {
		pageSize := 0
		if *top > 0 && *top < 1000 {
			pageSize = *top
		}
		items := []json.RawMessage{}
		for it, err := range s.Query(ctx, *q, pageSize) {
			if err != nil {
				return nil, err
			}
			items = append(items, it)
			if *top > 0 && len(items) >= *top {
				break
			}
		}
		return items, nil
	})
}
