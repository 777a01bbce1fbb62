package query

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// tri is the three-valued result of a condition: Azure's query language
// (like Cosmos DB SQL, its ancestor) yields "undefined" rather than false
// when a field is missing or two values of different types are compared,
// and NOT undefined stays undefined. Only true selects a document.
type tri int8

const (
	undef tri = iota
	isFalse
	isTrue
)

func triOf(b bool) tri {
	if b {
		return isTrue
	}
	return isFalse
}

// Precedence levels, loosest first, used to render the canonical form
// with exactly the parentheses it needs.
const (
	precOr = iota + 1
	precAnd
	precNot
	precCmp
	precAtom
)

type expr interface {
	// eval returns the node's value; ok is false when it is undefined.
	eval(d Doc) (v any, ok bool)
	test(d Doc) tri
	prec() int
	render(b *strings.Builder)
}

// truth turns a value into a condition: only a boolean is true or false.
func truth(v any, ok bool) tri {
	if b, isBool := v.(bool); ok && isBool {
		return triOf(b)
	}
	return undef
}

func triValue(t tri) (any, bool) {
	if t == undef {
		return nil, false
	}
	return t == isTrue, true
}

func renderChild(b *strings.Builder, e expr, min int) {
	if e.prec() < min {
		b.WriteByte('(')
		e.render(b)
		b.WriteByte(')')
		return
	}
	e.render(b)
}

// pathExpr is a field reference; the Doc decides what the path means.
type pathExpr struct {
	segs []string
}

func (p *pathExpr) eval(d Doc) (any, bool) { return d.Lookup(p.segs) }
func (p *pathExpr) test(d Doc) tri         { return truth(p.eval(d)) }
func (p *pathExpr) prec() int              { return precAtom }
func (p *pathExpr) render(b *strings.Builder) {
	writePath(b, p.segs)
}

func writePath(b *strings.Builder, segs []string) {
	for i, s := range segs {
		switch {
		case isIdent(s) && (i > 0 || !reserved(s)):
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s)
		default:
			b.WriteByte('[')
			writeString(b, s)
			b.WriteByte(']')
		}
	}
}

// lastSeg is a projected field's output name, as Azure names it.
func lastSeg(segs []string) string { return segs[len(segs)-1] }

type litExpr struct {
	v any // nil, bool, float64, string or []any of those
}

func (l *litExpr) eval(Doc) (any, bool) { return l.v, true }
func (l *litExpr) test(Doc) tri         { return truth(l.v, true) }
func (l *litExpr) prec() int            { return precAtom }
func (l *litExpr) render(b *strings.Builder) {
	writeValue(b, l.v)
}

func writeValue(b *strings.Builder, v any) {
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(v))
	case float64:
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	case string:
		writeString(b, v)
	case []any:
		b.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				b.WriteString(", ")
			}
			writeValue(b, e)
		}
		b.WriteByte(']')
	}
}

// writeString renders s single-quoted; the lexer reads it back byte for
// byte, including invalid UTF-8.
func writeString(b *strings.Builder, s string) {
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			b.WriteString(`\u00`)
			b.WriteByte("0123456789abcdef"[c>>4])
			b.WriteByte("0123456789abcdef"[c&15])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
}

type cmpExpr struct {
	op   string // = != < > <= >=   (<> is read as !=)
	l, r expr
}

func (c *cmpExpr) eval(d Doc) (any, bool) { return triValue(c.test(d)) }
func (c *cmpExpr) prec() int              { return precCmp }
func (c *cmpExpr) render(b *strings.Builder) {
	renderChild(b, c.l, precAtom)
	b.WriteByte(' ')
	b.WriteString(c.op)
	b.WriteByte(' ')
	renderChild(b, c.r, precAtom)
}

func (c *cmpExpr) test(d Doc) tri {
	lv, lok := c.l.eval(d)
	if !lok {
		return undef
	}
	rv, rok := c.r.eval(d)
	if !rok {
		return undef
	}
	return compare(c.op, lv, rv)
}

// compare applies op to two defined values. Values of different types
// compare as undefined, except that = and != against null are decided
// (x = null is false and x != null true for any non-null x), so that
// "properties.reported.x != null" means what its author meant.
func compare(op string, a, b any) tri {
	a, b = coerce(norm(a), norm(b))
	if a == nil || b == nil {
		switch op {
		case "=":
			return triOf(a == nil && b == nil)
		case "!=":
			return triOf(a != nil || b != nil)
		}
		return undef
	}
	switch av := a.(type) {
	case float64:
		bv, ok := b.(float64)
		if !ok {
			return undef
		}
		return order(op, cmpFloat(av, bv))
	case string:
		bv, ok := b.(string)
		if !ok {
			return undef
		}
		return order(op, strings.Compare(av, bv))
	case bool:
		bv, ok := b.(bool)
		if !ok {
			return undef
		}
		switch op {
		case "=":
			return triOf(av == bv)
		case "!=":
			return triOf(av != bv)
		}
		return undef
	case []any, map[string]any:
		if kind(a) != kind(b) {
			return undef
		}
		switch op {
		case "=":
			return triOf(deepEqual(a, b))
		case "!=":
			return triOf(!deepEqual(a, b))
		}
		return undef
	}
	return undef
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	case a == b:
		return 0
	}
	return 2 // NaN: unordered, only != holds
}

