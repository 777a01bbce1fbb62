package query

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// reservedWords cannot start a field path; after a '.' any word is a
// field name (tags.from is fine). INTO is reserved for routes, which
// embed conditions before it.
var reservedWords = map[string]bool{
	"SELECT": true, "TOP": true, "FROM": true, "WHERE": true, "GROUP": true,
	"BY": true, "ORDER": true, "AS": true, "AND": true, "OR": true, "NOT": true,
	"IN": true, "NIN": true, "INTO": true, "TRUE": true, "FALSE": true, "NULL": true,
}

func reserved(w string) bool { return reservedWords[strings.ToUpper(w)] }

var cmpOps = map[string]string{
	"=": "=", "!=": "!=", "<>": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=",
}

// maxDepth bounds nesting (parentheses, NOT, arrays, calls) so a hostile
// query cannot make the recursive-descent parser or evaluator dig deep.
const maxDepth = 100

type parser struct {
	src     string
	lx      lexer
	tok     token
	eofName string
	depth   int
}

// nest is called on entering a nested construct; the caller defers the
// returned function.
func (p *parser) nest() (func(), error) {
	p.depth++
	if p.depth > maxDepth {
		return nil, p.errAt(p.tok.pos, "nested more than %d levels deep", maxDepth)
	}
	return func() { p.depth-- }, nil
}

func newParser(s string, start int, eofName string) *parser {
	p := &parser{src: s, lx: lexer{src: s, off: start}, eofName: eofName}
	p.advance()
	return p
}

func (p *parser) advance() { p.tok = p.lx.next() }

func (p *parser) errAt(off int, format string, args ...any) error {
	return ErrorAt(p.src, off, fmt.Sprintf(format, args...))
}

// expected reports that the current token is not what the grammar needs.
func (p *parser) expected(what string) error {
	return p.errAt(p.tok.pos, "expected %s, found %s", what, p.found())
}

func (p *parser) found() string {
	switch p.tok.kind {
	case tEOF:
		return p.eofName
	case tIllegal:
		return p.tok.text
	}
	t := p.tok.text
	if len(t) > 32 {
		t = t[:32] + "…"
	}
	if p.tok.kind == tString {
		return "string " + t
	}
	return "'" + t + "'"
}

func (p *parser) isWord(kw string) bool {
	return p.tok.kind == tWord && strings.EqualFold(p.tok.text, kw)
}

func (p *parser) isPunct(s string) bool {
	return p.tok.kind == tPunct && p.tok.text == s
}

func (p *parser) query() (*Query, error) {
	q := &Query{top: -1}
	if !p.isWord("SELECT") {
		return nil, p.expected("SELECT")
	}
	p.advance()
	if p.isWord("TOP") {
		p.advance()
		if p.tok.kind != tNumber || p.tok.num < 0 || p.tok.num > math.MaxInt32 || p.tok.num != math.Trunc(p.tok.num) {
			return nil, p.expected("a whole number after TOP")
		}
		q.top = int(p.tok.num)
		p.advance()
	}
	itemPos := map[string]int{}
	if p.isPunct("*") {
		q.star = true
		p.advance()
	} else {
		for {
			pos := p.tok.pos
			it, err := p.selectItem()
			if err != nil {
				return nil, err
			}
			if _, dup := itemPos[it.name()]; dup {
				return nil, p.errAt(pos, "duplicate output name '%s'", it.name())
			}
			itemPos[it.name()] = pos
			q.items = append(q.items, it)
			if !p.isPunct(",") {
				break
			}
			p.advance()
		}
	}
	if !p.isWord("FROM") {
		if q.star {
			return nil, p.expected("FROM")
		}
		return nil, p.expected("',' or FROM")
	}
	p.advance()
	if !p.isWord("devices") {
		return nil, p.expected("devices or devices.modules")
	}
	q.source = SourceDevices
	p.advance()
	if p.isPunct(".") {
		p.advance()
		if !p.isWord("modules") {
			return nil, p.expected("modules after 'devices.'")
		}
		q.source = SourceModules
		p.advance()
	}
	next := "WHERE, GROUP BY or end of query"
	if p.isWord("WHERE") {
		p.advance()
		e, err := p.or("a condition after WHERE")
		if err != nil {
			return nil, err
		}
		q.where = e
		next = "AND, OR, GROUP BY or end of query"
	}
	groupPos := -1
	if p.isWord("GROUP") {
		groupPos = p.tok.pos
		p.advance()
		if !p.isWord("BY") {
			return nil, p.expected("BY after GROUP")
		}
		p.advance()
		for {
			path, err := p.fieldOnly("a field name after GROUP BY")
			if err != nil {
				return nil, err
			}
			q.groupBy = append(q.groupBy, path)
			if !p.isPunct(",") {
				break
			}
			p.advance()
		}
		next = "',' or end of query"
	}
	if p.tok.kind != tEOF {
		return nil, p.expected(next)
	}
	return q, p.checkAggregate(q, itemPos, groupPos)
}

