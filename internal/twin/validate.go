package twin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"unicode/utf8"

	"outpost/internal/status"
)

// Limits, as Azure IoT Hub sets them.
const (
	// MaxSectionSize bounds desired and reported properties each, and a
	// single patch.
	MaxSectionSize = 32 * 1024
	// MaxTagsSize bounds the tags.
	MaxTagsSize = 8 * 1024
	// MaxDepth bounds nesting the way Azure's documentation counts it: a
	// section's root is depth 0 and each object or array value one level
	// deeper, so {"one":{"two":…{"ten":{"p":"v"}}}} (ten nested objects
	// below the root) is accepted and an eleventh level is refused.
	MaxDepth = 10
	// MaxKeyLength bounds each key, in bytes of UTF-8.
	MaxKeyLength = 1024
)

// errorf is a refused twin document or patch: always a 400, with a
// message naming the offending key path and the limit.
func errorf(code, format string, args ...any) *status.Error {
	return status.BadRequest(code, format, args...)
}

// Server-owned keys of a section.
const (
	keyVersion            = "$version"
	keyMetadata           = "$metadata"
	keyLastUpdated        = "$lastUpdated"
	keyLastUpdatedVersion = "$lastUpdatedVersion"
)

// ValidatePatch checks a patch from a client (tags, desired or reported)
// against the key, value, depth and size rules. null values are allowed:
// they delete. The server-owned $version and $metadata are refused like
// any other key starting with '$'.
func ValidatePatch(patch map[string]any) error {
	if patch == nil {
		return errorf(status.CodeArgumentInvalid, "patch is not a JSON object")
	}
	if err := validateObject(patch, "", 0); err != nil {
		return err
	}
	return checkSize("patch", patch, MaxSectionSize)
}

