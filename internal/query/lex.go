package query

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

type tokKind int8

const (
	tEOF     tokKind = iota
	tIllegal         // text holds the reason; parsing stops here
	tWord            // identifier or keyword
	tString
	tNumber
	tPunct // ( ) [ ] , . * = != <> < > <= >=
)

type token struct {
	kind tokKind
	text string  // raw text; for tIllegal the reason
	str  string  // decoded value of a tString
	num  float64 // value of a tNumber
	pos  int     // byte offset of the first byte
	end  int     // byte offset just past the token
}

// lexer hands out tokens on demand rather than tokenising up front: a
// route embeds a condition in text the query grammar does not cover
// (`INTO BrokeredEndpoint("/modules/…")`), and ParseConditionAt must be
// able to stop in front of it without tripping over its characters.
type lexer struct {
	src string
	off int
}

func (l *lexer) next() token {
	s := l.src
	for l.off < len(s) && isSpace(s[l.off]) {
		l.off++
	}
	start := l.off
	if start >= len(s) {
		return token{kind: tEOF, pos: start, end: start}
	}
	c := s[start]
	switch {
	case c == '\'' || c == '"':
		return l.lexString(c)
	case isDigit(c) || (c == '-' && start+1 < len(s) && isDigit(s[start+1])):
		return l.lexNumber()
	case c == '!' || c == '<' || c == '>':
		n := 1
		if start+1 < len(s) && (s[start+1] == '=' || (c == '<' && s[start+1] == '>')) {
			n = 2
		}
		if c == '!' && n == 1 {
			l.off++
			return token{kind: tIllegal, text: "character '!'", pos: start, end: l.off}
		}
		l.off += n
		return token{kind: tPunct, text: s[start:l.off], pos: start, end: l.off}
	case strings.IndexByte("()[],.*=", c) >= 0:
		l.off++
		return token{kind: tPunct, text: s[start:l.off], pos: start, end: l.off}
	}
	r, size := utf8.DecodeRuneInString(s[start:])
	if !isIdentStart(r) {
		l.off += size
		return token{kind: tIllegal, text: "character " + strconv.QuoteRune(r), pos: start, end: l.off}
	}
	l.off += size
	for l.off < len(s) {
		r, size = utf8.DecodeRuneInString(s[l.off:])
		if !isIdentPart(r) {
			break
		}
		l.off += size
	}
	return token{kind: tWord, text: s[start:l.off], pos: start, end: l.off}
}

func (l *lexer) lexString(q byte) token {
	s := l.src
	start := l.off
	i := start + 1
	var b strings.Builder
	for i < len(s) {
		c := s[i]
		switch {
		case c == q:
			l.off = i + 1
			return token{kind: tString, text: s[start:l.off], str: b.String(), pos: start, end: l.off}
		case c == '\\':
			if i+1 >= len(s) {
				i++
				continue
			}
			e := s[i+1]
			i += 2
			switch e {
			case '\\', '\'', '"', '/':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'u':
				if i+4 > len(s) {
					l.off = len(s)
					return token{kind: tIllegal, text: `incomplete \u escape in string`, pos: start, end: l.off}
				}
				v, err := strconv.ParseUint(s[i:i+4], 16, 16)
				if err != nil {
					l.off = i
					return token{kind: tIllegal, text: `invalid \u escape in string`, pos: start, end: l.off}
				}
				b.WriteRune(rune(v)) // a lone surrogate becomes U+FFFD
				i += 4
			default:
				l.off = i
				return token{kind: tIllegal, text: "invalid escape '\\" + string(e) + "' in string", pos: start, end: l.off}
			}
		default:
			b.WriteByte(c)
			i++
		}
	}
	l.off = len(s)
	return token{kind: tIllegal, text: "unterminated string", pos: start, end: l.off}
}

func (l *lexer) lexNumber() token {
	s := l.src
	start := l.off
	i := start
	if s[i] == '-' {
		i++
	}
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	if i+1 < len(s) && s[i] == '.' && isDigit(s[i+1]) {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < len(s) && isDigit(s[j]) {
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			i = j
		}
	}
	l.off = i
	f, err := strconv.ParseFloat(s[start:i], 64)
	if err != nil {
		return token{kind: tIllegal, text: "number " + s[start:i] + " out of range", pos: start, end: i}
	}
	return token{kind: tNumber, text: s[start:i], num: f, pos: start, end: i}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isIdentStart(r rune) bool {
	return r == '_' || r == '$' || unicode.IsLetter(r)
}

func isIdentPart(r rune) bool {
	return isIdentStart(r) || unicode.IsDigit(r)
}

// isIdent reports whether s lexes as one word, so a path segment can be
// written bare rather than as ['…'].
func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if r == utf8.RuneError || !(isIdentPart(r) && (i > 0 || isIdentStart(r))) {
			return false
		}
	}
	return true
}