func order(op string, c int) tri {
	switch op {
	case "=":
		return triOf(c == 0)
	case "!=":
		return triOf(c != 0)
	case "<":
		return triOf(c == -1)
	case "<=":
		return triOf(c == -1 || c == 0)
	case ">":
		return triOf(c == 1)
	case ">=":
		return triOf(c == 1 || c == 0)
	}
	return undef
}

// coerce resolves a LooseString against the other operand: against a
// number it is read as a number when it parses as one, otherwise it is a
// plain string.
func coerce(a, b any) (any, any) {
	if la, ok := a.(LooseString); ok {
		a = looseAgainst(la, b)
	}
	if lb, ok := b.(LooseString); ok {
		b = looseAgainst(lb, a)
	}
	return a, b
}

func looseAgainst(s LooseString, other any) any {
	if _, isNum := other.(float64); isNum {
		if f, err := strconv.ParseFloat(strings.TrimSpace(string(s)), 64); err == nil {
			return f
		}
	}
	return string(s)
}

// norm maps the Go types a hand-built document may hold onto the JSON
// types the evaluator compares.
func norm(v any) any {
	switch v := v.(type) {
	case nil, bool, float64, string, LooseString, map[string]any, []any:
		return v
	case int:
		return float64(v)
	case int8:
		return float64(v)
	case int16:
		return float64(v)
	case int32:
		return float64(v)
	case int64:
		return float64(v)
	case uint:
		return float64(v)
	case uint8:
		return float64(v)
	case uint16:
		return float64(v)
	case uint32:
		return float64(v)
	case uint64:
		return float64(v)
	case float32:
		return float64(v)
	case json.Number:
		if f, err := v.Float64(); err == nil {
			return f
		}
		return string(v)
	case []string:
		out := make([]any, len(v))
		for i, s := range v {
			out[i] = s
		}
		return out
	}
	return v
}

type valueKind int8

const (
	kUndefined valueKind = iota
	kNull
	kBool
	kNumber
	kString
	kArray
	kObject
	kOther
)

func kind(v any) valueKind {
	switch norm(v).(type) {
	case nil:
		return kNull
	case bool:
		return kBool
	case float64:
		return kNumber
	case string, LooseString:
		return kString
	case []any:
		return kArray
	case map[string]any:
		return kObject
	}
	return kOther
}

