// Package query implements the Azure IoT Hub query language: one parser
// and one evaluator, used by the hub for device and module queries and by
// the edge (through package route) for route conditions.
//
// Grammar, keywords in any case, field names case-sensitive:
//
//	SELECT [TOP n] * | item {, item} FROM devices | devices.modules
//	       [WHERE condition] [GROUP BY field {, field}]
//	item      = field [AS name] | COUNT() [AS name]
//	condition = condition OR condition | condition AND condition
//	          | NOT condition | value op value | value IN [..] | value NIN [..]
//	          | value | '(' condition ')'
//	op        = '=' | '!=' | '<>' | '<' | '>' | '<=' | '>='
//	value     = field | 'string' | "string" | number | true | false | null
//	          | [value, ..] | FUNCTION(args)
//	field     = name {'.' name | '[' 'key' ']' | '[' index ']'}
//
// AND binds tighter than OR, NOT tighter than AND. A field name may start
// with '$' ($body.temp, $contentType); what a path means is up to the Doc.
// Functions: IS_DEFINED, IS_NULL, IS_BOOL, IS_NUMBER, IS_STRING,
// IS_OBJECT, IS_ARRAY, IS_PRIMITIVE, STARTSWITH, ENDSWITH, CONTAINS,
// LOWER, UPPER, LENGTH, ABS.
//
// Semantics follow Azure's (and Cosmos DB's) three-valued logic: a
// missing field, or a comparison of values of different types, is
// undefined rather than false; NOT undefined is undefined; undefined AND
// false is false, undefined OR true is true; a document matches only when
// the condition is true. So `NOT tags.x = 'v'` does not select devices
// without tags.x, and neither does `tags.x != 'v'`. Two exceptions make
// null checks useful: `x = null` is false and `x != null` true for any
// defined, non-null x. Numbers compare as float64, strings byte-wise
// (lexicographically), booleans only for (in)equality, arrays and objects
// by deep equality.
package query

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Sources a query can select from.
const (
	SourceDevices = "devices"
	SourceModules = "devices.modules"
)

// countName is Azure's output name for an unnamed aggregate.
const countName = "$1"

// SyntaxError is a parse error at a position in the query text.
type SyntaxError struct {
	Pos int // 1-based column, counted in characters
	Msg string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("syntax error at position %d: %s", e.Pos, e.Msg)
}

// ErrorAt builds a SyntaxError for the byte offset off in src, so that
// languages embedding conditions (routes) report positions the same way.
func ErrorAt(src string, off int, msg string) *SyntaxError {
	off = max(0, min(off, len(src)))
	return &SyntaxError{Pos: utf8.RuneCountInString(src[:off]) + 1, Msg: msg}
}

// Query is a parsed SELECT statement. It is immutable and safe for
// concurrent use.
type Query struct {
	top     int // -1 without TOP
	star    bool
	items   []selectItem
	source  string
	where   expr
	groupBy [][]string
	agg     bool
	canon   string
}

type selectItem struct {
	path  []string // nil for COUNT()
	alias string
}

func (it selectItem) name() string {
	switch {
	case it.alias != "":
		return it.alias
	case it.path == nil:
		return countName
	}
	return lastSeg(it.path)
}

// Parse parses a query.
func Parse(s string) (*Query, error) {
	p := newParser(s, 0, "end of query")
	q, err := p.query()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	q.render(&b)
	q.canon = b.String()
	return q, nil
}

// Source returns SourceDevices or SourceModules.
func (q *Query) Source() string { return q.source }

// Aggregate reports whether the query counts (COUNT() or GROUP BY)
// rather than returning documents.
func (q *Query) Aggregate() bool { return q.agg }

// String returns the canonical form of the query: keywords upper case,
// strings single-quoted, only the parentheses precedence needs. Parsing
// it again yields the same String.
func (q *Query) String() string { return q.canon }

// Match reports whether d satisfies the WHERE clause.
func (q *Query) Match(d Doc) bool {
	return q.where == nil || q.where.test(d) == isTrue
}

// Project returns the SELECT list applied to d. For SELECT * it is the
// whole document (Lookup(nil)), shared, not copied; nil if that is not a
// JSON object. A projected field that is undefined is left out, as Azure
// does. COUNT() items are not part of a projection.
func (q *Query) Project(d Doc) map[string]any {
	if q.star {
		v, _ := d.Lookup(nil)
		switch m := v.(type) {
		case map[string]any:
			return m
		case MapDoc:
			return m
		}
		return nil
	}
	out := make(map[string]any, len(q.items))
	for _, it := range q.items {
		if it.path == nil {
			continue
		}
		if v, ok := d.Lookup(it.path); ok {
			out[it.name()] = v
		}
	}
	return out
}

func (q *Query) render(b *strings.Builder) {
	b.WriteString("SELECT ")
	if q.top >= 0 {
		b.WriteString("TOP ")
		b.WriteString(strconv.Itoa(q.top))
		b.WriteByte(' ')
	}
	if q.star {
		b.WriteByte('*')
	}
	for i, it := range q.items {
		if i > 0 {
			b.WriteString(", ")
		}
		if it.path == nil {
			b.WriteString("COUNT()")
		} else {
			writePath(b, it.path)
		}
		if it.alias != "" {
			b.WriteString(" AS ")
			b.WriteString(it.alias)
		}
	}
	b.WriteString(" FROM ")
	b.WriteString(q.source)
	if q.where != nil {
		b.WriteString(" WHERE ")
		q.where.render(b)
	}
	for i, g := range q.groupBy {
		if i == 0 {
			b.WriteString(" GROUP BY ")
		} else {
			b.WriteString(", ")
		}
		writePath(b, g)
	}
}

// Condition is a parsed WHERE expression, as routes use them. It is
// immutable and safe for concurrent use.
type Condition struct {
	e     expr
	canon string
}

// ParseCondition parses a condition that makes up all of s.
func ParseCondition(s string) (*Condition, error) {
	p := newParser(s, 0, "end of condition")
	e, err := p.or("a condition")
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tEOF {
		return nil, p.expected("AND, OR or end of condition")
	}
	return newCondition(e), nil
}

// ParseConditionAt parses the longest condition that starts at byte
// offset start of s and returns the offset where it ends: the start of
// the first token that cannot continue it (or len(s)). Error positions
// are columns of s. A language embedding conditions checks what follows.
func ParseConditionAt(s string, start int) (*Condition, int, error) {
	p := newParser(s, start, "end of input")
	e, err := p.or("a condition")
	if err != nil {
		return nil, 0, err
	}
	return newCondition(e), p.tok.pos, nil
}

func newCondition(e expr) *Condition {
	var b strings.Builder
	e.render(&b)
	return &Condition{e: e, canon: b.String()}
}

// Match reports whether the condition is true for d (not false, not
// undefined).
func (c *Condition) Match(d Doc) bool { return c.e.test(d) == isTrue }

// String returns the canonical form of the condition; parsing it again
// yields the same String.
func (c *Condition) String() string { return c.canon }
