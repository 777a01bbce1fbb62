package query

import "strconv"

// Doc is a document a query runs over: a device or module twin at the
// hub, a message at the edge. Lookup resolves a field path such as
// ["tags", "location", "region"] or ["$body", "temp"]; ok is false when
// the field is undefined. Lookup(nil) returns the whole document, which
// is what SELECT * projects.
//
// Values are the types encoding/json decodes into: map[string]any, []any,
// float64, string, bool and nil. A LooseString may stand for a string
// whose type is unknown (message application properties).
type Doc interface {
	Lookup(path []string) (any, bool)
}

// LooseString is a string from a source that has no types, such as an
// application property of a message. Compared with a number it is read
// as a number when it parses as one, so `temperature > 30` works on the
// property "35"; in every other respect it is a string.
type LooseString string

// MapDoc is a Doc over a decoded JSON object. A path segment that is a
// decimal integer indexes into an array.
type MapDoc map[string]any

// Lookup implements Doc.
func (m MapDoc) Lookup(path []string) (any, bool) {
	return Walk(map[string]any(m), path)
}

// Walk follows path down a decoded JSON value: a segment names a member
// of an object, or, as a decimal integer, an element of an array. An
// empty path returns v itself.
func Walk(v any, path []string) (any, bool) {
	cur := v
	for _, seg := range path {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[seg]
			if !ok {
				return nil, false
			}
			cur = v
		case MapDoc:
			v, ok := c[seg]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}