// checkAggregate enforces what a COUNT()/GROUP BY query may select: the
// count and the grouped fields, nothing else.
func (p *parser) checkAggregate(q *Query, itemPos map[string]int, groupPos int) error {
	for _, it := range q.items {
		if it.path == nil {
			q.agg = true
		}
	}
	if len(q.groupBy) > 0 {
		q.agg = true
	}
	if !q.agg {
		return nil
	}
	if q.star {
		return p.errAt(groupPos, "GROUP BY cannot be used with SELECT *")
	}
	for _, it := range q.items {
		if it.path == nil {
			continue
		}
		if !slices.ContainsFunc(q.groupBy, func(g []string) bool { return slices.Equal(g, it.path) }) {
			var b strings.Builder
			writePath(&b, it.path)
			return p.errAt(itemPos[it.name()], "field '%s' must be in GROUP BY to be selected with COUNT()", b.String())
		}
	}
	return nil
}

func (p *parser) selectItem() (selectItem, error) {
	var it selectItem
	if p.tok.kind != tWord || reserved(p.tok.text) {
		return it, p.expected("'*', COUNT() or a field name")
	}
	first := p.tok.text
	p.advance()
	if strings.EqualFold(first, "COUNT") && p.isPunct("(") {
		p.advance()
		if !p.isPunct(")") {
			return it, p.expected("')' after COUNT(")
		}
		p.advance()
	} else {
		path, err := p.pathRest(first)
		if err != nil {
			return it, err
		}
		it.path = path
	}
	if p.isWord("AS") {
		p.advance()
		if p.tok.kind != tWord {
			return it, p.expected("a name after AS")
		}
		it.alias = p.tok.text
		p.advance()
	}
	return it, nil
}

func (p *parser) fieldOnly(what string) ([]string, error) {
	if p.tok.kind != tWord || reserved(p.tok.text) {
		return nil, p.expected(what)
	}
	first := p.tok.text
	p.advance()
	return p.pathRest(first)
}

// pathRest reads the segments after a path's first word.
func (p *parser) pathRest(first string) ([]string, error) {
	segs := []string{first}
	for {
		switch {
		case p.isPunct("."):
			p.advance()
			if p.tok.kind != tWord {
				return nil, p.expected("a field name after '.'")
			}
			segs = append(segs, p.tok.text)
			p.advance()
		case p.isPunct("["):
			p.advance()
			switch {
			case p.tok.kind == tString:
				segs = append(segs, p.tok.str)
			case p.tok.kind == tNumber && p.tok.num >= 0 && p.tok.num == math.Trunc(p.tok.num) && p.tok.num <= math.MaxInt32:
				segs = append(segs, strconv.Itoa(int(p.tok.num)))
			default:
				return nil, p.expected("a quoted name or an index after '['")
			}
			p.advance()
			if !p.isPunct("]") {
				return nil, p.expected("']'")
			}
			p.advance()
		default:
			return segs, nil
		}
	}
}

// or parses a condition; what names it in errors ("a condition after
// WHERE").
func (p *parser) or(what string) (expr, error) {
	l, err := p.and(what)
	if err != nil {
		return nil, err
	}
	for p.isWord("OR") {
		p.advance()
		r, err := p.and("a condition after OR")
		if err != nil {
			return nil, err
		}
		l = &orExpr{l, r}
	}
	return l, nil
}

func (p *parser) and(what string) (expr, error) {
	l, err := p.unary(what)
	if err != nil {
		return nil, err
	}
	for p.isWord("AND") {
		p.advance()
		r, err := p.unary("a condition after AND")
		if err != nil {
			return nil, err
		}
		l = &andExpr{l, r}
	}
	return l, nil
}

func (p *parser) unary(what string) (expr, error) {
	if p.isWord("NOT") {
		done, err := p.nest()
		if err != nil {
			return nil, err
		}
		defer done()
		p.advance()
		x, err := p.unary("a condition after NOT")
		if err != nil {
			return nil, err
		}
		return &notExpr{x}, nil
	}
	return p.comparison(what)
}

