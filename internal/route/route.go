// Package route implements IoT Edge's route language on top of the
// query conditions of package query:
//
//	[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>
//
// Keywords are case-insensitive. Sources select messages by sender:
//
//	/*                                  every message (today: as /messages/*)
//	/messages/*                         all telemetry from devices and modules
//	/messages/modules/*                 any module's messages
//	/messages/modules/{m}/*             module m's messages, with or without an output
//	/messages/modules/{m}/outputs/*     module m's messages sent on some output
//	/messages/modules/{m}/outputs/{o}   module m's output o
//
// A message from a device (no module) matches only /* and /messages/*.
// Sinks:
//
//	$upstream                                           the parent hub
//	BrokeredEndpoint("/modules/{m}/inputs/{i}")         a module input on this edge
//	BrokeredEndpoint("/devices/{d}/messages/devicebound")  a child device, as a local C2D message (an Outpost extension)
//
// Conditions see a message through MessageDoc: application properties by
// bare name, system properties as $contentType, $messageId …, and the
// JSON body as $body.x.y.
package route

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"outpost/internal/message"
	"outpost/internal/query"
)

// Priority bounds, as IoT Edge numbers them: 0 is the highest.
const (
	MaxPriority = 9
	// MaxTTL is the largest timeToLiveSecs IoT Edge accepts (int32).
	MaxTTL = math.MaxInt32 * time.Second
)

// DefaultName and DefaultText are the route in force when a deployment
// names none: everything goes upstream.
const (
	DefaultName = "$default"
	DefaultText = "FROM /messages/* INTO $upstream"
)

// Route is one parsed route.
type Route struct {
	Name string // the key in the routes object
	Text string // as written
	// Priority is 0 (highest) to 9 (lowest); TTL 0 means the global
	// store-and-forward TTL.
	Priority  int
	TTL       time.Duration
	Source    Source
	Condition *query.Condition // nil without WHERE
	Sink      Sink
}

// String returns the route's canonical text; parsing it yields the same
// String.
func (r Route) String() string {
	var b strings.Builder
	b.WriteString("FROM ")
	b.WriteString(r.Source.String())
	if r.Condition != nil {
		b.WriteString(" WHERE ")
		b.WriteString(r.Condition.String())
	}
	b.WriteString(" INTO ")
	b.WriteString(r.Sink.Expr())
	return b.String()
}

// Match reports whether msg comes from the route's source and satisfies
// its condition.
func (r Route) Match(msg *message.Message) bool {
	return r.match(msg, nil)
}

// match evaluates the condition on doc, made on first use so that a
// table shares one (and one body decode) across its routes.
func (r Route) match(msg *message.Message, doc *query.Doc) bool {
	if !r.Source.Match(msg) {
		return false
	}
	if r.Condition == nil {
		return true
	}
	if doc == nil {
		return r.Condition.Match(MessageDoc(msg))
	}
	if *doc == nil {
		*doc = MessageDoc(msg)
	}
	return r.Condition.Match(*doc)
}

// Table is the set of routes of one deployment, sorted by name.
type Table struct {
	Routes []Route
	// GlobalTTL is what a TTL of 0 stands for when Match merges routes
	// to one sink; while it is 0 (unknown), a route's TTL 0 counts as
	// longer than any explicit TTL.
	GlobalTTL time.Duration
}

// Match returns the routes msg takes, one per sink, ordered by priority
// then name. When several matching routes share a sink the message is
// delivered there once, as IoT Edge does: the result is the route with
// the highest priority (lowest number; on a tie the first by name),
// carrying the longest TTL among them (0 if the global TTL is the
// longest).
func (t Table) Match(msg *message.Message) []Route {
	var doc query.Doc
	var out []Route
	bySink := map[string]int{}
	for _, r := range t.Routes {
		if !r.match(msg, &doc) {
			continue
		}
		key := r.Sink.String()
		i, seen := bySink[key]
		if !seen {
			bySink[key] = len(out)
			out = append(out, r)
			continue
		}
		best := &out[i]
		ttl := best.TTL
		if t.longer(r.TTL, ttl) {
			ttl = r.TTL
		}
		if r.Priority < best.Priority {
			*best = r
		}
		best.TTL = ttl
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Priority < out[j].Priority })
	return out
}