// ValidateDocument checks a whole desired or reported section. Its
// top-level $version and $metadata, which the server adds, are skipped and
// not counted towards the size.
func ValidateDocument(section map[string]any) error {
	if section == nil {
		return errorf(status.CodeArgumentInvalid, "document is not a JSON object")
	}
	c := content(section)
	if err := validateObject(c, "", 0); err != nil {
		return err
	}
	return checkSize("document", c, MaxSectionSize)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// keyRule is IoT Hub's rule on property and tag names, quoted in every
// refusal of a character.
const keyRule = "property and tag names must not contain control characters, '.', '$', '#' or ' '"

func validateKey(path, k string) error {
	where := join(path, k)
	switch {
	case k == "":
		return errorf(status.CodeArgumentInvalid, "empty key at %q: keys must not be empty", path)
	case len(k) > MaxKeyLength:
		return errorf(status.CodeArgumentInvalid, "key at %q is %d bytes: the limit is %d", path, len(k), MaxKeyLength)
	case !utf8.ValidString(k):
		return errorf(status.CodeArgumentInvalid, "key %q is not valid UTF-8", where)
	case k[0] == '$':
		// The common mistake is sending back a server key ($version,
		// $metadata) from a twin read earlier: say so.
		return errorf(status.CodeArgumentInvalid, "key %q starts with '$': such keys are reserved for the server; %s", where, keyRule)
	}
	for _, r := range k {
		switch {
		case r == '.' || r == '$' || r == '#':
			return errorf(status.CodeArgumentInvalid, "key %q contains '%c': %s", where, r, keyRule)
		case r == ' ':
			return errorf(status.CodeArgumentInvalid, "key %q contains a space: %s", where, keyRule)
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return errorf(status.CodeArgumentInvalid, "key %q contains control character %U: %s", where, r, keyRule)
		}
	}
	return nil
}

// validateObject checks the object at path, which sits at depth (the
// section root is 0).
func validateObject(m map[string]any, path string, depth int) error {
	for k, v := range m {
		if err := validateKey(path, k); err != nil {
			return err
		}
		if err := validateValue(v, join(path, k), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// validateValue checks v, a value at path whose depth would be depth if
// it is an object or array.
func validateValue(v any, path string, depth int) error {
	switch x := v.(type) {
	case nil, bool, string:
		return nil
	case map[string]any:
		if depth > MaxDepth {
			return errorf(status.CodeArgumentInvalid, "%q nests objects %d deep: the limit is %d", path, depth, MaxDepth)
		}
		return validateObject(x, path, depth)
	case []any:
		if depth > MaxDepth {
			return errorf(status.CodeArgumentInvalid, "%q nests objects %d deep: the limit is %d", path, depth, MaxDepth)
		}
		for i, e := range x {
			if err := validateValue(e, fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
				return err
			}
		}
		return nil
	case json.Number:
		if !validNumber(string(x)) || !fitsFloat64(string(x)) {
			return errorf(status.CodeArgumentInvalid, "%q: %q is not a JSON number", path, string(x))
		}
		return nil
	case float64:
		return finite(path, x)
	case float32:
		return finite(path, float64(x))
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return nil
	}
	return errorf(status.CodeArgumentInvalid, "%q holds a %s: values must be JSON strings, numbers, booleans, objects, arrays or null",
		path, reflect.TypeOf(v))
}

func finite(path string, f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return errorf(status.CodeArgumentInvalid, "%q: %v is not a JSON number", path, f)
	}
	return nil
}

// fitsFloat64 reports whether s is within float64's range, so every
// JSON decoder (and the query evaluator) can read it back.
func fitsFloat64(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

// validNumber reports whether s is a number in JSON's grammar.
func validNumber(s string) bool {
	i := 0
	digits := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(s) && s[i] == '-' {
		i++
	}
	if i < len(s) && s[i] == '0' {
		i++
	} else if digits() == 0 {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

// encode renders v as compact JSON without HTML escaping, the form whose
// length the size limits count.
func encode(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// Size is the number of bytes of m as compact JSON, which is how the
// limits are measured (Azure counts characters; for ASCII they agree).
func Size(m map[string]any) int {
	b, err := encode(m)
	if err != nil {
		return 0
	}
	return len(b)
}

func checkSize(what string, m map[string]any, limit int) error {
	b, err := encode(m)
	if err != nil {
		return errorf(status.CodeArgumentInvalid, "%s cannot be encoded as JSON: %v", what, err)
	}
	if len(b) > limit {
		return errorf(status.CodeTwinSizeExceeded, "%s is %d bytes: the limit is %d bytes (%d KiB)", what, len(b), limit, limit/1024)
	}
	return nil
}

// CheckText refuses JSON text that encoding/json would alter without a
// word: it decodes bytes that are not UTF-8, and \u escapes of lone
// UTF-16 surrogates, as U+FFFD, so the twin would keep something other
// than what was sent. what names the text in the error ("patch").
func CheckText(what string, body []byte) error {
	for i := 0; i < len(body); {
		c := body[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRune(body[i:])
			if r == utf8.RuneError && n == 1 {
				return errorf(status.CodeArgumentInvalid, "%s is not valid UTF-8 at byte %d: JSON text must be UTF-8", what, i)
			}
			i += n
			continue
		}
		if c != '\\' {
			i++
			continue
		}
		// A backslash is only valid JSON inside a string, where it starts
		// an escape; anything malformed is left to the decoder.
		r, ok := hexEscape(body, i)
		if !ok {
			i++
			if i < len(body) && body[i] < utf8.RuneSelf {
				i++ // the escaped byte, which may be another backslash
			}
			continue
		}
		switch {
		case 0xd800 <= r && r < 0xdc00:
			if lo, ok := hexEscape(body, i+6); ok && 0xdc00 <= lo && lo < 0xe000 {
				i += 12
				continue
			}
			fallthrough
		case 0xdc00 <= r && r < 0xe000:
			return errorf(status.CodeArgumentInvalid, "%s has the escape %s at byte %d, a lone UTF-16 surrogate: it is not a character", what, body[i:i+6], i)
		}
		i += 6
	}
	return nil
}

// hexEscape reads the \uXXXX escape at body[i:], if there is one.
func hexEscape(body []byte, i int) (rune, bool) {
	if i+6 > len(body) || body[i] != '\\' || body[i+1] != 'u' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(body[i+2:i+6]), 16, 16)
	if err != nil {
		return 0, false
	}
	return rune(n), true
}

// ParsePatch decodes a JSON object, keeping numbers exact
// (json.Number), and validates it as a patch.
func ParsePatch(body []byte) (map[string]any, error) {
	m, err := decodePatch(body)
	if err != nil {
		return nil, err
	}
	if err := ValidatePatch(m); err != nil {
		return nil, err
	}
	return m, nil
}

// MaxVersion bounds a $version a client may carry (ParseVersionedPatch):
// the largest integer a JavaScript SDK reads exactly.
const MaxVersion = 1<<53 - 1

// ParseVersionedPatch is ParsePatch for a reported patch an edge held
// while offline: its top-level "$version", if present, is the reported
// version the edge answered its client for the last change in it, a
// positive integer up to MaxVersion. It is returned apart (0 when
// absent) and the rest validated as a patch. Only an edge, for an
// identity in its scope, may send one (PatchReportedAtLeast).
func ParseVersionedPatch(body []byte) (map[string]any, int64, error) {
	m, err := decodePatch(body)
	if err != nil {
		return nil, 0, err
	}
	var v int64
	if raw, ok := m[keyVersion]; ok {
		n, isInt := toInt64(raw)
		if !isInt || n < 1 || n > MaxVersion {
			return nil, 0, errorf(status.CodeArgumentInvalid, "patch $version %v is not an integer in [1, %d]", raw, int64(MaxVersion))
		}
		v = n
		delete(m, keyVersion)
	}
	if err := ValidatePatch(m); err != nil {
		return nil, 0, err
	}
	return m, v, nil
}

// decodePatch decodes body as one JSON object, numbers kept exact.
func decodePatch(body []byte) (map[string]any, error) {
	if err := CheckText("patch", body); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errorf(status.CodeArgumentInvalid, "patch is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errorf(status.CodeArgumentInvalid, "patch has data after its JSON object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errorf(status.CodeArgumentInvalid, "patch is not a JSON object")
	}
	return m, nil
}

// content returns a deep copy of section without the top-level $version
// and $metadata: the properties themselves.
func content(section map[string]any) map[string]any {
	out := make(map[string]any, len(section))
	for k, v := range section {
		if k == keyVersion || k == keyMetadata {
			continue
		}
		out[k] = deepCopy(v)
	}
	return out
}
