package main

import (
	"context"
	"encoding/json"
	"fmt"
)

// runQuery is `outpost query -q "SELECT …"`, shaped like `az iot hub query`.
func runQuery(ctx context.Context, args []string) error {
	fs := newFlagSet("query", `query -q "SELECT * FROM devices WHERE …" [-o json|table|tsv] [--top N]`)
	var hub serviceFlags
	hub.register(fs)
	var q string
	fs.StringVar(&q, "q", "", "the IoT Hub query (required)")
	fs.StringVar(&q, "query-command", "", "the IoT Hub query (same as -q)")
	top := fs.Int("top", 0, "return at most N results (0: all)")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("q", q); err != nil {
		return err
	}
	if *top < 0 {
		return fmt.Errorf("--top: want a positive number, not %d", *top)
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	pageSize := 0
	if *top > 0 && *top < 1000 {
		pageSize = *top
	}
	items := []json.RawMessage{}
	for it, err := range c.Query(ctx, q, pageSize) {
		if err != nil {
			return err
		}
		items = append(items, it)
		if *top > 0 && len(items) >= *top {
			break
		}
	}
	return printValue(stdout, *out, items)
}