// longer reports whether TTL a outlives TTL b, 0 being the global TTL.
func (t Table) longer(a, b time.Duration) bool {
	eff := func(d time.Duration) time.Duration {
		switch {
		case d != 0:
			return d
		case t.GlobalTTL != 0:
			return t.GlobalTTL
		}
		return math.MaxInt64
	}
	return eff(a) > eff(b)
}

// ParseRoutes parses the "routes" object of the $edgeHub desired
// properties. A value is either the route text (schema 1.0) or an object
// {"route": text, "priority": 0-9, "timeToLiveSecs": n} (schema 1.1); a
// null value is a route removed by a merge patch. With no routes the
// table holds the default route, DefaultText. Errors name the route.
func ParseRoutes(routes map[string]any) (Table, error) {
	names := make([]string, 0, len(routes))
	for n, v := range routes {
		if v != nil {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var t Table
	for _, n := range names {
		r, err := parseValue(routes[n])
		if err != nil {
			return Table{}, fmt.Errorf("route %q: %w", n, err)
		}
		r.Name = n
		t.Routes = append(t.Routes, r)
	}
	if len(t.Routes) == 0 {
		r, err := ParseRoute(DefaultText)
		if err != nil {
			panic("route: the default route does not parse: " + err.Error())
		}
		r.Name = DefaultName
		t.Routes = append(t.Routes, r)
	}
	return t, nil
}

func parseValue(v any) (Route, error) {
	switch v := v.(type) {
	case string:
		return ParseRoute(v)
	case map[string]any:
		return parseObject(v)
	}
	return Route{}, fmt.Errorf(`want a string or an object {"route": …}, got %s`, jsonType(v))
}

func parseObject(obj map[string]any) (Route, error) {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k != "route" && k != "priority" && k != "timeToLiveSecs" {
			return Route{}, fmt.Errorf("unknown field %q (want route, priority, timeToLiveSecs)", k)
		}
	}
	text, ok := obj["route"].(string)
	if !ok || strings.TrimSpace(text) == "" {
		return Route{}, fmt.Errorf(`"route" must be a non-empty string`)
	}
	r, err := ParseRoute(text)
	if err != nil {
		return Route{}, err
	}
	if v, ok := obj["priority"]; ok && v != nil {
		n, ok := wholeNumber(v)
		if !ok {
			return Route{}, fmt.Errorf("priority must be a whole number, got %s", jsonType(v))
		}
		if n < 0 || n > MaxPriority {
			return Route{}, fmt.Errorf("priority %d out of range 0-%d", n, MaxPriority)
		}
		r.Priority = int(n)
	}
	if v, ok := obj["timeToLiveSecs"]; ok && v != nil {
		n, ok := wholeNumber(v)
		if !ok {
			return Route{}, fmt.Errorf("timeToLiveSecs must be a whole number, got %s", jsonType(v))
		}
		if n < 0 || n > math.MaxInt32 {
			return Route{}, fmt.Errorf("timeToLiveSecs %d out of range 0-%d", n, math.MaxInt32)
		}
		r.TTL = time.Duration(n) * time.Second
	}
	return r, nil
}

// wholeNumber reads a JSON number that must be an integer.
func wholeNumber(v any) (int64, bool) {
	switch n := v.(type) {
	case float64:
		if n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			return 0, false
		}
		return int64(n), true
	case int:
		return int64(n), true
	case int64:
		return n, true
	case interface{ Int64() (int64, error) }: // json.Number
		i, err := n.Int64()
		return i, err == nil
	}
	return 0, false
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64, int, int64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