func (p *parser) comparison(what string) (expr, error) {
	l, err := p.operand(what)
	if err != nil {
		return nil, err
	}
	if p.tok.kind == tPunct {
		if op, ok := cmpOps[p.tok.text]; ok {
			raw := p.tok.text
			p.advance()
			r, err := p.operand("a value after '" + raw + "'")
			if err != nil {
				return nil, err
			}
			return &cmpExpr{op: op, l: l, r: r}, nil
		}
	}
	if p.isWord("IN") || p.isWord("NIN") {
		kw := strings.ToUpper(p.tok.text)
		p.advance()
		if !p.isPunct("[") {
			return nil, p.expected("'[' after " + kw)
		}
		list, err := p.array()
		if err != nil {
			return nil, err
		}
		return &inExpr{l: l, list: list, not: kw == "NIN"}, nil
	}
	return l, nil
}

func (p *parser) operand(what string) (expr, error) {
	done, err := p.nest()
	if err != nil {
		return nil, err
	}
	defer done()
	t := p.tok
	switch t.kind {
	case tNumber:
		p.advance()
		return &litExpr{t.num}, nil
	case tString:
		p.advance()
		return &litExpr{t.str}, nil
	case tPunct:
		switch t.text {
		case "(":
			p.advance()
			e, err := p.or("a condition after '('")
			if err != nil {
				return nil, err
			}
			if !p.isPunct(")") {
				return nil, p.expected("')'")
			}
			p.advance()
			return e, nil
		case "[":
			list, err := p.array()
			if err != nil {
				return nil, err
			}
			return &litExpr{list}, nil
		}
	case tWord:
		switch strings.ToUpper(t.text) {
		case "TRUE":
			p.advance()
			return &litExpr{true}, nil
		case "FALSE":
			p.advance()
			return &litExpr{false}, nil
		case "NULL":
			p.advance()
			return &litExpr{nil}, nil
		}
		if reserved(t.text) {
			break
		}
		p.advance()
		if p.isPunct("(") {
			return p.call(t)
		}
		segs, err := p.pathRest(t.text)
		if err != nil {
			return nil, err
		}
		return &pathExpr{segs}, nil
	}
	return nil, p.expected(what)
}

// call parses a function call; name is the already consumed name token
// and the current token is '('.
func (p *parser) call(name token) (expr, error) {
	upper := strings.ToUpper(name.text)
	if upper == "COUNT" {
		return nil, p.errAt(name.pos, "COUNT() is only allowed in SELECT")
	}
	fn, ok := functions[upper]
	if !ok {
		return nil, p.errAt(name.pos, "unknown function '%s'", name.text)
	}
	p.advance()
	var args []expr
	if !p.isPunct(")") {
		for {
			a, err := p.or("an argument for " + upper)
			if err != nil {
				return nil, err
			}
			args = append(args, a)
			if !p.isPunct(",") {
				break
			}
			p.advance()
		}
		if !p.isPunct(")") {
			return nil, p.expected("',' or ')'")
		}
	}
	p.advance()
	if len(args) != fn.args {
		plural := "s"
		if fn.args == 1 {
			plural = ""
		}
		return nil, p.errAt(name.pos, "%s takes %d argument%s, found %d", upper, fn.args, plural, len(args))
	}
	return &funcExpr{fn: fn, args: args}, nil
}

// array parses a literal array; the current token is '['.
func (p *parser) array() ([]any, error) {
	done, err := p.nest()
	if err != nil {
		return nil, err
	}
	defer done()
	p.advance()
	list := []any{}
	if p.isPunct("]") {
		p.advance()
		return list, nil
	}
	for {
		v, err := p.literal()
		if err != nil {
			return nil, err
		}
		list = append(list, v)
		if p.isPunct("]") {
			p.advance()
			return list, nil
		}
		if !p.isPunct(",") {
			return nil, p.expected("',' or ']'")
		}
		p.advance()
	}
}

func (p *parser) literal() (any, error) {
	t := p.tok
	switch {
	case t.kind == tNumber:
		p.advance()
		return t.num, nil
	case t.kind == tString:
		p.advance()
		return t.str, nil
	case p.isWord("TRUE"):
		p.advance()
		return true, nil
	case p.isWord("FALSE"):
		p.advance()
		return false, nil
	case p.isWord("NULL"):
		p.advance()
		return nil, nil
	case p.isPunct("["):
		return p.array()
	}
	return nil, p.expected("a literal value in the array")
}