func deepEqual(a, b any) bool {
	a, b = norm(a), norm(b)
	if la, ok := a.(LooseString); ok {
		a = string(la)
	}
	if lb, ok := b.(LooseString); ok {
		b = string(lb)
	}
	switch av := a.(type) {
	case nil:
		return b == nil
	case bool:
		bv, ok := b.(bool)
		return ok && av == bv
	case float64:
		bv, ok := b.(float64)
		return ok && av == bv
	case string:
		bv, ok := b.(string)
		return ok && av == bv
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !deepEqual(av[i], bv[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for k, x := range av {
			y, ok := bv[k]
			if !ok || !deepEqual(x, y) {
				return false
			}
		}
		return true
	}
	return false
}

// inExpr is `x IN [..]`, or `x NIN [..]` when not is set. It is true when
// some element equals x, false when every comparable element differs,
// and undefined when x is undefined or no element is of x's type.
type inExpr struct {
	l    expr
	list []any
	not  bool
}

func (e *inExpr) eval(d Doc) (any, bool) { return triValue(e.test(d)) }
func (e *inExpr) prec() int              { return precCmp }
func (e *inExpr) render(b *strings.Builder) {
	renderChild(b, e.l, precAtom)
	if e.not {
		b.WriteString(" NIN ")
	} else {
		b.WriteString(" IN ")
	}
	writeValue(b, e.list)
}

func (e *inExpr) test(d Doc) tri {
	v, ok := e.l.eval(d)
	if !ok {
		return undef
	}
	res := undef
	for _, x := range e.list {
		switch compare("=", v, x) {
		case isTrue:
			res = isTrue
		case isFalse:
			if res == undef {
				res = isFalse
			}
		}
		if res == isTrue {
			break
		}
	}
	if e.not {
		return not(res)
	}
	return res
}

func not(t tri) tri {
	switch t {
	case isTrue:
		return isFalse
	case isFalse:
		return isTrue
	}
	return undef
}

type notExpr struct{ x expr }

func (n *notExpr) eval(d Doc) (any, bool) { return triValue(n.test(d)) }
func (n *notExpr) test(d Doc) tri         { return not(n.x.test(d)) }
func (n *notExpr) prec() int              { return precNot }
func (n *notExpr) render(b *strings.Builder) {
	b.WriteString("NOT ")
	renderChild(b, n.x, precNot)
}

type andExpr struct{ l, r expr }

func (a *andExpr) eval(d Doc) (any, bool) { return triValue(a.test(d)) }
func (a *andExpr) prec() int              { return precAnd }
func (a *andExpr) render(b *strings.Builder) {
	renderChild(b, a.l, precAnd)
	b.WriteString(" AND ")
	renderChild(b, a.r, precAnd+1)
}

func (a *andExpr) test(d Doc) tri {
	l := a.l.test(d)
	if l == isFalse {
		return isFalse
	}
	r := a.r.test(d)
	switch {
	case r == isFalse:
		return isFalse
	case l == isTrue && r == isTrue:
		return isTrue
	}
	return undef
}

type orExpr struct{ l, r expr }

func (o *orExpr) eval(d Doc) (any, bool) { return triValue(o.test(d)) }
func (o *orExpr) prec() int              { return precOr }
func (o *orExpr) render(b *strings.Builder) {
	renderChild(b, o.l, precOr)
	b.WriteString(" OR ")
	renderChild(b, o.r, precOr+1)
}

func (o *orExpr) test(d Doc) tri {
	l := o.l.test(d)
	if l == isTrue {
		return isTrue
	}
	r := o.r.test(d)
	switch {
	case r == isTrue:
		return isTrue
	case l == isFalse && r == isFalse:
		return isFalse
	}
	return undef
}

// funcExpr is a call of one of the built-in functions.
type funcExpr struct {
	fn   *function
	args []expr
}

func (f *funcExpr) eval(d Doc) (any, bool) { return f.fn.call(d, f.args) }
func (f *funcExpr) test(d Doc) tri         { return truth(f.eval(d)) }
func (f *funcExpr) prec() int              { return precAtom }
func (f *funcExpr) render(b *strings.Builder) {
	b.WriteString(f.fn.name)
	b.WriteByte('(')
	for i, a := range f.args {
		if i > 0 {
			b.WriteString(", ")
		}
		a.render(b)
	}
	b.WriteByte(')')
}

type function struct {
	name string
	args int
	call func(d Doc, args []expr) (any, bool)
}

// functions are Azure's type-checking and string functions. The IS_*
// family is never undefined: IS_DEFINED(missing) is false.
var functions = builtins()

func builtins() map[string]*function {
	functions := map[string]*function{}
	typeCheck := func(name string, want ...valueKind) {
		functions[name] = &function{name: name, args: 1, call: func(d Doc, a []expr) (any, bool) {
			v, ok := a[0].eval(d)
			if !ok {
				return false, true
			}
			k := kind(v)
			for _, w := range want {
				if k == w {
					return true, true
				}
			}
			return false, true
		}}
	}
	functions["IS_DEFINED"] = &function{name: "IS_DEFINED", args: 1, call: func(d Doc, a []expr) (any, bool) {
		_, ok := a[0].eval(d)
		return ok, true
	}}
	typeCheck("IS_NULL", kNull)
	typeCheck("IS_BOOL", kBool)
	typeCheck("IS_NUMBER", kNumber)
	typeCheck("IS_STRING", kString)
	typeCheck("IS_OBJECT", kObject)
	typeCheck("IS_ARRAY", kArray)
	typeCheck("IS_PRIMITIVE", kNull, kBool, kNumber, kString)

	strPred := func(name string, f func(s, p string) bool) {
		functions[name] = &function{name: name, args: 2, call: func(d Doc, a []expr) (any, bool) {
			s, ok1 := str(a[0].eval(d))
			p, ok2 := str(a[1].eval(d))
			if !ok1 || !ok2 {
				return nil, false
			}
			return f(s, p), true
		}}
	}
	strPred("STARTSWITH", strings.HasPrefix)
	strPred("ENDSWITH", strings.HasSuffix)
	strPred("CONTAINS", strings.Contains)

	strFunc := func(name string, f func(s string) any) {
		functions[name] = &function{name: name, args: 1, call: func(d Doc, a []expr) (any, bool) {
			s, ok := str(a[0].eval(d))
			if !ok {
				return nil, false
			}
			return f(s), true
		}}
	}
	strFunc("LOWER", func(s string) any { return strings.ToLower(s) })
	strFunc("UPPER", func(s string) any { return strings.ToUpper(s) })
	strFunc("LENGTH", func(s string) any { return float64(utf8.RuneCountInString(s)) })

	functions["ABS"] = &function{name: "ABS", args: 1, call: func(d Doc, a []expr) (any, bool) {
		v, ok := a[0].eval(d)
		f, isNum := norm(v).(float64)
		if !ok || !isNum {
			return nil, false
		}
		return math.Abs(f), true
	}}
	return functions
}

func str(v any, ok bool) (string, bool) {
	if !ok {
		return "", false
	}
	switch s := v.(type) {
	case string:
		return s, true
	case LooseString:
		return string(s), true
	}
	return "", false
}
