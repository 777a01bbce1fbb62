package route

import (
	"strings"

	"outpost/internal/query"
)

// ParseRoute parses one route's text. Its Name is left empty, its
// Priority and TTL zero. Errors are *query.SyntaxError with a 1-based
// position in text.
func ParseRoute(text string) (Route, error) {
	p := &scanner{src: text}
	r := Route{Text: text}
	if p.keyword("SELECT") {
		p.skip()
		if !p.consume("*") {
			return Route{}, p.expected("'*' after SELECT")
		}
		if !p.keyword("FROM") {
			return Route{}, p.expected("FROM")
		}
	} else if !p.keyword("FROM") {
		return Route{}, p.expected("FROM")
	}

	p.skip()
	pos := p.off
	src := p.run()
	if src == "" {
		return Route{}, p.expected("a source after FROM")
	}
	s, ok := parseSource(src)
	if !ok {
		return Route{}, query.ErrorAt(text, pos, "unknown source '"+clip(src)+"': expected "+sourceForms)
	}
	r.Source = s

	next := "WHERE or INTO"
	if p.keyword("WHERE") {
		c, end, err := query.ParseConditionAt(text, p.off)
		if err != nil {
			return Route{}, err
		}
		r.Condition, p.off = c, end
		next = "AND, OR or INTO"
	}
	if !p.keyword("INTO") {
		return Route{}, p.expected(next)
	}

	sink, err := p.sink()
	if err != nil {
		return Route{}, err
	}
	r.Sink = sink
	p.skip()
	if p.off < len(text) {
		return Route{}, p.expected("end of route")
	}
	return r, nil
}

type scanner struct {
	src string
	off int
}

func (p *scanner) skip() {
	for p.off < len(p.src) && strings.IndexByte(" \t\r\n", p.src[p.off]) >= 0 {
		p.off++
	}
}

// run returns the next run of non-space characters.
func (p *scanner) run() string {
	start := p.off
	for p.off < len(p.src) && strings.IndexByte(" \t\r\n", p.src[p.off]) < 0 {
		p.off++
	}
	return p.src[start:p.off]
}

func isLetter(c byte) bool { return 'a' <= c|0x20 && c|0x20 <= 'z' }

// keyword consumes kw (any case) when it is the next whole word.
func (p *scanner) keyword(kw string) bool {
	p.skip()
	end := p.off + len(kw)
	if end > len(p.src) || !strings.EqualFold(p.src[p.off:end], kw) {
		return false
	}
	if end < len(p.src) && (isLetter(p.src[end]) || p.src[end] == '_' || p.src[end] == '$') {
		return false
	}
	p.off = end
	return true
}

func (p *scanner) consume(s string) bool {
	if strings.HasPrefix(p.src[p.off:], s) {
		p.off += len(s)
		return true
	}
	return false
}

func (p *scanner) expected(what string) error {
	p.skip()
	found := "end of route"
	if p.off < len(p.src) {
		save := p.off
		found = "'" + clip(p.run()) + "'"
		p.off = save
	}
	return query.ErrorAt(p.src, p.off, "expected "+what+", found "+found)
}

const sinkForms = `$upstream or BrokeredEndpoint("/modules/{m}/inputs/{i}")`

// sink reads $upstream or BrokeredEndpoint("…"). The quotes may be double
// or single, and are forgiven a leading backslash, in case a manifest's
// \" escapes survive into the text.
func (p *scanner) sink() (Sink, error) {
	p.skip()
	if p.keyword("$upstream") {
		return Sink{Kind: Upstream}, nil
	}
	if !p.keyword("BrokeredEndpoint") {
		return Sink{}, p.expected(sinkForms)
	}
	p.skip()
	if !p.consume("(") {
		return Sink{}, p.expected("'(' after BrokeredEndpoint")
	}
	p.skip()
	escaped := p.consume(`\`)
	if p.off >= len(p.src) || (p.src[p.off] != '"' && p.src[p.off] != '\'') {
		return Sink{}, p.expected("a quoted endpoint")
	}
	quote := p.src[p.off]
	open := p.off
	p.off++
	closeAt := strings.IndexByte(p.src[p.off:], quote)
	if closeAt < 0 {
		return Sink{}, query.ErrorAt(p.src, open, "unterminated endpoint string")
	}
	ep := p.src[p.off : p.off+closeAt]
	if escaped {
		ep = strings.TrimSuffix(ep, `\`)
	}
	s, ok := parseEndpoint(ep)
	if !ok {
		return Sink{}, query.ErrorAt(p.src, open+1, "unknown endpoint '"+clip(ep)+
			`': expected "/modules/{m}/inputs/{i}" or "/devices/{d}/messages/devicebound"`)
	}
	p.off += closeAt + 1
	p.skip()
	if !p.consume(")") {
		return Sink{}, p.expected("')'")
	}
	return s, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
